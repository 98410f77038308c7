import base64
import json
import struct

import numpy as np
import pandas as pd
import pytest

from narformer_core.data import DataUnavailable, shared_file
from narformer_core.data import nb101 as d
from narformer_core.spaces import nb101
from narformer_core.tokenizer import tokenize_graphs


def _shared(name):
    try:
        return shared_file(name)
    except FileNotFoundError:
        pytest.skip(f"shared benchmark file {name} not available")


@pytest.fixture(scope="module")
def records30():
    return pd.read_csv(_shared(d.FILE_30), dtype=str)


@pytest.fixture(scope="module")
def table30(records30):
    return d.load_nb101("naslib-30")


def _official_style_records(df):
    """The 30 real records as official TFRecord rows: 3 runs at 108 epochs (plus a 4-epoch run
    that the loader must ignore). Evaluation 0 is the initial one, 1 halfway, 2 final."""
    out = []
    for row in df.itertuples():
        n = int(row.n_nodes)
        m = nb101.parse_rowmajor(row.adjacency_rowmajor, n)
        ops = row.ops.split("|")
        for r in range(3):
            val = float(getattr(row, f"val_acc_108ep_run{r}"))
            test = float(getattr(row, f"test_acc_108ep_run{r}"))
            evals = [dict(current_epoch=0.0, training_time=0.0, train_accuracy=0.1,
                          validation_accuracy=0.1, test_accuracy=0.1, checkpoint_path=""),
                     dict(current_epoch=54.0, training_time=800.5, train_accuracy=0.8,
                          validation_accuracy=val - 0.05, test_accuracy=test - 0.05),
                     dict(current_epoch=108.0, training_time=1600.25, train_accuracy=1.0,
                          validation_accuracy=val, test_accuracy=test,
                          checkpoint_path=f"gs://bucket/{row.hash}/run{r}/model.ckpt-108")]
            out.append(dict(hash=row.hash, epochs=108, matrix=m, ops=ops, params=int(row.params),
                            evaluations=evals))
        out.append(dict(hash=row.hash, epochs=4, matrix=m, ops=ops, params=int(row.params),
                        evaluations=[dict(current_epoch=4.0, validation_accuracy=0.5, test_accuracy=0.5)]))
    return out


@pytest.fixture(scope="module")
def tfrecord30(records30, tmp_path_factory):
    path = tmp_path_factory.mktemp("nb101") / "nb101_30.tfrecord"
    assert d.write_tfrecord(path, _official_style_records(records30)) == 120
    return path


# ---------------------------------------------------------------- shared CSVs
def test_naslib_500():
    _shared(d.FILE_500)
    t = d.load_nb101("naslib-500")
    assert len(t) == 500 and len(t.graphs) == 500
    assert np.all((t.val_acc > 50) & (t.val_acc < 100))
    assert np.isnan(t.test_acc).all() and np.isnan(t.params).all()
    assert all(g.space == "nb101" and 2 <= len(g) <= 7 for g in t.graphs)
    assert all(g.meta["hash"] == h for g, h in zip(t.graphs, t.hashes))
    # Cells come pruned: no node off the input-output path remains.
    for g in t.graphs[:50]:
        m, ops = nb101.from_graph(g)
        assert nb101.prune(m, ops)[0].shape == m.shape
    # The published rows repeat modules; the unique source merges them.
    assert len(set(t.hashes)) < 500
    u = d.load_nb101("naslib-500-unique")
    assert len(u) == len(set(t.hashes)) == len(set(u.hashes))
    h = u.hashes[0]
    np.testing.assert_allclose(u.val_acc[0], t.val_acc[[i for i, x in enumerate(t.hashes) if x == h]].mean())


def test_naslib_30(records30, table30):
    t = table30
    assert len(t) == 30 and t.hashes == list(records30["hash"])
    assert np.all((t.val_acc > 80) & (t.val_acc < 100))
    assert np.all((t.test_acc > 80) & (t.test_acc < 100))
    first = records30.iloc[0]
    expect = np.mean([float(first[f"val_acc_108ep_run{r}"]) for r in range(3)]) * 100
    np.testing.assert_allclose(t.val_acc[0], expect)
    np.testing.assert_array_equal(t.params, records30["params"].astype(float))
    assert all(g.meta["hash"] == h for g, h in zip(t.graphs, t.hashes))


def test_unknown_source_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown NB101 label source 'nb101-full'; known: naslib-500"):
        d.load_nb101("nb101-full")
    with pytest.raises(DataUnavailable, match="nb101_500_val_acc_naslib.csv not found"):
        d.load_nb101("naslib-500", data_dir=tmp_path)
    with pytest.raises(DataUnavailable, match="nope.tfrecord not found"):
        d.load_nb101(f"tfrecord:{tmp_path / 'nope.tfrecord'}")
    with pytest.raises(ValueError, match="needs a file path"):
        d.load_nb101("tfrecord:")


