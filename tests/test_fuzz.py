"""Robustness: fuzzed inputs through the command line and the app's upload path.

Hypothesis draws inputs (raw bytes, arch strings, NB101 matrices, and seeds of the structured
generators of narformer_core/fuzz.py); deterministic tests cover each category, the malicious
pickle (its code must not run), a checkpoint of another model config (a clear error naming the
mismatch) and the documented limits at their documented values (docs/ROBUSTNESS.md). The full
1,000-input figures come from scripts/fuzz_report.py.
"""
from __future__ import annotations

import contextlib
import io
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from narformer_core import fuzz
from narformer_core.graph import GraphError

ROOT = Path(__file__).resolve().parents[1]
# Modest and reproducible: the suite runs on a busy 2-core machine.
FAST = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW = settings(FAST, max_examples=12)


@pytest.fixture(scope="module")
def ctx(torch_one_thread):
    with fuzz.FuzzContext(timeout_s=120) as c:
        yield c


def _no_crash(outcome: fuzz.Outcome) -> None:
    bad = [f"{r.channel}: {r.detail}" for r in outcome.runs if r.status == "crash"]
    assert not bad, f"{outcome.case.category} ({outcome.case.note}): {bad}"
    assert not outcome.code_ran, "the malicious pickle's code ran"
    if outcome.case.expect == "error":
        assert outcome.status == "error"


def _only_clear_errors(fn, *args):
    """Call ``fn``; anything but a GraphError/ValueError with a one-sentence message fails the test."""
    try:
        return fn(*args)
    except (GraphError, ValueError) as e:
        msg = str(e)
        assert msg.strip() and not fuzz._RAW.search(msg), f"unclear message: {msg!r}"
        return None


# ------------------------------------------------------------------ hypothesis: raw inputs
@FAST
@given(data=st.binary(max_size=2048))
def test_random_bytes_never_crash_the_upload(data):
    from narformer_core import app_services as svc

    g = _only_clear_errors(svc.import_onnx, data)
    assert g is None, "random bytes are not an ONNX model"


