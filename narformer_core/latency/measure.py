"""Measure the latency of an ONNX model on this machine with onnxruntime (CPU).

Why a median and a spread rather than one number: wall-clock latency drifts with everything else
the machine is doing (other processes, frequency scaling, cache and memory contention). A single
run, or a mean, is dragged by the occasional slow run; the median of many runs after a warm-up
is a robust central value, and the spread (std, IQR, p90) says how far to trust it. On a busy
machine a few runs are pre-empted for a whole scheduler tick (milliseconds, several times a small
model's latency): they blow up the mean and std but barely move the median and IQR. Two
measurements are only comparable when taken on the same kind of platform with the same thread
count and batch size: :func:`platform_key` names that.
"""
from __future__ import annotations

import math
import os
import platform
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

PROVIDER = "CPUExecutionProvider"
# Inputs are filled with random data and the model then runs for real: a tensor above this many
# elements (800 MB as float32) is refused before anything is allocated, so that a model declaring
# a 1 x 3 x 10^9 x 10^9 input, or one that blows a small input up, cannot exhaust the memory of
# the machine (and the app's server with it).
MAX_TENSOR_ELEMENTS = 200_000_000


class ModelLoadError(ValueError):
    """onnxruntime could not load the model; the message says why."""


class MeasurementError(ValueError):
    """The model loaded but could not be timed (e.g. an input type we cannot fill)."""


@dataclass(frozen=True)
class Measurement:
    """One latency measurement: statistics over ``repeats`` timed runs, in milliseconds."""

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    p90_ms: float
    iqr_ms: float
    repeats: int
    platform: dict
    measured_at: str  # ISO 8601, UTC
    samples_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def platform_key(self) -> str:
        return platform_key(self.platform)

    def to_dict(self, samples: bool = False) -> dict:
        d = asdict(self)
        if samples:
            d["samples_ms"] = list(self.samples_ms)
        else:
            d.pop("samples_ms")
        return d


