"""NAS-Bench-101 ground truth -> pruned cell graphs + accuracy columns.

Label sources (accuracies in %, NaN where unknown):

- ``naslib-500``: 500 real cells (7x7 matrices) with the 108-epoch validation accuracy of one
  run, from NASLib's zero-cost set. Rows are kept as published: several rows are the same module
  (500 rows, 292 distinct hashes), so split by hash to avoid leaking a cell into its own test.
- ``naslib-500-unique``: the same file merged by module hash (292 modules, mean accuracy).
- ``naslib-30``: 30 full records: mean validation and test accuracy of the 3 runs, parameters.
- ``tfrecord:PATH``: the official ``nasbench_only108.tfrecord`` (or any file in that format),
  read without TensorFlow: every module, mean of its 108-epoch runs.

The official file is a TFRecord stream. Each record is framed as
``uint64 length | uint32 masked crc32c(length) | payload | uint32 masked crc32c(payload)``
(little endian), and the payload is the JSON list
``[module_hash, epochs, adjacency_bits, "op,op,...", base64(ModelMetrics protobuf)]``.
"""
from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..graph import ArchGraph, GraphError
from ..spaces import nb101
from . import DataUnavailable, data_dir as _data_dir, shared_file

LABEL_SOURCES = {
    "naslib-500": "500 NB101 cells (NASLib), 108-epoch validation accuracy of one run; "
                  "rows as published, duplicate modules included; no test accuracy",
    "naslib-500-unique": "the naslib-500 cells merged by module hash (292 modules, mean validation accuracy)",
    "naslib-30": "30 full NB101 records (NASLib test asset): mean validation and test accuracy of 3 runs, params",
    "tfrecord:PATH": "the official nasbench_only108.tfrecord at PATH (or a file in its format): "
                     "all modules, mean of the 108-epoch runs",
}
FILE_500 = "nb101_500_val_acc_naslib.csv"
FILE_30 = "nb101_30_full_records_naslib_testasset.csv"
EPOCHS = 108


@dataclass
class Nb101Table:
    """One row per cell: its pruned graph, module hash and labels (accuracies in %)."""

    graphs: list[ArchGraph]
    hashes: list[str]
    val_acc: np.ndarray      # (M,) validation accuracy, %
    test_acc: np.ndarray     # (M,) test accuracy, %, NaN where unknown
    params: np.ndarray       # (M,) trainable parameters, NaN where unknown

    def __post_init__(self) -> None:
        sizes = {len(self.graphs), len(self.hashes), len(self.val_acc), len(self.test_acc), len(self.params)}
        if len(sizes) != 1:
            raise ValueError(f"Nb101Table columns have different lengths: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.hashes)


# ---------------------------------------------------------------- public entry
def load_nb101(source: str = "naslib-500", data_dir=None, progress: bool = False) -> Nb101Table:
    """Load one label source (see LABEL_SOURCES) as a table of pruned graphs and labels."""
    if source == "naslib-500":
        return _load_500(data_dir, unique=False)
    if source == "naslib-500-unique":
        return _load_500(data_dir, unique=True)
    if source == "naslib-30":
        return _load_30(data_dir)
    if isinstance(source, str) and source.startswith("tfrecord:"):
        return load_tfrecord(_resolve(source[len("tfrecord:"):], data_dir), progress=progress)
    raise ValueError(f"unknown NB101 label source {source!r}; known: {', '.join(LABEL_SOURCES)}")


def _resolve(path: str, data_dir) -> Path:
    if not path:
        raise ValueError("'tfrecord:' needs a file path after the colon, e.g. tfrecord:/data/nasbench_only108.tfrecord")
    p = Path(path).expanduser()
    if p.exists():
        return p
    if not p.is_absolute() and (_data_dir(data_dir) / p).exists():
        return _data_dir(data_dir) / p
    raise DataUnavailable(f"NB101 TFRecord file {path} not found (also looked in {_data_dir(data_dir)}). "
                          "Download nasbench_only108.tfrecord from the NAS-Bench-101 release and pass "
                          "tfrecord:/path/to/it.")


# ---------------------------------------------------------------- shared CSVs
@lru_cache(maxsize=None)
def _read_csv(name: str, data_dir, columns: tuple[str, ...]) -> pd.DataFrame:
    path = shared_file(name, data_dir)
    try:
        df = pd.read_csv(path, dtype=str)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path} is not a readable CSV file ({type(e).__name__}: {first})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}; is it the right file?")
    if len(df) == 0:   # a header alone would fail much later, inside training
        raise ValueError(f"{path} has no data rows")
    return df