@FAST
@given(data=st.data())
def test_mutated_model_bytes_never_crash_the_upload(ctx, data):
    from narformer_core import app_services as svc

    base = bytearray(data.draw(st.sampled_from(ctx.models)).SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(base) - 1))
        what = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if what == "flip":
            base[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif what == "cut":
            del base[pos:]
            if not base:
                break
        else:
            base[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    g = _only_clear_errors(svc.import_onnx, bytes(base))
    if g is not None:      # valid by chance: what the page does next must work too
        svc.network_token_matrix(g)
        _only_clear_errors(svc.static_features, g)


@FAST
@given(s=st.one_of(st.text(max_size=300), st.text(alphabet=fuzz._NB201_ALPHABET + "none_skip", max_size=120)))
def test_arch_strings_never_crash(s):
    from narformer_core.spaces import nb201

    g = _only_clear_errors(nb201.to_graph, s)
    if g is not None:     # accepted: the canonical string of the cell reads back as the same cell
        assert len(g) == 8 and nb201.parse(nb201.to_arch_str(g.ops[1:7])) == nb201.parse(s)


@FAST
@given(rows=st.lists(st.lists(st.sampled_from([0, 1, 1, 2, -1, 0.5, math.nan, math.inf, True]), max_size=9),
                     max_size=9),
       ops=st.one_of(st.none(), st.text(max_size=20),
                     st.lists(st.sampled_from(["input", "output", "conv3x3-bn-relu", "conv1x1-bn-relu",
                                               "maxpool3x3", "conv5x5", "", 3]), max_size=9)))
def test_nb101_matrices_never_crash(rows, ops):
    from narformer_core import app_services as svc

    g = _only_clear_errors(svc.nb101_graph, rows, ops)
    if g is not None:
        m = np.asarray(rows, dtype=float)
        assert set(np.unique(m)) <= {0.0, 1.0}, "a matrix with entries other than 0/1 was accepted"
        svc.cell_token_matrix(g)


# ------------------------------------------------------------------ hypothesis: structured generators
ONNX_GENERATORS = [k for k in fuzz.GENERATORS if k.startswith("onnx") and k not in ("onnx-oversize",)]


@SLOW
@given(name=st.sampled_from(ONNX_GENERATORS), seed=st.integers(0, 2 ** 32 - 1))
def test_onnx_generators_through_cli_and_app(ctx, name, seed):
    case = fuzz.GENERATORS[name][0](np.random.default_rng(seed), ctx)
    _no_crash(fuzz.run_case(case, ctx))


@SLOW
@given(name=st.sampled_from(["checkpoint", "latency-checkpoint", "csv-nb201", "csv-nb101"]),
       seed=st.integers(0, 2 ** 32 - 1))
def test_file_generators_through_cli_and_app(ctx, name, seed):
    case = fuzz.GENERATORS[name][0](np.random.default_rng(seed), ctx)
    # Inputs that may be valid would evaluate all 15,625 cells or train: the report covers those.
    assume(case.expect == "error" or case.kind in ("latency-checkpoint", "csv-nb201"))
    _no_crash(fuzz.run_case(case, ctx))


# ------------------------------------------------------------------ deterministic: every category
@pytest.mark.parametrize("name", sorted(fuzz.GENERATORS))
def test_each_generator_category(ctx, name):
    """A few seeded cases of every generator through the command line and the app path."""
    done = 0
    for seed in range(40):
        case = fuzz.GENERATORS[name][0](np.random.default_rng(1000 + seed), ctx)
        if case.kind in ("checkpoint", "csv-nb101") and case.expect != "error":
            continue     # would run a full evaluation / a training (the report covers those)
        _no_crash(fuzz.run_case(case, ctx))
        done += 1
        if done == 2:
            break
    assert done == 2


def test_generate_is_reproducible(ctx):
    a = fuzz.generate(30, seed=7, ctx=ctx)
    b = fuzz.generate(30, seed=7, ctx=ctx)
    assert [(c.category, c.note) for c in a] == [(c.category, c.note) for c in b]
    assert len({c.category.split("/")[0] for c in fuzz.generate(200, seed=1, ctx=ctx)}) >= 6


def test_judge_flags_crashes_and_accepts_clear_errors():
    bad = fuzz.Case("x", "onnx", b"", "error")
    assert fuzz._judge_cli(["m"], bad, 0, "{}", "", None, 0).status == "crash"               # exit 0 on bad input
    assert fuzz._judge_cli(["m"], bad, 2, "", "", None, 0).status == "crash"                 # no message
    tb = "Traceback (most recent call last):\n  File x\nKeyError: 'a'"
    assert fuzz._judge_cli(["m"], bad, 1, "", tb, None, 0).status == "crash"
    raw = "error: 'NoneType' object has no attribute 'shape'"
    assert fuzz._judge_cli(["m"], bad, 2, "", raw, None, 0).status == "crash"
    assert fuzz._judge_cli(["m"], bad, 2, "", "error: x.onnx is not a valid ONNX model", None, 0).status == "error"
    anyc = fuzz.Case("x", "onnx", b"", "any")
    assert fuzz._judge_cli(["m"], anyc, 0, '{"latency_ms": NaN}', "", None, 0).status == "crash"
    assert fuzz._judge_cli(["m"], anyc, 0, '{"latency_ms": 1.5}', "", None, 0).status == "accepted"


def test_a_real_crash_is_reported(ctx, monkeypatch):
    """The runner is not blind: an uncaught KeyError inside the import shows as a crash."""
    from narformer_core import onnx_import

    def broken(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(onnx_import, "load_onnx", broken)
    case = fuzz.Case("onnx/valid-control", "onnx", ctx.models[0].SerializeToString(), "ok")
    out = fuzz.run_case(case, ctx)
    assert out.status == "crash"
    assert any("KeyError" in r.detail for r in out.runs)


# ------------------------------------------------------------------ checkpoints
def _evil_payloads(marker: str) -> list[bytes]:
    evil = fuzz._Evil(marker)
    return [pickle.dumps({"format": "narformer-ckpt-1", "x": evil}),
            fuzz._torch_bytes({"format": "narformer-ckpt-1", "state_dict": {"w": evil}}),
            fuzz._torch_bytes(evil, legacy=True),
            pickle.dumps(evil, protocol=0)]


def test_the_malicious_payload_is_live(tmp_path):
    """Control: unpickled without weights_only, the payload does run (so the next test means something)."""
    marker = tmp_path / "ran"
    pickle.loads(_evil_payloads(str(marker))[0])
    assert marker.exists()


@pytest.mark.parametrize("which", ["accuracy", "latency"])
def test_malicious_pickle_is_refused_and_its_code_does_not_run(tmp_path, which):
    from narformer_core.cli import main
    from narformer_core.latency.predictors import LatencyCheckpointError, load_predictor
    from narformer_core.predictors import CheckpointError, load_checkpoint

    named = 0
    for k, data in enumerate(_evil_payloads(str(tmp_path / "ran"))):
        p = tmp_path / f"evil{k}.pt"
        p.write_bytes(data)
        if which == "accuracy":
            with pytest.raises(CheckpointError) as e:
                load_checkpoint(p)
            argv = ["evaluate", "--checkpoint", str(p), "--labels", "analog"]
        else:
            with pytest.raises(LatencyCheckpointError) as e:
                load_predictor(p)
            argv = ["predict-latency", str(ROOT / "no_such.onnx"), "--checkpoint", str(p)]
        msg = str(e.value)
        assert "refused unread" in msg and "weights_only=True" in msg and "\n" not in msg, msg
        named += "(exec)" in msg or "(builtins.exec)" in msg      # where torch names the global, so do we
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(argv) == 2
        assert "refused unread" in err.getvalue() or which == "latency", err.getvalue()
        assert "Traceback" not in err.getvalue()
        assert not (tmp_path / "ran").exists(), "the pickle's code ran"
    assert named >= 2


def _checkpoint_with(tmp_path, src: Path, change: dict, name="other.pt") -> Path:
    import torch

    ck = torch.load(src, weights_only=True)
    ck["model_config"] = {**ck["model_config"], **change}
    p = tmp_path / name
    torch.save(ck, p)
    return p


@pytest.fixture(scope="module")
def accuracy_checkpoint(ctx, tmp_path_factory) -> Path:
    """A single-run accuracy checkpoint of real size: the shipped 781 one, or, since that is an
    ensemble, its first member saved alone (an ensemble keeps a config per member, and these
    doctored-config tests edit the top-level one); the fuzz context's tiny one without assets."""
    import torch

    from narformer_core.ensemble import ENSEMBLE_FORMAT, check_members
    from narformer_core.train import CKPT_FORMAT

    shipped = ROOT / "assets" / "checkpoints" / "nb201-781.pt"
    if not shipped.exists():
        return ctx.accuracy_ckpt_path
    ck = torch.load(shipped, weights_only=True)
    if ck.get("format") != ENSEMBLE_FORMAT:
        return shipped
    first = check_members(ck, shipped.name, ValueError)[0]
    single = {**{k: ck[k] for k in ("task", "split", "target")}, "format": CKPT_FORMAT,
              **{k: first[k] for k in ("model_config", "state_dict", "kind", "epoch", "val_tau", "train_config")
                 if k in first}}
    out = tmp_path_factory.mktemp("member") / "nb201-781-member0.pt"
    torch.save(single, out)
    return out


def test_checkpoint_of_another_model_config_names_the_mismatch(tmp_path, accuracy_checkpoint):
    import torch

    from narformer_core.cli import main
    from narformer_core.predictors import CheckpointError, load_checkpoint

    d = torch.load(accuracy_checkpoint, weights_only=True)["model_config"]["d_model"]
    p = _checkpoint_with(tmp_path, accuracy_checkpoint, {"d_model": d // 2, "n_heads": 2, "ffn_dim": 2 * d})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert "does not match its model config" in msg and "has shape" in msg and "needs" in msg, msg
    assert f"[{d // 2}," in msg or f", {d // 2}]" in msg, msg         # the config's width is named
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["evaluate", "--checkpoint", str(p), "--labels", "analog"]) == 2
    assert err.getvalue().startswith("error: ") and "does not match its model config" in err.getvalue()

    # Fewer blocks than the saved weights: tensors left over, named.
    p = _checkpoint_with(tmp_path, accuracy_checkpoint, {"depths": [1, 1, 1, 1]}, "fewer.pt")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(p)


def test_doctored_huge_config_is_refused_before_allocating(tmp_path, accuracy_checkpoint):
    import time

    from narformer_core.predictors import CheckpointError, load_checkpoint

    p = _checkpoint_with(tmp_path, accuracy_checkpoint, {"d_model": 10 ** 6, "ffn_dim": 10 ** 7})
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="asks for a size of 10,000,000"):
        load_checkpoint(p)
    p = _checkpoint_with(tmp_path, accuracy_checkpoint, {"depths": [10 ** 5, 1, 1, 1]}, "deep.pt")
    with pytest.raises(CheckpointError, match="blocks"):
        load_checkpoint(p)
    # No terabyte model was built: refusing both took no time to speak of (not a timing benchmark:
    # building d_model = 10^6 would take minutes or fail with MemoryError).
    assert time.perf_counter() - t0 < 60


def test_latency_checkpoint_of_another_config(tmp_path, ctx):
    import torch

    from narformer_core.latency.predictors import LatencyCheckpointError, load_predictor

    st = torch.load(ctx.latency_ckpt_path, weights_only=True)
    if st.get("kind") != "narformer":
        pytest.skip("the shipped NAR-Former latency checkpoint is not in this checkout")
    st["config"]["model"] = {**st["config"]["model"], "d_model": 2 * st["config"]["model"]["d_model"]}
    p = tmp_path / "lat.pt"
    torch.save(st, p)
    with pytest.raises(LatencyCheckpointError, match="does not match its model config: tensor .* has shape"):
        load_predictor(p)


@pytest.mark.parametrize("cut", [0, 10, 1000, -100])
def test_truncated_checkpoints(tmp_path, accuracy_checkpoint, cut):
    from narformer_core.predictors import CheckpointError, load_checkpoint

    data = accuracy_checkpoint.read_bytes()
    p = tmp_path / "cut.pt"
    p.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(CheckpointError, match="is not a (loadable|torch) checkpoint"):
        load_checkpoint(p)


# ------------------------------------------------------------------ documented limits
DOC = ROOT / "docs" / "ROBUSTNESS.md"


def test_documented_limits_match_the_code():
    from narformer_core import app_services as svc
    from narformer_core import onnx_import
    from narformer_core.latency import measure

    text = DOC.read_text()
    assert (svc.MAX_ONNX_BYTES, svc.MAX_ONNX_NODES) == (50_000_000, 5000)
    assert (onnx_import.MAX_BYTES, onnx_import.MAX_NODES) == (200_000_000, 5000)
    assert measure.MAX_TENSOR_ELEMENTS == 200_000_000
    for figure in ("50,000,000", "200,000,000", "5,000", "weights_only=True"):
        assert figure in text, f"{figure} is not in docs/ROBUSTNESS.md"


def test_upload_size_limit_is_enforced_at_its_value(ctx):
    from narformer_core import app_services as svc

    with pytest.raises(GraphError, match=r"over the limit of 50\.0 MB \(50000000 bytes\)"):
        svc.import_onnx(bytes(svc.MAX_ONNX_BYTES + 1))
    with pytest.raises(GraphError) as e:       # exactly at the limit: parsed (and refused as not ONNX)
        svc.import_onnx(bytes(svc.MAX_ONNX_BYTES))
    assert "over the limit" not in str(e.value)


def test_cli_file_size_limit_is_enforced_at_its_value(tmp_path, ctx):
    from narformer_core.cli import main
    from narformer_core.onnx_import import MAX_BYTES

    p = tmp_path / "big.onnx"
    with open(p, "wb") as f:      # sparse: no 200 MB written
        f.truncate(MAX_BYTES + 1)
    for argv in (["predict-latency", str(p)], ["measure", str(p)]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(argv) == 2
        assert "over the limit of 200.0 MB (200000000 bytes)" in err.getvalue()


def test_node_limit_is_enforced_at_its_value(ctx):
    from narformer_core import app_services as svc

    g = svc.import_onnx(fuzz._chain(svc.MAX_ONNX_NODES).SerializeToString())
    assert g.meta["n_ops"] == svc.MAX_ONNX_NODES
    for wide in (False, True):
        with pytest.raises(GraphError, match=r"has 5001 operators, over the limit of 5000"):
            svc.import_onnx(fuzz._chain(svc.MAX_ONNX_NODES + 1, wide=wide).SerializeToString())


def test_measure_refuses_huge_tensors_before_allocating(ctx):
    from narformer_core.latency.measure import MAX_TENSOR_ELEMENTS, MeasurementError, measure_onnx

    m = fuzz._copy(ctx.models[2])                      # the MLP: x (1, 16)
    d = m.graph.input[0].type.tensor_type.shape.dim
    d[0].dim_value = MAX_TENSOR_ELEMENTS // 16 + 1      # just over the limit
    with pytest.raises(MeasurementError, match="over the limit of 200,000,000"):
        measure_onnx(m.SerializeToString(), warmup=0, repeats=1)
    for v in (10 ** 9, 2 ** 62):
        d[0].dim_value = v
        with pytest.raises(MeasurementError, match="over the limit"):
            measure_onnx(m.SerializeToString(), warmup=0, repeats=1)


def test_uploads_never_reach_pickle(ctx, monkeypatch):
    """Everything the page does with uploaded bytes, with pickle and torch.load made to fail."""
    import torch

    from narformer_core import app_services as svc
    from narformer_core import plots

    predictor = ctx.latency_predictor                  # loaded before: the page caches it

    def refuse(*a, **k):
        raise AssertionError("an upload reached pickle / torch.load")

    class Refuse:
        def __init__(self, *a, **k):
            refuse()

    for mod, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(mod, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", Refuse)
    data = ctx.models[0].SerializeToString()
    g = svc.import_onnx(data)
    svc.network_token_matrix(g)
    plots.cell_dag(g)
    svc.static_features(g)
    assert np.isfinite(svc.predict_latency(predictor, [g])).all()
    from narformer_core.latency.measure import measure_onnx
    assert measure_onnx(data, warmup=0, repeats=2).median_ms > 0


# ------------------------------------------------------------------ real processes
@pytest.mark.slow
def test_a_real_process_exits_nonzero_without_traceback(tmp_path):
    """One real ``python -m narformer_core`` (scripts/fuzz_report.py runs 20 more): a torch
    checkpoint with code in it is refused with status 2 and one line, and the code does not run."""
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_evil_payloads(str(tmp_path / "ran"))[1])
    p = subprocess.run([sys.executable, "-m", "narformer_core", "evaluate", "--checkpoint", str(evil),
                        "--labels", "analog"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.startswith("error: ") and "refused unread" in p.stderr, p.stderr
    assert not (tmp_path / "ran").exists()