def test_bad_csv_row_names_the_row(tmp_path):
    df = pd.read_csv(_shared(d.FILE_500), dtype=str).head(5)
    df.loc[3, "ops"] = "input|conv5x5|output"
    df.to_csv(tmp_path / d.FILE_500, index=False)
    with pytest.raises(ValueError, match="data row 4: the cell has 7 nodes but 3 ops"):
        d.load_nb101("naslib-500", data_dir=tmp_path)


def test_tokenize_loaded_graphs(table30):
    small = nb101.to_graph([[0, 1, 0], [0, 0, 1], [0, 0, 0]], ["input", nb101.OPS[2], "output"])
    graphs = [*table30.graphs[:5], small]
    tok = tokenize_graphs(graphs)
    assert tok.nodes.shape == (6, 8, 192)  # 7 nodes + the end token
    n = np.array([len(g) for g in graphs])
    np.testing.assert_array_equal(tok.mask.sum(1), n + 1)
    end = tok.nodes[np.arange(6), n]
    np.testing.assert_array_equal(end, np.broadcast_to(end[0], end.shape))
    assert np.all(tok.nodes[5, 4:] == 0)  # padding after the 3-node cell's end token
    assert not np.array_equal(tok.nodes[0], tok.nodes[1])


def test_load_task_uses_the_loader():
    from narformer_core.tasks import load_task

    task = load_task("nb101", "naslib-30")
    assert len(task) == 30 and np.all(task.y > 80) and np.all(task.y_test > 80)
    assert task.graph(0).meta["hash"] == task.ids[0]


# ---------------------------------------------------------------- crc32c
def test_crc32c_known_values():
    assert d.crc32c(b"") == 0
    assert d.crc32c(b"123456789") == 0xE3069283
    assert d.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 test vector
    assert d.crc32c(b"\xff" * 32) == 0x62A8AB43


def test_crc32c_batch_matches_scalar():
    rng = np.random.default_rng(0)
    chunks = [rng.bytes(int(n)) for n in rng.integers(0, 300, 200)] + [b"", b"a", rng.bytes(70_000)]
    got = d.crc32c_batch(chunks)
    assert got.dtype == np.uint32
    assert [int(x) for x in got] == [d.crc32c(c) for c in chunks]


# ---------------------------------------------------------------- protobuf
def test_model_metrics_round_trip():
    evals = [dict(current_epoch=108.0, training_time=1.5, train_accuracy=1.0, validation_accuracy=0.9375,
                  test_accuracy=0.93, checkpoint_path="a/b.ckpt")]
    for params in (2_694_282, 0, -5):
        back = d.decode_model_metrics(d.encode_model_metrics(evals, params))
        assert back == {"evaluations": evals, "params": params}


def test_protobuf_decoder_skips_unknown_fields_and_rejects_garbage():
    msg = d.encode_model_metrics([dict(validation_accuracy=0.5)], 7)
    unknown = bytes([3 << 3 | 1]) + struct.pack("<d", 12.5)   # a double field 3
    assert d.decode_model_metrics(msg + unknown)["params"] == 7
    with pytest.raises(ValueError, match="claims"):
        d.decode_model_metrics(bytes([1 << 3 | 2, 50, 1]))
    with pytest.raises(ValueError, match="wire type"):
        d.decode_model_metrics(bytes([2 << 3 | 1]) + bytes(8))


# ---------------------------------------------------------------- TFRecord
def test_tfrecord_round_trip_of_the_30_records(tfrecord30, table30):
    t = d.load_nb101(f"tfrecord:{tfrecord30}")
    assert t.hashes == table30.hashes
    np.testing.assert_allclose(t.val_acc, table30.val_acc, rtol=0, atol=1e-9)
    np.testing.assert_allclose(t.test_acc, table30.test_acc, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(t.params, table30.params)
    for g, h in zip(t.graphs, t.hashes):
        assert nb101.module_hash(*nb101.from_graph(g)) == h
        assert g.meta["hash"] == h


def test_tfrecord_records_and_framing(tfrecord30, records30):
    recs = list(d.read_tfrecord(tfrecord30))
    assert len(recs) == 120 and [r["epochs"] for r in recs[:4]] == [108, 108, 108, 4]
    r = recs[0]
    assert r["hash"] == records30["hash"][0] and r["params"] == int(records30["params"][0])
    assert [e["current_epoch"] for e in r["evaluations"]] == [0.0, 54.0, 108.0]
    assert r["evaluations"][2]["checkpoint_path"].endswith("run0/model.ckpt-108")
    assert r["evaluations"][2]["training_time"] == 1600.25
    # The payload is the official JSON row.
    payload = next(d.iter_tfrecord(tfrecord30))
    h, epochs, bits, ops, metrics = json.loads(payload)
    assert (h, epochs) == (r["hash"], 108) and len(bits) == int(records30["n_nodes"][0]) ** 2
    assert ops.split(",")[0] == "input"
    # Framing: uint64 length, masked crc of it, payload, masked crc of the payload.
    raw = tfrecord30.read_bytes()
    (length,) = struct.unpack_from("<Q", raw, 0)
    assert raw[12: 12 + length] == payload
    assert struct.unpack_from("<I", raw, 8)[0] == d.masked_crc32c(raw[:8])
    assert struct.unpack_from("<I", raw, 12 + length)[0] == d.masked_crc32c(payload)


def test_tfrecord_progress_bar(tfrecord30, capsys):
    assert len(d.load_tfrecord(tfrecord30, progress=True)) == 30
    assert "nb101_30.tfrecord" in capsys.readouterr().err


def _corrupt(src, dst, offset):
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))
    return dst