def _cells(path, bits: Iterable[str], sizes: Iterable[int], ops: Iterable[str]) -> list[ArchGraph]:
    out = []
    for row, (b, n, o) in enumerate(zip(bits, sizes, ops)):
        try:
            out.append(nb101.to_graph(nb101.parse_rowmajor(b, int(n)), str(o).split("|")))
        except GraphError as e:
            raise ValueError(f"{path}, data row {row + 1}: {e}") from None
    return out


def _numbers(df: pd.DataFrame, col: str, name: str) -> np.ndarray:
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(vals).any():
        row = int(np.flatnonzero(np.isnan(vals))[0]) + 1
        raise ValueError(f"{name}, data row {row}: column {col} is not a number ({df[col].iloc[row - 1]!r})")
    return vals


def _load_500(data_dir, unique: bool) -> Nb101Table:
    df = _read_csv(FILE_500, str(data_dir) if data_dir else None,
                   ("adjacency_7x7_rowmajor", "ops", "val_acc_108ep"))
    graphs = _cells(FILE_500, df["adjacency_7x7_rowmajor"], [7] * len(df), df["ops"])
    val = _numbers(df, "val_acc_108ep", FILE_500)  # already in %
    hashes = [g.meta["hash"] for g in graphs]
    if unique:
        first: dict[str, int] = {}
        accs: dict[str, list[float]] = {}
        for i, h in enumerate(hashes):
            first.setdefault(h, i)
            accs.setdefault(h, []).append(val[i])
        keep = list(first.values())
        graphs = [graphs[i] for i in keep]
        hashes = [hashes[i] for i in keep]
        val = np.array([np.mean(accs[h]) for h in hashes])
    nan = np.full(len(hashes), np.nan)
    return Nb101Table(graphs, hashes, val, nan.copy(), nan.copy())


def _load_30(data_dir) -> Nb101Table:
    runs = range(3)
    cols = ("hash", "adjacency_rowmajor", "n_nodes", "ops", "params",
            *(f"{k}_acc_108ep_run{r}" for r in runs for k in ("val", "test")))
    df = _read_csv(FILE_30, str(data_dir) if data_dir else None, cols)
    graphs = _cells(FILE_30, df["adjacency_rowmajor"], df["n_nodes"], df["ops"])
    for row, (g, h) in enumerate(zip(graphs, df["hash"])):
        if g.meta["hash"] != h:
            raise ValueError(f"{FILE_30}, data row {row + 1}: the cell's module hash is {g.meta['hash']}, "
                             f"the file says {h}")
    # The file stores fractions; the project uses %.
    val = np.mean([_numbers(df, f"val_acc_108ep_run{r}", FILE_30) for r in runs], axis=0) * 100
    test = np.mean([_numbers(df, f"test_acc_108ep_run{r}", FILE_30) for r in runs], axis=0) * 100
    return Nb101Table(graphs, list(df["hash"]), val, test, _numbers(df, "params", FILE_30))


# ---------------------------------------------------------------- crc32c
_POLY = 0x82F63B78  # Castagnoli, bit-reversed


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        table.append(c)
    return table


_TABLE = _make_table()
_TABLE_NP = np.array(_TABLE, dtype=np.uint32)
_MASK_DELTA = 0xA282EAD8
_BATCH_MAX_LEN = 1 << 16   # longer payloads are checked one by one (keeps the padded batch small)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of a byte string, as TFRecord uses it."""
    crc = 0xFFFFFFFF
    t = _TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits, add a constant (mod 2^32)."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def crc32c_batch(chunks: Sequence[bytes]) -> np.ndarray:
    """CRC-32C of many byte strings at once, uint32 (K,).

    CRC is sequential within a string, so the vectorisation runs across strings: byte j of every
    string still that long is folded in one NumPy step. Strings are sorted longest first so the
    strings still active at step j are a prefix.
    """
    k = len(chunks)
    out = np.zeros(k, dtype=np.uint32)
    lens = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=k)
    small = np.flatnonzero(lens <= _BATCH_MAX_LEN)
    for i in np.flatnonzero(lens > _BATCH_MAX_LEN):
        out[i] = crc32c(chunks[i])
    if not len(small):
        return out
    order = small[np.argsort(-lens[small], kind="stable")]
    slens = lens[order]
    width = int(slens[0])
    blob = b"".join(bytes(chunks[i]).ljust(width, b"\0") for i in order)
    data = np.ascontiguousarray(np.frombuffer(blob, dtype=np.uint8).reshape(len(order), width).T)  # (width, K)
    active = np.searchsorted(-slens, -np.arange(width), side="left")  # strings longer than j
    crc = np.full(len(order), 0xFFFFFFFF, dtype=np.uint32)
    for j in range(width):
        a = active[j]
        c = crc[:a]
        crc[:a] = _TABLE_NP[(c ^ data[j, :a]) & 0xFF] ^ (c >> 8)
    out[order] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def _mask(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint32)
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(_MASK_DELTA)