# ---------------------------------------------------------------- where a measurement was taken
@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name, e.g. 'Intel(R) Xeon(R) Gold 6226 CPU @ 2.70GHz'."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    # x86 says "model name"; ARM boards say "Hardware" or "Model" instead.
    for key in ("model name", "Hardware", "Model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return platform.processor() or platform.machine() or "unknown-cpu"


@lru_cache(maxsize=1)
def cpu_generation() -> str:
    """The CPU's microarchitecture as the kernel numbers it: 'f26m2' for x86 family 26 model 2
    (AMD Zen 5), 'i0x41p0xd0c' for an ARM implementer/part; '' where /proc/cpuinfo says neither.

    Why: a cloud VM may name its CPU only "AMD EPYC". Session 13 of this project ran on a host
    three times faster than sessions 1-12's under that same name, and measurements from the two
    must not share a key.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""

    def field(name):
        m = re.search(rf"^{name}\s*:\s*(\S+)\s*$", text, re.MULTILINE)
        return m.group(1) if m else None

    family, model = field("cpu family"), field("model")
    if family and model and family.isdigit() and model.isdigit():
        return f"f{family}m{model}"
    implementer, part = field("CPU implementer"), field("CPU part")
    if implementer and part:
        return f"i{implementer}p{part}"
    return ""


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def platform_info(threads: int, batch_size: int) -> dict:
    """Everything that decides whether two measurements are comparable, plus the host name."""
    import onnxruntime as ort

    return {
        "cpu": cpu_model(),
        "cpu_generation": cpu_generation(),
        "cores": os.cpu_count() or 1,
        "usable_cores": _usable_cores(),
        "machine": platform.machine(),
        "os": platform.system(),
        "onnxruntime": ort.__version__,
        "provider": PROVIDER,
        "threads": int(threads),
        "batch_size": int(batch_size),
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
    }


_GENERATION = re.compile(r"-(f\d+m\d+|i0x[0-9a-fA-F]+p0x[0-9a-fA-F]+)(?=-ort)")


def without_generation(key: str) -> str:
    """``key`` in the form it had before CPU generations were recorded."""
    return _GENERATION.sub("", str(key))


def platform_keys_compatible(recorded: str, here: str) -> bool:
    """Whether measurements recorded under ``recorded`` may stand for the platform ``here``:
    the same key, or a key recorded before generations were (no generation in it) that matches
    ``here`` without its generation. The second case cannot tell two generations apart (session
    13's lesson); the callers say so where it matters."""
    recorded, here = str(recorded), str(here)
    if recorded == here:
        return True
    return _GENERATION.search(recorded) is None and recorded == without_generation(here)


def common_platform(keys) -> str | None:
    """The key that a set of measurements' keys share: the one with a CPU generation when some
    were recorded before generations were; None when two of them are other platforms."""
    keys = {str(k) for k in keys}
    if not keys:
        return None
    newest = max(keys, key=lambda k: (k != without_generation(k), k))
    return newest if all(platform_keys_compatible(k, newest) for k in keys) else None


# Words in CPU names that say nothing about speed.
_CPU_NOISE = re.compile(r"\((R|TM|tm|r)\)|\bCPU\b|\bProcessor\b|@.*$|\b\d+-Core\b")


def _short_cpu(name: str) -> str:
    s = _CPU_NOISE.sub(" ", name)
    s = re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")
    return s[:32].strip("_") or "unknown"


def platform_key(info: Mapping[str, Any]) -> str:
    """A short, stable id such as 'cpu-AMD_EPYC-f26m2-ort1.32-t1-b1'.

    Measurements with the same key are comparable: same provider, CPU model and generation
    (:func:`cpu_generation`), onnxruntime major.minor, thread count and batch size. The host name
    is left out on purpose so that identical machines share their measurements. Descriptions
    recorded before the generation was (session 14) give the old form without it,
    'cpu-AMD_EPYC-ort1.32-t1-b1' (see :func:`platform_keys_compatible`).
    """
    try:
        provider = str(info["provider"]).replace("ExecutionProvider", "").lower() or "cpu"
        ort_version = ".".join(str(info["onnxruntime"]).split(".")[:2])
        generation = re.sub(r"[^A-Za-z0-9]+", "", str(info.get("cpu_generation") or ""))[:16]
        return (f"{provider}-{_short_cpu(str(info['cpu']))}{'-' + generation if generation else ''}"
                f"-ort{ort_version}-t{int(info['threads'])}-b{int(info['batch_size'])}")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a platform description (as made by platform_info): missing or "
                         f"malformed field {e}") from None


# ---------------------------------------------------------------- timing
_NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def _open_session(model, threads: int):
    import onnxruntime as ort

    if isinstance(model, (bytes, bytearray, memoryview)):
        source: Any = bytes(model)
        what = f"the {len(source)} bytes given"
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"no ONNX file at {path}")
        source, what = str(path), str(path)
    elif hasattr(model, "SerializeToString"):  # an onnx.ModelProto
        source, what = model.SerializeToString(), "the ModelProto given"
    else:
        raise ModelLoadError(f"expected ONNX model bytes or a path, got {type(model).__name__}")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Fatal only: warnings about unused initialisers are noise, and a failing run's error is raised
    # to the caller (who reports it in one line) as well as logged, which printed it twice.
    opts.log_severity_level = 4
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=[PROVIDER])
    except Exception as e:  # onnxruntime raises its own pybind exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"onnxruntime cannot load {what} as an ONNX model: {first}") from None