def _record_offsets(path):
    raw = path.read_bytes()
    offsets, pos = [], 0
    while pos < len(raw):
        offsets.append(pos)
        pos += 16 + struct.unpack_from("<Q", raw, pos)[0]
    return offsets


def test_corrupted_payload_byte_gives_crc_error(tfrecord30, tmp_path):
    off = _record_offsets(tfrecord30)[7]
    bad = _corrupt(tfrecord30, tmp_path / "bad.tfrecord", off + 40)
    with pytest.raises(ValueError, match=rf"bad.tfrecord: record 7 \(byte offset {off}\) is corrupt: "
                                         "its data fails the CRC-32C check"):
        d.load_nb101(f"tfrecord:{bad}")


def test_corrupted_length_gives_crc_error(tfrecord30, tmp_path):
    off = _record_offsets(tfrecord30)[3]
    bad = _corrupt(tfrecord30, tmp_path / "badlen.tfrecord", off + 6)  # a huge length
    with pytest.raises(ValueError, match=r"record 3 .* length header fails the CRC-32C check"):
        list(d.iter_tfrecord(bad))


def test_truncated_file(tfrecord30, tmp_path):
    raw = tfrecord30.read_bytes()
    offsets = _record_offsets(tfrecord30)
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(raw[: offsets[-1] + 30])
    with pytest.raises(ValueError, match=rf"record 119 \(byte offset {offsets[-1]}\) is truncated"):
        d.load_tfrecord(cut)
    cut.write_bytes(raw[: offsets[-1] + 5])
    with pytest.raises(ValueError, match="record 119 .* is truncated: 5 byte"):
        list(d.iter_tfrecord(cut))


def test_bad_json_payload_names_the_record(tmp_path):
    path = tmp_path / "json.tfrecord"
    good = json.dumps(["0" * 32, 108, "0100", "input,output", ""]).encode()
    path.write_bytes(d._frame(good) + d._frame(b"{not json"))
    with pytest.raises(ValueError, match=r"json.tfrecord: record 1 \(byte offset \d+\) is not JSON"):
        list(d.read_tfrecord(path))
    path.write_bytes(d._frame(json.dumps({"a": 1}).encode()))
    with pytest.raises(ValueError, match="record 0 .* is not an NB101 row"):
        d.load_tfrecord(path)
    path.write_bytes(d._frame(json.dumps(["0" * 32, 108, "0100", "input,output", "%%%"]).encode()))
    with pytest.raises(ValueError, match="record 0 .* unreadable metrics"):
        d.load_tfrecord(path)
    with pytest.raises(ValueError, match="record 0 .* unreadable metrics"):
        list(d.read_tfrecord(path))
    path.write_bytes(d._frame(json.dumps(["0" * 32, 108, "0100", "input,output",
                                          base64.b64encode(d.encode_model_metrics([], 5)).decode()]).encode()))
    with pytest.raises(ValueError, match="record 0 .* unreadable metrics .*: it has no evaluation data"):
        d.load_tfrecord(path)


def test_tfrecord_without_108_epoch_records(tmp_path):
    path = tmp_path / "short.tfrecord"
    d.write_tfrecord(path, [dict(matrix=[[0, 1], [0, 0]], ops=["input", "output"], epochs=12, params=10,
                                 evaluations=[dict(validation_accuracy=0.5, test_accuracy=0.5)])])
    assert next(d.read_tfrecord(path))["hash"] == nb101.module_hash([[0, 1], [0, 0]], ["input", "output"])
    with pytest.raises(ValueError, match="holds no 108-epoch NB101 records"):
        d.load_tfrecord(path)
    assert len(d.load_tfrecord(path, epochs=12)) == 1