@lru_cache(maxsize=4096)
def _length_crc(length: int) -> int:
    # Record lengths repeat a lot, so the header check is a dictionary lookup.
    return masked_crc32c(struct.pack("<Q", length))


# ---------------------------------------------------------------- TFRecord framing
_READ_BLOCK = 1 << 22
_VERIFY_BATCH = 4096


def _frames(path: Path, progress: bool = False) -> Iterator[tuple[int, int, bytes]]:
    """(record number from 0, byte offset, payload) of every record, CRCs checked.

    Streams the file in blocks; payload CRCs are verified in batches before any payload of the
    batch is handed out. A header is checked before its length is trusted.
    """
    path = Path(path)
    if not path.exists():
        raise DataUnavailable(f"TFRecord file {path} not found")
    size = path.stat().st_size
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=size, unit="B", unit_scale=True, desc=path.name)
    pending: list[tuple[int, int, bytes, int]] = []

    def flush() -> Iterator[tuple[int, int, bytes]]:
        if not pending:
            return
        got = _mask(crc32c_batch([p[2] for p in pending]))
        want = np.array([p[3] for p in pending], dtype=np.uint32)
        bad = np.flatnonzero(got != want)
        if len(bad):
            n, off, _, _ = pending[int(bad[0])]
            raise ValueError(f"{path}: record {n} (byte offset {off}) is corrupt: its data fails the "
                             "CRC-32C check")
        if bar is not None:
            bar.update(sum(len(p[2]) + 16 for p in pending))
        yield from ((n, off, payload) for n, off, payload, _ in pending)
        pending.clear()

    try:
        with open(path, "rb") as f:
            buf = b""
            pos = 0        # position of the next record in buf
            base = 0       # file offset of buf[0]
            number = 0
            while True:
                if len(buf) - pos < 12:
                    more = f.read(_READ_BLOCK)
                    if not more:
                        if len(buf) > pos:
                            yield from flush()
                            raise ValueError(f"{path}: record {number} (byte offset {base + pos}) is "
                                             f"truncated: {len(buf) - pos} byte(s) where a 12-byte header "
                                             "should be")
                        break
                    buf, base, pos = buf[pos:] + more, base + pos, 0
                    continue
                offset = base + pos
                length, length_crc = struct.unpack_from("<QI", buf, pos)
                if length_crc != _length_crc(length):
                    yield from flush()
                    raise ValueError(f"{path}: record {number} (byte offset {offset}) is corrupt: its "
                                     "length header fails the CRC-32C check")
                need = 12 + length + 4
                if offset + need > size:
                    yield from flush()
                    raise ValueError(f"{path}: record {number} (byte offset {offset}) is truncated: it "
                                     f"needs {need} bytes, the file has {size - offset} left")
                while len(buf) - pos < need:
                    buf = buf[pos:] + f.read(max(_READ_BLOCK, need - (len(buf) - pos)))
                    base, pos = base + pos, 0
                payload = buf[pos + 12: pos + 12 + length]
                (data_crc,) = struct.unpack_from("<I", buf, pos + 12 + length)
                pending.append((number, offset, payload, data_crc))
                pos += need
                number += 1
                if len(pending) >= _VERIFY_BATCH:
                    yield from flush()
            yield from flush()
    finally:
        if bar is not None:
            bar.close()


def iter_tfrecord(path, progress: bool = False) -> Iterator[bytes]:
    """Payloads of a TFRecord file, in order, each CRC-checked; raises ValueError on corruption."""
    for _, _, payload in _frames(Path(path), progress):
        yield payload