def _random_feeds(session, batch_size: int, rng: np.random.Generator) -> tuple[dict, int]:
    """Random inputs of the declared shapes; returns them and the batch actually fed."""
    feeds, fed_batch = {}, None
    for n, inp in enumerate(session.get_inputs()):
        # Dynamic dims are str/None: the first is the batch axis, any other becomes 1.
        shape = [d if isinstance(d, int) and d >= 0 else (batch_size if k == 0 else 1)
                 for k, d in enumerate(inp.shape)]
        if n == 0 and shape:
            fed_batch = shape[0]
        dtype = _NUMPY_TYPES.get(inp.type)
        if dtype is None:
            raise MeasurementError(f"input {inp.name!r} has type {inp.type}, which the timer cannot "
                                   "fill with random data")
        size = math.prod(shape)
        if size > MAX_TENSOR_ELEMENTS:
            raise MeasurementError(f"input {inp.name!r} has shape {shape}: {size:,} elements, over the "
                                   f"limit of {MAX_TENSOR_ELEMENTS:,} that can be filled with random data")
        if np.issubdtype(dtype, np.floating):
            # Drawn in float32 directly: no float64 copy twice the size of the input.
            feeds[inp.name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
        elif dtype is np.bool_:
            feeds[inp.name] = rng.random(shape) < 0.5
        else:
            # Integer inputs are usually indices or shapes: zeros are always in range.
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds, (batch_size if fed_batch is None else fed_batch)


def check_tensor_sizes(model) -> None:
    """Refuse (MeasurementError) a model whose inferred tensors exceed MAX_TENSOR_ELEMENTS.

    ONNX shape inference only, nothing runs. Unknown dims count as 1, so this is a lower bound:
    it catches declared and statically computable blow-ups, not data-dependent ones. A model
    that cannot be read or inferred passes: onnxruntime then says what is wrong with it.
    """
    import onnx

    try:
        if isinstance(model, (bytes, bytearray, memoryview)):
            proto = onnx.load_from_string(bytes(model))
        elif isinstance(model, (str, os.PathLike)):
            proto = onnx.load(str(model), load_external_data=False)
        elif hasattr(model, "SerializeToString"):
            proto = model
        else:
            return
        graph = onnx.shape_inference.infer_shapes(proto, data_prop=True).graph
    except Exception:  # onnx raises many types; the session that follows reports the problem
        return
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                for d in vi.type.tensor_type.shape.dim]
        size = math.prod(dims)
        if size > MAX_TENSOR_ELEMENTS:
            raise MeasurementError(f"tensor {vi.name!r} of the model would have shape {dims}: {size:,} "
                                   f"elements, over the limit of {MAX_TENSOR_ELEMENTS:,} for a measurement")


def measure_onnx(model, *, threads: int = 1, warmup: int = 10, repeats: int = 30,
                 min_seconds: float = 0.0, batch_size: int = 1, seed: int = 0) -> Measurement:
    """Time ``model`` (ONNX bytes, a path or a ModelProto) on the CPU with onnxruntime.

    ``warmup`` untimed runs first (allocations, caches, lazy kernel set-up), then at least
    ``repeats`` timed runs, continuing until ``min_seconds`` of timed runs have passed. Dynamic
    input dimensions are filled with ``batch_size`` (first axis) or 1; a model with a fixed batch
    axis runs at that batch, and the platform records the batch actually fed.
    """
    if int(threads) < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if int(warmup) < 0 or min_seconds < 0:
        raise ValueError("warmup and min_seconds cannot be negative")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")

    check_tensor_sizes(model)
    session = _open_session(model, int(threads))
    feeds, fed_batch = _random_feeds(session, int(batch_size), np.random.default_rng(seed))
    run = session.run
    try:
        for _ in range(int(warmup)):
            run(None, feeds)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - started < min_seconds:
            t0 = time.perf_counter()
            run(None, feeds)
            times.append(time.perf_counter() - t0)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MeasurementError(f"the model loaded but failed to run on random inputs: {first}") from None

    ms = np.asarray(times) * 1e3
    q25, q50, q75, q90 = np.percentile(ms, [25, 50, 75, 90])
    return Measurement(
        median_ms=float(q50), mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        min_ms=float(ms.min()), p90_ms=float(q90), iqr_ms=float(q75 - q25), repeats=len(ms),
        platform=platform_info(int(threads), fed_batch),
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        samples_ms=tuple(float(x) for x in ms),
    )

