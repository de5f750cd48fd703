"""RecordIO export: framing (including the magic-number split), byte-exact round trips, both
layouts, and a reader written here the way insightface arcface_torch's MXFaceDataset reads."""

from __future__ import annotations

import io
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthface.errors import FileFormatError, InvalidInputError, OutputPathError
from synthface.export import Sample, recordio
from synthface.export.recordio import MAGIC, MAGIC_BYTES, RecordIOReader, RecordIOWriter, frame, pack
from tests.helpers.export_samples import jpegs, make_samples

# --------------------------------------------------------------------------- an independent reader


def arcface_torch_read(folder: Path) -> list[tuple[int, np.ndarray, bytes]]:
    """Mirror of arcface_torch's MXFaceDataset, with struct and PIL only: read the .idx keys, look at
    record 0's header (flag > 0: images are keys 1..label[0]-1, else every key), unpack each image's
    header, label = header.label (first entry when it is an array), decode the JPEG."""

    offsets = {}
    keys = []
    for line in (folder / "train.idx").read_text().splitlines():
        key, offset = line.strip().split("\t")
        keys.append(int(key))
        offsets[int(key)] = int(offset)
    data = (folder / "train.rec").read_bytes()

    def read_record(offset: int) -> bytes:
        parts = []
        while True:
            magic, lrec = struct.unpack_from("<II", data, offset)
            assert magic == 0xCED7230A
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            parts.append(data[offset + 8 : offset + 8 + length])
            offset += 8 + length + (-length % 4)
            if cflag in (0, 3):
                return struct.pack("<I", 0xCED7230A).join(parts)

    def unpack(payload: bytes):
        flag, label, _id, _id2 = struct.unpack("IfQQ", payload[:24])
        body = payload[24:]
        if flag > 0:
            label = np.frombuffer(body, np.float32, flag)
            body = body[4 * flag :]
        return flag, label, body

    flag, label, _ = unpack(read_record(offsets[0]))
    image_keys = range(1, int(label[0])) if flag > 0 else keys
    out = []
    for key in image_keys:
        _, label, body = unpack(read_record(offsets[key]))
        if not np.isscalar(label):
            label = label[0]
        out.append((int(label), np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), body))
    return out


def read_property(folder: Path) -> list[int]:
    return [int(x) for x in (folder / "property").read_text().strip().split(",")]


def assert_matches_input(got: list[tuple[int, np.ndarray, bytes]], samples: list[Sample]) -> None:
    label_of = {s.jpeg: s.label for s in samples}
    assert len(got) == len(samples)
    assert sorted(label_of[body] for _, _, body in got) == sorted(s.label for s in samples)
    for label, pixels, body in got:
        assert label == label_of[body]
        assert pixels.shape == (112, 112, 3)


# --------------------------------------------------------------------------- framing