def _frame(payload: bytes) -> bytes:
    head = struct.pack("<Q", len(payload))
    return b"".join((head, struct.pack("<I", masked_crc32c(head)), payload,
                     struct.pack("<I", masked_crc32c(payload))))


# ---------------------------------------------------------------- protobuf wire format
_EVAL_DOUBLES = ("current_epoch", "training_time", "train_accuracy", "validation_accuracy", "test_accuracy")


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("protobuf ends inside a varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("protobuf varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, raw value) of each field of one message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise ValueError(f"protobuf ends inside field {field}")
            value, pos = buf[pos: pos + width], pos + width
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError(f"protobuf field {field} claims {n} bytes, only {len(buf) - pos} remain")
            value, pos = buf[pos: pos + n], pos + n
        else:
            raise ValueError(f"protobuf field {field} has unsupported wire type {wire}")
        yield field, wire, value


def _expect(field: int, wire: int, want: int, message: str) -> None:
    if wire != want:
        raise ValueError(f"{message} field {field} has wire type {wire}, expected {want}")


def decode_model_metrics(buf: bytes) -> dict:
    """ModelMetrics protobuf -> {"evaluations": [dict per EvaluationData], "params": int}.

    Unknown fields are skipped, as protobuf readers do.
    """
    evals, params = [], None
    for field, wire, value in _fields(buf):
        if field == 1:
            _expect(field, wire, 2, "ModelMetrics")
            ev: dict = {}
            for f2, w2, v2 in _fields(value):
                if 1 <= f2 <= 5:
                    _expect(f2, w2, 1, "EvaluationData")
                    ev[_EVAL_DOUBLES[f2 - 1]] = struct.unpack("<d", v2)[0]
                elif f2 == 6:
                    _expect(f2, w2, 2, "EvaluationData")
                    ev["checkpoint_path"] = bytes(v2).decode("utf-8", "replace")
            evals.append(ev)
        elif field == 2:
            _expect(field, wire, 0, "ModelMetrics")
            params = value - (1 << 64) if value >= 1 << 63 else value  # negative int32s are sign-extended
    return {"evaluations": evals, "params": params}


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_model_metrics(evaluations: Sequence[Mapping], params: int | None) -> bytes:
    """The inverse of :func:`decode_model_metrics` (fields written in field-number order)."""
    parts = []
    for ev in evaluations:
        body = []
        for k, name in enumerate(_EVAL_DOUBLES, start=1):
            if name in ev and ev[name] is not None:
                body.append(_varint(k << 3 | 1) + struct.pack("<d", float(ev[name])))
        if ev.get("checkpoint_path") is not None:
            s = str(ev["checkpoint_path"]).encode("utf-8")
            body.append(_varint(6 << 3 | 2) + _varint(len(s)) + s)
        msg = b"".join(body)
        parts.append(_varint(1 << 3 | 2) + _varint(len(msg)) + msg)
    if params is not None:
        parts.append(_varint(2 << 3 | 0) + _varint(int(params)))
    return b"".join(parts)


# ---------------------------------------------------------------- NB101 records
def _where(path: Path, number: int, offset: int) -> str:
    return f"{path}: record {number} (byte offset {offset})"


def _json_row(path: Path, number: int, offset: int, payload: bytes) -> list:
    try:
        row = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{_where(path, number, offset)} is not JSON: {e}") from None
    if not (isinstance(row, list) and len(row) == 5 and isinstance(row[2], str) and isinstance(row[3], str)):
        raise ValueError(f"{_where(path, number, offset)} is not an NB101 row "
                         f"[module_hash, epochs, adjacency_bits, ops, metrics]: {payload[:80]!r}")
    return row


def _cell(where: str, bits: str, ops: str) -> tuple[np.ndarray, list[str]]:
    try:
        return nb101.parse_rowmajor(bits, int(round(len(bits) ** 0.5))), ops.split(",")
    except GraphError as e:
        raise ValueError(f"{where}: {e}") from None


_BAD_METRICS = "unreadable metrics (base64 of a ModelMetrics protobuf expected)"


def _decode_record(path: Path, number: int, offset: int, payload: bytes) -> dict:
    h, epochs, bits, ops, raw = _json_row(path, number, offset, payload)
    where = _where(path, number, offset)
    matrix, ops = _cell(where, bits, ops)
    try:
        metrics = decode_model_metrics(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError, TypeError) as e:
        raise ValueError(f"{where}: {_BAD_METRICS}: {e}") from None
    return {"hash": str(h), "epochs": epochs, "matrix": matrix, "ops": ops, **metrics}


