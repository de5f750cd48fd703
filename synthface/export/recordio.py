"""MXNet RecordIO (`train.rec`, `train.idx`, `property`) for insightface `arcface_torch`, in pure Python.

Framing of one record: uint32 magic 0xced7230a (little-endian), uint32 `cflag << 29 | length`, the
payload, zero padding to a multiple of 4. A payload holding the magic at a 4-byte-aligned offset is
cut there into parts (cflag 1 first, 2 middle, 3 last; the magic itself is dropped and restored by
the reader) so a reader can always resynchronise on the magic. Payload = struct `IfQQ` (flag, label
float32, id, id2), then `flag` float32 labels when flag > 0, then the JPEG bytes. `train.idx` maps
each key to its record's byte offset, one `key<TAB>offset` line per record.

Layouts: "flat" (default): keys 0..N-1, scalar labels, records in a seeded shuffled order (what
arcface_torch and its DALI reader want). "header": record 0 has flag 2 and label [N+1, N+1+C],
images are keys 1..N grouped by class, keys N+1..N+C hold each class's [first, end) image keys.

`open(folder)` gives the images and labels back by random access (what training reads), read by key
the way arcface_torch does, every record's label checked from its header before training starts.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Self

from synthface.errors import FileFormatError, InvalidInputError
from synthface.export._common import ExportFormat, ExportReader, ExportSummary, Sample, SampleChecker, Spool, staged_dir

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1
MAX_RECORD = 1 << 29
MAX_EXACT_LABEL = 1 << 24  # float32 holds every integer up to here

REC, IDX, PROPERTY, KEYS = "train.rec", "train.idx", "property", "keys.tsv"


@dataclass(frozen=True)
class IRHeader:
    """The image-record header: `label` is a float, or a tuple of `flag` floats when flag > 0."""

    flag: int
    label: float | tuple[float, ...]
    id: int = 0
    id2: int = 0


def pack(header: IRHeader, image: bytes = b"") -> bytes:
    """Header + image bytes as one record payload (array labels set flag to their length)."""
    import numpy as np

    if isinstance(header.label, tuple):
        labels = np.asarray(header.label, dtype="<f4")
        return _HEADER.pack(len(labels), 0.0, header.id, header.id2) + labels.tobytes() + bytes(image)
    return _HEADER.pack(header.flag, float(header.label), header.id, header.id2) + bytes(image)


def unpack(payload: bytes) -> tuple[IRHeader, bytes]:
    """Inverse of `pack`: (header, image bytes)."""
    import numpy as np

    if len(payload) < _HEADER.size:
        raise FileFormatError(f"A RecordIO payload of {len(payload)} bytes is shorter than its {_HEADER.size}-byte header; the file is corrupt.")
    flag, label, id_, id2 = _HEADER.unpack_from(payload)
    body = payload[_HEADER.size :]
    if flag > 0:
        if len(body) < 4 * flag:
            raise FileFormatError(f"A RecordIO header announces {flag} labels but the record is too short; the file is corrupt.")
        labels = tuple(float(x) for x in np.frombuffer(body, dtype="<f4", count=flag))
        return IRHeader(flag, labels, id_, id2), body[4 * flag :]
    return IRHeader(flag, label, id_, id2), body


def frame(payload: bytes) -> bytes:
    """The bytes one record occupies in a .rec file, split around aligned magic numbers."""
    if len(payload) >= MAX_RECORD:
        raise InvalidInputError(f"A RecordIO record holds at most {MAX_RECORD - 1} bytes; this one has {len(payload)}.")
    parts: list[bytes] = []
    start = 0
    pos = payload.find(MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            parts.append(_FRAME.pack(MAGIC, (1 if start == 0 else 2) << 29 | (pos - start)) + payload[start:pos])
            start = pos + 4
            pos = payload.find(MAGIC_BYTES, start)
        else:
            pos = payload.find(MAGIC_BYTES, pos + 1)
    rest = len(payload) - start
    parts.append(_FRAME.pack(MAGIC, (3 if start else 0) << 29 | rest) + payload[start:])
    parts.append(b"\0" * (-rest % 4))
    return b"".join(parts)


class RecordIOWriter:
    """Appends framed records to an open binary file and remembers `key -> offset` for the .idx."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self._offset = handle.tell()
        self.index: list[tuple[int, int]] = []

    def write(self, key: int, payload: bytes) -> int:
        data = frame(payload)
        offset = self._offset
        self._handle.write(data)
        self._offset += len(data)
        self.index.append((key, offset))
        return offset

    def index_text(self) -> str:
        return "".join(f"{k}\t{o}\n" for k, o in self.index)