def split_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(cflag, part) for every frame in `data`, parsed by hand."""
    frames, pos = [], 0
    while pos < len(data):
        magic, lrec = struct.unpack_from("<II", data, pos)
        assert magic == MAGIC
        length = lrec & ((1 << 29) - 1)
        frames.append((lrec >> 29, data[pos + 8 : pos + 8 + length]))
        assert data[pos + 8 + length : pos + 8 + length + (-length % 4)] == b"\0" * (-length % 4)
        pos += 8 + length + (-length % 4)
    return frames


@pytest.mark.parametrize("size", range(9))
def test_plain_payloads_are_one_frame_padded_to_four_bytes(size):
    payload = bytes(range(1, size + 1))
    data = frame(payload)
    assert len(data) % 4 == 0 and len(data) == 8 + size + (-size % 4)
    assert split_frames(data) == [(0, payload)]


def test_payload_with_aligned_magic_is_split_and_rejoined(tmp_path):
    # magic at aligned offsets 0 and 8 and at the very end; an unaligned one at 17 stays inside a part
    payload = MAGIC_BYTES + b"abcd" + MAGIC_BYTES + b"efghi" + MAGIC_BYTES + b"xyz" + MAGIC_BYTES
    assert [i for i in range(0, len(payload), 4) if payload[i : i + 4] == MAGIC_BYTES] == [0, 8, 24]
    frames = split_frames(frame(payload))
    assert frames == [(1, b""), (2, b"abcd"), (2, b"efghi" + MAGIC_BYTES + b"xyz"), (3, b"")]
    with open(tmp_path / "train.rec", "wb") as handle:
        writer = RecordIOWriter(handle)
        writer.write(0, payload)
        writer.write(1, b"after")
    (tmp_path / "train.idx").write_text(writer.index_text())
    with RecordIOReader(tmp_path) as reader:
        assert reader.read_payload_at(reader.offsets[0]) == payload
        assert reader.read_payload_at(reader.offsets[1]) == b"after"


def test_dataset_whose_jpeg_holds_the_magic_reads_back(tmp_path):
    # JPEG decoders ignore bytes after the end-of-image marker; put the magic at an aligned payload offset
    base = jpegs(1)[0]
    pad = -(24 + len(base)) % 4
    crafted = base + b"\0" * pad + MAGIC_BYTES + b"tail"
    samples = [Sample(0, "a", crafted), Sample(1, "b", jpegs(2)[1])]
    recordio.write(samples, tmp_path / "rec", shuffle=False)
    rec = (tmp_path / "rec" / "train.rec").read_bytes()
    assert [flag for flag, _ in split_frames(rec)] == [1, 3, 0]
    assert_matches_input(arcface_torch_read(tmp_path / "rec"), samples)


# --------------------------------------------------------------------------- layouts and round trips


def rewrite(src: Path, dst: Path) -> None:
    """Re-write a .rec/.idx from what the reader returns, record by record in file order."""
    dst.mkdir()
    with RecordIOReader(src) as reader, open(dst / "train.rec", "wb") as handle:
        writer = RecordIOWriter(handle)
        for record in reader:
            writer.write(record.key, pack(record.header, record.image))
    (dst / "train.idx").write_text(writer.index_text())


@pytest.mark.parametrize("layout", ["flat", "header"])
def test_round_trip_is_byte_exact(tmp_path, layout):
    samples = make_samples()
    recordio.write(samples, tmp_path / "a", layout=layout, seed=3)
    rewrite(tmp_path / "a", tmp_path / "b")
    for name in ("train.rec", "train.idx"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_flat_layout_is_shuffled_deterministically_with_keys_0_to_n(tmp_path):
    samples = make_samples()
    summary = recordio.write(samples, tmp_path / "a", seed=1)
    recordio.write(samples, tmp_path / "b", seed=1)
    recordio.write(samples, tmp_path / "c", seed=2)
    assert summary.num_samples == 20 and summary.num_classes == 5
    assert (tmp_path / "a" / "train.rec").read_bytes() == (tmp_path / "b" / "train.rec").read_bytes()
    assert (tmp_path / "a" / "train.rec").read_bytes() != (tmp_path / "c" / "train.rec").read_bytes()
    with RecordIOReader(tmp_path / "a") as reader:
        records = list(reader)
        assert reader.keys == list(range(20)) == [r.key for r in records]
        assert reader.property == (5, 112, 112)
        assert all(r.header.flag == 0 and r.header.id == r.key for r in records)
        order = [s.jpeg for s in samples]
        assert [order.index(r.image) for r in records] != list(range(20))  # really shuffled
        assert list(reader.samples()) == [(int(r.header.label), r.image) for r in records]
    keys_tsv = (tmp_path / "a" / "keys.tsv").read_text().splitlines()
    by_key = {s.key: s for s in samples}
    for line, record in zip(keys_tsv[1:], records):
        key, label, sample_key = line.split("\t")
        assert int(key) == record.key and by_key[sample_key].jpeg == record.image and int(label) == by_key[sample_key].label


@pytest.mark.parametrize("layout", ["flat", "header"])
def test_arcface_torch_style_reader_gets_every_image_with_its_label(tmp_path, layout):
    samples = make_samples(identities=4, per_identity=3)
    summary = recordio.write(samples[::-1], tmp_path / "rec", layout=layout)
    got = arcface_torch_read(tmp_path / "rec")
    assert_matches_input(got, samples)
    classes, height, width = read_property(tmp_path / "rec")
    assert (classes, height, width) == (4, 112, 112) == (summary.num_classes, 112, 112)
    assert Counter(label for label, _, _ in got) == Counter({c: 3 for c in range(classes)})


def test_header_layout_records_and_class_ranges(tmp_path):
    samples = make_samples(identities=3, per_identity=2)
    recordio.write(samples[::-1], tmp_path / "rec", layout="header", num_classes=4)  # class 3 has no images
    with RecordIOReader(tmp_path / "rec") as reader:
        header, _ = reader.read_key(0)
        assert header.flag == 2 and header.label == (7.0, 11.0)
        images = [reader.read_key(k) for k in range(1, 7)]
        assert [int(h.label) for h, _ in images] == [0, 0, 1, 1, 2, 2]  # grouped by class, stable
        ranges = [reader.read_key(k)[0].label for k in range(7, 11)]
        assert ranges == [(1.0, 3.0), (3.0, 5.0), (5.0, 7.0), (7.0, 7.0)]
        assert reader.property == (4, 112, 112)


def test_empty_export_is_valid(tmp_path):
    summary = recordio.write([], tmp_path / "rec", num_classes=0)
    assert summary.num_samples == 0
    with RecordIOReader(tmp_path / "rec") as reader:
        assert list(reader) == [] and list(reader.samples()) == []


# --------------------------------------------------------------------------- bad input


def test_corrupt_and_truncated_files_raise_file_format_errors(tmp_path):
    recordio.write(make_samples(2, 2), tmp_path / "rec", shuffle=False)
    rec = tmp_path / "rec" / "train.rec"
    good = rec.read_bytes()
    rec.write_bytes(b"\x00\x01\x02\x03" + good[4:])
    with RecordIOReader(tmp_path / "rec") as reader, pytest.raises(FileFormatError, match="magic"):
        list(reader)
    rec.write_bytes(good[: len(good) - 10])
    with RecordIOReader(tmp_path / "rec") as reader, pytest.raises(FileFormatError, match="truncated"):
        list(reader)
    rec.write_bytes(good[:100])
    with pytest.raises(FileFormatError, match="outside"):
        RecordIOReader(tmp_path / "rec")
    (tmp_path / "rec" / "train.idx").write_text("0 zero\n")
    with pytest.raises(FileFormatError, match="key<TAB>offset"):
        RecordIOReader(tmp_path / "rec")
    with pytest.raises(FileFormatError, match="does not exist"):
        RecordIOReader(tmp_path / "missing")


def test_bad_samples_and_options_are_refused(tmp_path):
    good = make_samples(1, 1)[0]
    with pytest.raises(InvalidInputError, match="num_classes"):
        recordio.write([Sample(3, "k", good.jpeg)], tmp_path / "a", num_classes=2)
    with pytest.raises(InvalidInputError, match="no dots"):
        recordio.write([Sample(0, "a.b", good.jpeg)], tmp_path / "b")
    with pytest.raises(InvalidInputError, match="JPEG"):
        recordio.write([Sample(0, "a", b"\x89PNG")], tmp_path / "c")
    with pytest.raises(InvalidInputError, match="twice"):
        recordio.write([Sample(0, "a", good.jpeg), Sample(0, "a", good.jpeg)], tmp_path / "d")
    with pytest.raises(InvalidInputError, match="layout"):
        recordio.write([good], tmp_path / "e", layout="sorted")
    assert list(tmp_path.iterdir()) == []  # no output and no staging folder left behind


def test_unwritable_destination_is_an_output_path_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError):
        recordio.write(make_samples(1, 1), tmp_path / "file" / "rec")
    with pytest.raises(OutputPathError, match="is a file"):
        recordio.write(make_samples(1, 1), tmp_path / "file")