def _final_metrics(buf: bytes) -> tuple[float, float, int | None]:
    """(validation, test accuracy of the last evaluation, params) without decoding the rest."""
    last, params = None, None
    for field, wire, value in _fields(buf):
        if field == 1:
            _expect(field, wire, 2, "ModelMetrics")
            last = value
        elif field == 2:
            _expect(field, wire, 0, "ModelMetrics")
            params = value - (1 << 64) if value >= 1 << 63 else value
    if last is None:
        raise ValueError("it has no evaluation data")
    val = test = None
    for field, wire, value in _fields(last):
        if field in (4, 5):
            _expect(field, wire, 1, "EvaluationData")
            if field == 4:
                (val,) = struct.unpack("<d", value)
            else:
                (test,) = struct.unpack("<d", value)
    if val is None or test is None:
        raise ValueError("its final evaluation lacks validation or test accuracy")
    return val, test, params


def read_tfrecord(path, progress: bool = False) -> Iterator[dict]:
    """Records of an NB101 TFRecord file as dicts: hash, epochs, matrix, ops, params, evaluations."""
    path = Path(path)
    for number, offset, payload in _frames(path, progress):
        yield _decode_record(path, number, offset, payload)


def write_tfrecord(path, records: Iterable[Mapping]) -> int:
    """Write records in the official NB101 TFRecord format; returns how many were written.

    Each record is a mapping with ``matrix`` and ``ops`` (written as given), ``params``,
    ``evaluations`` (a list of EvaluationData dicts: current_epoch, training_time, train_accuracy,
    validation_accuracy, test_accuracy as fractions, checkpoint_path), optional ``epochs``
    (default 108) and optional ``hash`` (default: the module hash of the cell).
    """
    count = 0
    with open(path, "wb") as f:
        for rec in records:
            m = np.asarray(rec["matrix"], dtype=np.int64)
            ops = list(rec["ops"])
            h = rec.get("hash") or nb101.module_hash(m, ops)
            metrics = encode_model_metrics(rec.get("evaluations", ()), rec.get("params"))
            row = [h, int(rec.get("epochs", EPOCHS)), "".join(str(int(v)) for v in m.ravel()),
                   ",".join(ops), base64.b64encode(metrics).decode("ascii")]
            f.write(_frame(json.dumps(row).encode("utf-8")))
            count += 1
    return count


def load_tfrecord(path, progress: bool = False, epochs: int = EPOCHS) -> Nb101Table:
    """All modules of an NB101 TFRecord file with their mean final accuracies (%) over runs.

    Only records trained for ``epochs`` epochs are kept. The final evaluation of a run is its
    last EvaluationData entry. Modules appear in order of their first record.
    """
    path = Path(path)
    groups: dict[str, list] = {}   # hash -> [graph, params, val list, test list]
    for number, offset, payload in _frames(path, progress):
        h, rec_epochs, bits, ops, raw = _json_row(path, number, offset, payload)
        if rec_epochs != epochs:
            continue
        try:
            val, test, params = _final_metrics(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError, TypeError) as e:
            raise ValueError(f"{_where(path, number, offset)}: {_BAD_METRICS}: {e}") from None
        h = str(h)
        entry = groups.get(h)
        if entry is None:
            where = _where(path, number, offset)
            try:
                pm, pops = nb101._validated(*_cell(where, bits, ops))
            except GraphError as e:
                raise ValueError(f"{where}: {e}") from None
            # The file's hash keys the module; recomputing 423k fingerprints would double load time.
            entry = groups[h] = [nb101._graph(pm, pops, h), params, [], []]
        entry[2].append(val)
        entry[3].append(test)
    if not groups:
        raise ValueError(f"{path} holds no {epochs}-epoch NB101 records")
    hashes = list(groups)
    entries = list(groups.values())
    return Nb101Table(
        graphs=[e[0] for e in entries], hashes=hashes,
        val_acc=np.array([np.mean(e[2]) for e in entries]) * 100,
        test_acc=np.array([np.mean(e[3]) for e in entries]) * 100,
        params=np.array([np.nan if e[1] is None else float(e[1]) for e in entries]))