@dataclass(frozen=True)
class Record:
    key: int
    offset: int
    header: IRHeader
    image: bytes


class RecordIOReader:
    """Reads `train.rec` through `train.idx` (and `property` when present) in a folder."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.rec_path, self.idx_path = folder / REC, folder / IDX
        for path in (self.rec_path, self.idx_path):
            if not path.is_file():
                raise FileFormatError(f"{path} does not exist; a RecordIO export needs {REC} and {IDX} side by side.")
        self.offsets: dict[int, int] = {}
        self.keys: list[int] = []
        size = self.rec_path.stat().st_size
        try:
            index_text = self.idx_path.read_text()
        except UnicodeDecodeError:
            raise FileFormatError(f"{self.idx_path} is not text ('key<TAB>offset' lines); the index is corrupt. Export the run again.") from None
        for n, line in enumerate(index_text.splitlines(), 1):
            fields = line.strip().split("\t")
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise FileFormatError(f"{self.idx_path} line {n} is {line!r}, not 'key<TAB>offset'; the index is corrupt.") from None
            if not 0 <= offset < size:
                raise FileFormatError(f"{self.idx_path} line {n} points at byte {offset}, outside {self.rec_path} ({size} bytes); the files do not belong together or one is truncated.")
            self.keys.append(key)
            self.offsets[key] = offset
        self.property: tuple[int, ...] | None = None
        prop = folder / PROPERTY
        if prop.is_file():
            text = prop.read_bytes()[:200].decode("utf-8", "replace")
            try:
                self.property = tuple(int(x) for x in text.strip().split(","))
            except ValueError:
                raise FileFormatError(f"{prop} should read '<classes>,<height>,<width>'; it reads {text!r}.") from None
        self._file = open(self.rec_path, "rb")  # noqa: SIM115 - the reader owns it; closed by close()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read_payload_at(self, offset: int) -> bytes:
        self._file.seek(offset)
        payload = read_next_payload(self._file)
        if payload is None:
            raise FileFormatError(f"{self.rec_path} ends at byte {offset}, where the index expects a record; the file is truncated.")
        return payload

    def read_key(self, key: int) -> tuple[IRHeader, bytes]:
        if key not in self.offsets:
            raise InvalidInputError(f"Key {key} is not in {self.idx_path}.")
        return unpack(self.read_payload_at(self.offsets[key]))

    def __iter__(self) -> Iterator[Record]:
        """Every record in file order, with the key the index gives its offset."""
        key_at = {o: k for k, o in self.offsets.items()}
        self._file.seek(0)
        while True:
            offset = self._file.tell()
            payload = read_next_payload(self._file)
            if payload is None:
                return
            if offset not in key_at:
                raise FileFormatError(f"The record at byte {offset} of {self.rec_path} has no line in {self.idx_path}; the files do not belong together.")
            header, image = unpack(payload)
            yield Record(key_at[offset], offset, header, image)

    def samples(self) -> Iterator[tuple[int, bytes]]:
        """(label, jpeg) per image record, read by key the way arcface_torch does."""
        if not self.keys:
            return
        header, _ = self.read_key(self.keys[0])
        keys = range(1, int(header.label[0])) if header.flag > 0 else self.keys
        for key in keys:
            h, image = self.read_key(key)
            yield int(h.label if h.flag == 0 else h.label[0]), image


def read_next_payload(handle: BinaryIO) -> bytes | None:
    """One whole record from the current position (parts joined), or None at a clean end of file."""
    parts: list[bytes] = []
    while True:
        start = handle.tell()
        head = handle.read(_FRAME.size)
        if not head and not parts:
            return None
        if len(head) < _FRAME.size:
            raise FileFormatError(f"RecordIO file truncated at byte {start}: expected an 8-byte record header.")
        magic, lrec = _FRAME.unpack(head)
        if magic != MAGIC:
            raise FileFormatError(f"Byte {start} holds 0x{magic:08x}, not the RecordIO magic 0x{MAGIC:08x}: not a .rec file, or corrupt.")
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        if (cflag in (0, 1)) == bool(parts):
            raise FileFormatError(f"Record part at byte {start} has continuation flag {cflag} out of sequence; the file is corrupt.")
        body = handle.read(length + (-length % 4))
        if len(body) < length:
            raise FileFormatError(f"RecordIO file truncated at byte {start}: the record announces {length} bytes.")
        parts.append(body[:length])
        if cflag in (0, 3):
            return MAGIC_BYTES.join(parts)


def read_header_at(handle: BinaryIO, offset: int) -> IRHeader:
    """The image-record header of the record at `offset` (its first label only when flag > 0), read
    without the image: a few dozen bytes, so every record's label can be checked before training."""
    import numpy as np

    handle.seek(offset)
    head = handle.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise FileFormatError(f"RecordIO file truncated at byte {offset}: expected an 8-byte record header.")
    magic, lrec = _FRAME.unpack(head)
    if magic != MAGIC:
        raise FileFormatError(f"Byte {offset} holds 0x{magic:08x}, not the RecordIO magic 0x{MAGIC:08x}: not a .rec file, or corrupt.")
    cflag, length = lrec >> 29, lrec & _LENGTH_MASK
    if cflag not in (0, 1):
        raise FileFormatError(f"The record at byte {offset} starts with continuation flag {cflag} (a middle part); the index or the file is corrupt.")
    end = os.fstat(handle.fileno()).st_size
    if cflag == 0 and offset + _FRAME.size + length > end:  # checked before a byte of it is read
        raise FileFormatError(
            f"The record at byte {offset} announces {length:,} bytes, past the end of the file ({end:,} bytes); the "
            "file is truncated or corrupt."
        )
    want = _HEADER.size + 4
    if length < want and cflag == 1:  # the magic inside the header itself: join the parts
        handle.seek(offset)
        payload = read_next_payload(handle)
        return unpack(payload or b"")[0]
    body = handle.read(min(length, want))
    if len(body) < min(length, _HEADER.size):
        raise FileFormatError(f"RecordIO file truncated at byte {offset}: the record announces {length} bytes.")
    if len(body) < _HEADER.size:
        raise FileFormatError(f"The record at byte {offset} holds {len(body)} bytes, less than its {_HEADER.size}-byte header; the file is corrupt.")
    flag, label, id_, id2 = _HEADER.unpack_from(body)
    if flag > 0:
        if len(body) < want:
            raise FileFormatError(f"The record at byte {offset} announces {flag} labels but is too short; the file is corrupt.")
        return IRHeader(flag, (float(np.frombuffer(body, dtype="<f4", count=1, offset=_HEADER.size)[0]),), id_, id2)
    return IRHeader(flag, label, id_, id2)


