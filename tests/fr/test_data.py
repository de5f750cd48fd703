"""Training reader: every export format gives the same (image, label) multiset; augmentation; refusals."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from synthface.errors import FileFormatError
from synthface.export import Sample, recordio, write_format
from synthface.fr.data import (
    EpochView,
    augment_image,
    color_jitter,
    crop_on_black,
    epoch_order,
    low_resolution,
    open_source,
    open_training_set,
    random_erasing,
    resolve_export,
    to_input,
)


def jpeg(rgb: np.ndarray, comment: bytes = b"") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    if comment:  # a COM segment right after SOI: decoders skip it
        data = data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]
    return data


def magic_jpeg(rgb: np.ndarray) -> bytes:
    """A JPEG whose RecordIO payload (24-byte header + image) holds the magic at a 4-aligned offset."""
    # payload offset of the comment = 24 + 2 (SOI) + 4 (COM marker, length) = 30; pad 2 bytes to reach 32
    data = jpeg(rgb, comment=b"ab" + recordio.MAGIC_BYTES + b"cd" + recordio.MAGIC_BYTES)
    payload = recordio.pack(recordio.IRHeader(0, 0.0, 0, 0), data)
    assert payload.find(recordio.MAGIC_BYTES) % 4 == 0 and len(recordio.frame(payload)) > len(payload) + 8
    return data


def toy_samples(classes=4, per_class=3, size=24) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for c in range(classes):
        for k in range(per_class):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            out.append(Sample(c, f"{c:03d}_{k}", magic_jpeg(img) if (c, k) == (2, 1) else jpeg(img)))
    return out


def multiset(source) -> Counter:
    return Counter((hashlib.sha1(data).hexdigest(), label) for data, label in (source.read(i) for i in range(len(source))))


def test_every_export_format_yields_the_same_image_label_multiset(tmp_path):
    samples = toy_samples()
    expected = Counter((hashlib.sha1(s.jpeg).hexdigest(), s.label) for s in samples)
    write_format("recordio", samples, tmp_path / "run" / "export" / "recordio")
    write_format("recordio", samples, tmp_path / "header", layout="header")
    for fmt in ("imagefolder", "webdataset", "parquet"):
        opts = {"samples_per_shard": 5} if fmt == "webdataset" else {"row_group_size": 4} if fmt == "parquet" else {}
        write_format(fmt, samples, tmp_path / fmt, **opts)
    folders = {"recordio": tmp_path / "run", "header": tmp_path / "header", "imagefolder": tmp_path / "imagefolder",
               "webdataset": tmp_path / "webdataset", "parquet": tmp_path / "parquet"}
    for name, folder in folders.items():
        source = open_source(folder)
        assert source.fmt == ("recordio" if name == "header" else name)
        assert source.num_classes == 4 and len(source) == 12
        assert multiset(source) == expected, name
    assert resolve_export(tmp_path / "run") == ("recordio", tmp_path / "run" / "export" / "recordio")


def test_reading_in_shuffled_order_and_after_pickling(tmp_path):
    samples = toy_samples()
    write_format("parquet", samples, tmp_path / "pq", row_group_size=2)
    source = open_source(tmp_path / "pq")
    first = [source.read(i) for i in range(len(source))]
    clone = pickle.loads(pickle.dumps(source))  # what a spawned DataLoader worker gets: no open handles
    for i in np.random.default_rng(1).permutation(len(source)):
        assert clone.read(int(i)) == first[i]


def test_items_are_deterministic_in_seed_epoch_and_index(tmp_path):
    write_format("imagefolder", toy_samples(), tmp_path / "if")
    data = open_training_set(tmp_path / "if", augment="hsface", input_size=32, seed=7)
    x, label = data.item(5, epoch=0)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and -1.0 <= x.min() and x.max() <= 1.0
    assert np.array_equal(data.item(5, epoch=0)[0], x) and label == 1
    assert any(not np.array_equal(data.item(5, epoch=e)[0], x) for e in range(1, 4))
    tensor, lbl = EpochView(data, 0)[5]
    assert np.array_equal(tensor.numpy(), x) and lbl == label


def test_flip_mode_only_flips_and_none_only_normalises():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    plain = to_input(img)
    np.testing.assert_allclose(plain, (img.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5, atol=1e-6)
    assert np.array_equal(augment_image(img, "none", np.random.default_rng(0)), plain)
    seen = set()
    for s in range(20):
        out = augment_image(img, "flip", np.random.default_rng(s))
        flipped = np.array_equal(out, plain[:, :, ::-1])
        assert flipped or np.array_equal(out, plain)
        seen.add(flipped)
    assert seen == {True, False}


def test_hsface_operations():
    rng = np.random.default_rng(3)
    img = np.full((32, 32, 3), 200, np.uint8)
    cropped = crop_on_black(img, rng)
    kept = np.argwhere(cropped[..., 0] == 200)
    (t, left), (b, r) = kept.min(0), kept.max(0)
    assert len(kept) == (b - t + 1) * (r - left + 1) and (cropped == 0).sum() == 3 * (32 * 32 - len(kept))
    assert 0.2 * 32 * 32 * 0.9 <= len(kept) <= 32 * 32  # area share drawn from (0.2, 1)
    assert low_resolution(img, rng).shape == img.shape
    assert np.array_equal(color_jitter(img, rng, strength=0.0), img)
    x = np.ones((3, 32, 32), np.float32)
    erased = random_erasing(x.copy(), rng)
    zero = np.argwhere(erased[0] == 0)
    assert 0.02 * 1024 * 0.8 <= len(zero) <= 0.33 * 1024 * 1.2 and (erased[:, erased[0] == 0] == 0).all()


def test_adaface_mode_is_its_augmenter_order_at_p_02_without_erasing():
    """AdaFace's Augmenter: crop on black, low resolution, photometric (each p 0.2, in that order), then the
    flip (p 0.5); no RandomErasing. Recomputed here from the primitives with the same draws."""
    img = np.random.default_rng(0).integers(1, 255, (24, 24, 3), dtype=np.uint8)
    fired = np.zeros(3)
    for s in range(300):
        rng, want = np.random.default_rng(s), img
        for k, op in enumerate((crop_on_black, low_resolution, color_jitter)):
            if rng.random() < 0.2:
                want, fired[k] = op(want, rng), fired[k] + 1
        if rng.random() < 0.5:
            want = want[:, ::-1]
        got = augment_image(img, "adaface", np.random.default_rng(s))
        assert np.array_equal(got, to_input(np.ascontiguousarray(want)))
        assert not (got == 0.0).all(axis=0).any()  # no pixel is 127.5 after normalising: zeros only from erasing
    assert np.all(np.abs(fired / 300 - 0.2) < 0.07)
    # the hsface mode does erase (exact zeros in all channels) in some of the same draws
    assert any((augment_image(img, "hsface", np.random.default_rng(s)) == 0.0).all(axis=0).any() for s in range(40))


def test_epoch_order_splits_whole_global_batches_between_ranks():
    full = epoch_order(103, seed=1, epoch=2, batch_size=4, world=2, rank=0)
    other = epoch_order(103, seed=1, epoch=2, batch_size=4, world=2, rank=1)
    assert len(full) == len(other) == 48 and not set(full) & set(other)
    single = epoch_order(103, seed=1, epoch=2, batch_size=8)
    assert np.array_equal(np.stack([full.reshape(-1, 4), other.reshape(-1, 4)], 1).reshape(-1), single[:96])
    assert not np.array_equal(single, epoch_order(103, seed=1, epoch=3, batch_size=8))


def test_no_export_and_empty_class_are_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(FileFormatError, match="not an export synthface can train on"):
        open_source(tmp_path / "notes")
    write_format("imagefolder", toy_samples(), tmp_path / "if")
    (tmp_path / "if" / "4").mkdir()
    with pytest.raises(FileFormatError, match="holds no images"):
        open_source(tmp_path / "if")
    with pytest.raises(FileFormatError, match="not a folder"):
        open_source(tmp_path / "missing")
    samples = [s for s in toy_samples() if s.label != 1]
    write_format("webdataset", samples, tmp_path / "wds", num_classes=4)
    with pytest.raises(FileFormatError, match="no images for 1 of its 4 classes"):
        open_source(tmp_path / "wds")


# ----------------------------------------------------------------------------------------------- damaged data


def huge_jpeg(side: int = 30000) -> bytes:
    """A small JPEG whose header claims side x side pixels (decoding it would take side^2 x 3 bytes)."""
    data = bytearray(jpeg(np.zeros((16, 16, 3), np.uint8)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def bounded_peak(fn, limit=20 << 20):
    """Run fn (expected to raise) and return its exception, checking Python-side memory stayed under `limit`."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(FileFormatError) as info:
            fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, peak
    return info.value


