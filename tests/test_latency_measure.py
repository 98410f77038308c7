"""Timing a real ONNX model with onnxruntime; no assertions on how fast anything is."""
import onnx
import numpy as np
import pytest
from onnx import TensorProto, helper

from narformer_core.latency.measure import (MeasurementError, ModelLoadError, Measurement,
                                            measure_onnx, platform_info, platform_key)


def tiny_model(batch="N", in_type=TensorProto.FLOAT) -> bytes:
    """x (batch, 8) @ W (8, 8) -> Relu."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [8, 8],
                           np.random.default_rng(0).standard_normal(64).astype(np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "tiny", [helper.make_tensor_value_info("x", in_type, [batch, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_measure_fields_and_repeats():
    m = measure_onnx(tiny_model(), warmup=2, repeats=7)
    assert isinstance(m, Measurement)
    assert m.repeats == 7 and len(m.samples_ms) == 7
    assert m.median_ms > 0 and m.mean_ms > 0 and m.min_ms > 0
    assert m.min_ms <= m.median_ms <= m.p90_ms <= max(m.samples_ms)
    assert m.std_ms >= 0 and m.iqr_ms >= 0
    assert m.median_ms == pytest.approx(float(np.median(m.samples_ms)))
    assert m.platform["threads"] == 1 and m.platform["batch_size"] == 1
    assert m.platform["provider"] == "CPUExecutionProvider"
    assert "T" in m.measured_at and m.measured_at.endswith("+00:00")
    d = m.to_dict()
    assert d["median_ms"] == m.median_ms and "samples_ms" not in d
    assert len(m.to_dict(samples=True)["samples_ms"]) == 7


def test_dynamic_batch_and_threads_are_recorded(tmp_path):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_model())
    m = measure_onnx(path, threads=2, warmup=0, repeats=3, batch_size=4)
    assert m.platform["batch_size"] == 4 and m.platform["threads"] == 2
    assert m.platform_key.endswith("-t2-b4")
    # A fixed batch axis wins over batch_size, and the platform says so.
    fixed = measure_onnx(tiny_model(batch=2), warmup=0, repeats=3, batch_size=16)
    assert fixed.platform["batch_size"] == 2


def test_min_seconds_keeps_at_least_repeats():
    m = measure_onnx(tiny_model(), warmup=0, repeats=3, min_seconds=0.05)
    assert m.repeats >= 3 and len(m.samples_ms) == m.repeats


def test_model_proto_and_integer_inputs():
    x = helper.make_tensor_value_info("i", TensorProto.INT64, ["N", 3])
    y = helper.make_tensor_value_info("o", TensorProto.INT64, ["N", 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Neg", ["i"], ["o"])], "neg", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert measure_onnx(model, warmup=0, repeats=2).repeats == 2


def test_invalid_models_raise_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load") as e:
        measure_onnx(b"this is not an onnx model")
    assert isinstance(e.value, ValueError)
    with pytest.raises(ModelLoadError, match="no ONNX file"):
        measure_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        measure_onnx(bad)
    with pytest.raises(ModelLoadError, match="expected ONNX model bytes"):
        measure_onnx(12345)
    with pytest.raises(ValueError, match="repeats"):
        measure_onnx(tiny_model(), repeats=0)
    with pytest.raises(ValueError, match="threads"):
        measure_onnx(tiny_model(), threads=0)


def test_unsupported_input_type_is_a_clear_error():
    x = helper.make_tensor_value_info("s", TensorProto.STRING, [1])
    y = helper.make_tensor_value_info("o", TensorProto.STRING, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["s"], ["o"])], "s", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(MeasurementError, match="cannot fill"):
        measure_onnx(model, warmup=0, repeats=1)


def test_platform_info_and_key():
    info = platform_info(threads=1, batch_size=1)
    for k in ("cpu", "cores", "onnxruntime", "provider", "threads", "batch_size", "python", "hostname"):
        assert k in info
    key = platform_key(info)
    assert key == platform_key(dict(info)) and key.startswith("cpu-") and key.endswith("-t1-b1")
    assert platform_key({**info, "hostname": "another-box"}) == key  # same hardware, same key
    assert platform_key({**info, "threads": 2}) != key
    intel = {**info, "cpu": "Intel(R) Xeon(R) Gold 6226 CPU @ 2.70GHz", "onnxruntime": "1.18.1",
             "threads": 4, "batch_size": 8, "cpu_generation": "f6m85"}
    assert platform_key(intel) == "cpu-Intel_Xeon_Gold_6226-f6m85-ort1.18-t4-b8"
    with pytest.raises(ValueError, match="platform description"):
        platform_key({"cpu": "x"})


def test_cpu_generation_is_in_the_key_and_old_keys_stay_compatible():
    from narformer_core.latency.measure import cpu_generation, platform_keys_compatible, without_generation

    info = platform_info(threads=1, batch_size=1)
    assert info["cpu_generation"] == cpu_generation()
    zen5 = {**info, "cpu": "AMD EPYC", "onnxruntime": "1.32.0", "cpu_generation": "f26m2"}
    zen2 = {**zen5, "cpu_generation": "f23m49"}
    legacy = {k: v for k, v in zen5.items() if k != "cpu_generation"}   # recorded before session 14
    assert platform_key(zen5) == "cpu-AMD_EPYC-f26m2-ort1.32-t1-b1"
    assert platform_key(zen2) != platform_key(zen5)                    # same name, other hardware
    assert platform_key(legacy) == "cpu-AMD_EPYC-ort1.32-t1-b1" == without_generation(platform_key(zen5))
    assert platform_keys_compatible(platform_key(legacy), platform_key(zen5))
    assert platform_keys_compatible(platform_key(zen5), platform_key(zen5))
    assert not platform_keys_compatible(platform_key(zen2), platform_key(zen5))
    assert not platform_keys_compatible(platform_key(zen5), platform_key(legacy))
    assert not platform_keys_compatible(platform_key({**legacy, "threads": 2}), platform_key(zen5))
    arm = {**info, "cpu": "Raspberry Pi 4", "cpu_generation": "i0x41p0xd08"}
    assert without_generation(platform_key(arm)) == platform_key({**arm, "cpu_generation": ""})