# --------------------------------------------------------------------------- the dataset writer


def _image_size(jpeg: bytes) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpeg)) as im:
            return im.size
    except (OSError, ValueError):
        raise InvalidInputError("The first sample's JPEG cannot be read to learn the image size; pass image_size=(h, w).") from None


def write(
    samples: Iterable[Sample],
    out_dir: str | Path,
    *,
    num_classes: int | None = None,
    layout: Literal["flat", "header"] = "flat",
    shuffle: bool = True,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> ExportSummary:
    """Write `train.rec`, `train.idx`, `property` and `keys.tsv` (record key, label, sample key).

    "flat" shuffles with `seed` unless `shuffle=False` (then input order); "header" groups images by
    label (stable). Reordering goes through a disk spool, so memory stays small for any N.
    """
    import numpy as np

    if layout not in ("flat", "header"):
        raise InvalidInputError(f"layout must be 'flat' or 'header', got {layout!r}.")
    checker = SampleChecker(num_classes)
    out_dir = Path(out_dir)
    with staged_dir(out_dir, overwrite=overwrite) as tmp, open(tmp / REC, "wb") as rec:
        writer = RecordIOWriter(rec)
        keys_lines: list[str] = []
        first: list[bytes] = []

        def put(key: int, s: Sample) -> None:
            if not first:
                first.append(s.jpeg)
            writer.write(key, pack(IRHeader(0, float(s.label), key, 0), s.jpeg))
            keys_lines.append(f"{key}\t{s.label}\t{s.key}\n")

        if layout == "flat" and not shuffle:
            for i, s in enumerate(checker(samples)):
                put(i, s)
            n = checker.count
        else:
            with Spool(tmp / ".spool") as spool:
                for s in checker(samples):
                    spool.add(s)
                n = len(spool)
                labels = np.frombuffer(spool.labels, dtype=np.int64) if n else np.zeros(0, np.int64)
                if layout == "flat":
                    order = np.random.default_rng(seed).permutation(n)
                    for i, s in enumerate(spool.in_order(order)):
                        put(i, s)
                else:
                    classes = checker.classes
                    writer.write(0, pack(IRHeader(2, (float(n + 1), float(n + 1 + classes)), 0, 0)))
                    for i, s in enumerate(spool.in_order(np.argsort(labels, kind="stable")), 1):
                        put(i, s)
                    counts = np.bincount(labels, minlength=classes)
                    ends = np.cumsum(counts) + 1
                    for c in range(classes):
                        start, end = float(ends[c] - counts[c]), float(ends[c])
                        writer.write(n + 1 + c, pack(IRHeader(2, (start, end), 0, 0)))
        classes = checker.classes
        if classes > MAX_EXACT_LABEL:
            raise InvalidInputError(f"RecordIO stores labels as float32, exact only up to {MAX_EXACT_LABEL} classes; got {classes}.")
        w, h = image_size[::-1] if image_size else (_image_size(first[0]) if first else (112, 112))
        (tmp / IDX).write_text(writer.index_text())
        (tmp / PROPERTY).write_text(f"{classes},{h},{w}")
        (tmp / KEYS).write_text("record\tlabel\tkey\n" + "".join(keys_lines))
        rec.flush()
    return ExportSummary("recordio", out_dir, n, classes, (REC, IDX, PROPERTY, KEYS))


# --------------------------------------------------------------------------- random access (training)


class RecordIOSource(ExportReader):
    """Images and labels of a RecordIO export by index (flat or header layout), labels read from each
    record's header (a few dozen bytes each) and checked against `property` before any image is read."""

    fmt = "recordio"

    def __init__(self, folder: Path):
        import numpy as np

        folder = Path(folder)
        with RecordIOReader(folder) as reader:
            keys, prop, handle = reader.keys, reader.property, reader._file
            self.path = reader.rec_path
            if keys:
                header = read_header_at(handle, reader.offsets[keys[0]])
                if header.flag > 0:  # header layout: images are keys 1 .. label[0] - 1
                    keys = _header_layout_keys(header, reader.offsets, folder)
            labels = [read_header_at(handle, reader.offsets[k]) for k in keys]
            self.keys = np.array(keys, dtype=np.int64)
            self.offsets = np.array([reader.offsets[k] for k in keys], dtype=np.int64)
        if prop is None:
            raise FileFormatError(f"{folder} has no 'property' file ('<classes>,<height>,<width>'); the export is incomplete.")
        if len(prop) != 3 or min(prop) < 1:
            raise FileFormatError(f"{folder / PROPERTY} reads {','.join(map(str, prop))}, not '<classes>,<height>,<width>' "
                                  "with three positive numbers; the export is damaged. Export the run again.")
        if prop[0] > len(keys):
            raise FileFormatError(
                f"{folder / PROPERTY} claims {prop[0]:,} classes, but {self.path} holds only {len(keys):,} images; every "
                "class needs at least one. The property file is damaged or belongs to another export: write "
                "'<classes>,<height>,<width>' with the true class count, or export the run again."
            )
        self.num_classes = prop[0]
        values = np.array([h.label if h.flag == 0 else h.label[0] for h in labels], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values >= self.num_classes))
        if len(bad):
            i = int(bad[0])
            raise FileFormatError(
                f"{self.where(i)} has label {values[i]:g}, not a class number in 0..{self.num_classes - 1} (the property "
                f"file's {self.num_classes} classes; {len(bad)} such records in all). The export is damaged or its "
                "property file belongs to another one: export the run again."
            )
        self.labels = values.astype(np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def where(self, i: int) -> str:
        return f"Record {int(self.keys[i])} (byte {int(self.offsets[i])}) of {self.path}"

    def read(self, i: int) -> tuple[bytes, int]:
        handle = self._handle(self.path)
        handle.seek(int(self.offsets[i]))
        payload = read_next_payload(handle)
        if payload is None:
            raise FileFormatError(f"{self.path} ends where its index expects record {i}; the file is truncated.")
        header, image = unpack(payload)
        return image, int(header.label if header.flag == 0 else header.label[0])


def _header_layout_keys(header: IRHeader, offsets: dict[int, int], folder: Path) -> list[int]:
    """Keys 1 .. label[0] - 1 of a header-layout RecordIO, checked against its index before any list is made."""
    import numpy as np

    end = header.label[0]
    if not np.isfinite(end) or end != int(end) or not 2 <= end <= len(offsets):
        raise FileFormatError(
            f"The header record (key 0) of {folder / REC} says the images are keys 1..{end:g} - 1, but "
            f"{folder / IDX} lists {len(offsets):,} records; the header is damaged. Export the run again."
        )
    missing = next((k for k in range(1, int(end)) if k not in offsets), None)
    if missing is not None:
        raise FileFormatError(
            f"{folder / IDX} has no line for image key {missing}, which the header record (key 0) announces; "
            "the files do not belong together. Export the run again."
        )
    return list(range(1, int(end)))


def detect(folder: Path) -> bool:
    return (Path(folder) / REC).is_file() and (Path(folder) / IDX).is_file()


FORMAT = ExportFormat(
    name="recordio", files=(REC, IDX, PROPERTY, KEYS), signature=f"{REC} + {IDX}",
    write=write, detect=detect, open=RecordIOSource,
)