def record_offset(folder, key: int) -> int:
    lines = (folder / "train.idx").read_text().splitlines()
    return int(dict(line.split("\t") for line in lines)[str(key)])


def test_a_recordio_property_claiming_2e9_classes_is_refused_before_allocating(tmp_path):
    folder = write_format("recordio", toy_samples(), tmp_path / "rec").out_dir
    (folder / "property").write_text("2000000000,24,24")
    error = bounded_peak(lambda: open_source(folder))
    assert "claims 2,000,000,000 classes" in str(error) and "property" in str(error) and "12 images" in str(error)
    (folder / "property").write_text("4,24")
    assert "three positive numbers" in str(bounded_peak(lambda: open_source(folder)))


def test_a_30000_pixel_image_in_a_rec_is_refused_before_decoding(tmp_path, monkeypatch):
    import cv2

    samples = toy_samples()
    samples[5] = Sample(samples[5].label, samples[5].key, huge_jpeg())
    folder = write_format("recordio", samples, tmp_path / "rec", shuffle=False).out_dir
    data = open_training_set(folder, input_size=24)

    def no_decoding(*args):
        raise AssertionError("decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    error = bounded_peak(lambda: data.item(5, 0))
    assert "Record 5 (byte" in str(error) and "train.rec" in str(error) and "900,000,000 pixels" in str(error)
    (tmp_path / "if").mkdir()
    write_format("imagefolder", samples, tmp_path / "if" / "x")
    error = bounded_peak(lambda: open_training_set(tmp_path / "if" / "x", input_size=24).item(5, 0))
    assert "900,000,000 pixels" in str(error) and ".jpg" in str(error)
    samples[5] = Sample(samples[5].label, samples[5].key, huge_jpeg(5000))  # over our limit, under PIL's
    write_format("recordio", samples, tmp_path / "rec5000", shuffle=False)
    error = bounded_peak(lambda: open_training_set(tmp_path / "rec5000", input_size=24).item(5, 0))
    assert "Record 5" in str(error) and "5000x5000" in str(error) and "16,777,216" in str(error)


def test_damaged_recordio_headers_and_labels_name_the_record(tmp_path):
    folder = write_format("recordio", toy_samples(), tmp_path / "hdr", layout="header").out_dir
    with open(folder / "train.rec", "r+b") as handle:  # record 0's label[0]: the end of the image keys
        handle.seek(8 + 24)
        handle.write(struct.pack("<f", 1e9))
    error = bounded_peak(lambda: open_source(folder))
    assert "header record (key 0)" in str(error) and "1e+09" in str(error)

    folder = write_format("recordio", toy_samples(), tmp_path / "flat", shuffle=False).out_dir
    with open(folder / "train.rec", "r+b") as handle:
        handle.seek(record_offset(folder, 7) + 8 + 4)
        handle.write(struct.pack("<f", 99.0))
    error = bounded_peak(lambda: open_source(folder))
    assert "Record 7" in str(error) and "label 99" in str(error) and "0..3" in str(error)
    with open(folder / "train.rec", "r+b") as handle:  # record 3 announces 400 MB in a file of a few KB
        handle.seek(record_offset(folder, 3) + 4)
        handle.write(struct.pack("<I", 400_000_000))
    error = bounded_peak(lambda: open_source(folder))
    assert "400,000,000 bytes" in str(error) and "past the end of the file" in str(error)
    (folder / "train.idx").write_bytes(b"\xff\xfe\x00garbage")
    assert "not text" in str(bounded_peak(lambda: open_source(folder)))


def webdataset_with_labels(folder, labels: list[bytes]):
    import tarfile

    folder.mkdir()
    image = jpeg(np.zeros((8, 8, 3), np.uint8))
    with tarfile.open(folder / "shard-000000.tar", "w") as tar:
        for n, label in enumerate(labels):
            for ext, payload in (("jpg", image), ("cls", label)):
                info = tarfile.TarInfo(f"{n:04d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return folder


def test_negative_and_huge_labels_are_refused_before_counting(tmp_path):
    folder = webdataset_with_labels(tmp_path / "neg", [b"0", b"1", b"-1"])
    error = bounded_peak(lambda: open_source(folder))
    assert "0002.jpg" in str(error) and "negative" in str(error)
    folder = webdataset_with_labels(tmp_path / "huge", [b"0", b"1", b"2000000000"])
    error = bounded_peak(lambda: open_source(folder))
    assert "3 images" in str(error) and "2,000,000,000" in str(error) and "0002.jpg" in str(error)
