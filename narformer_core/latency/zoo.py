"""A model zoo of whole networks for the latency data set (NNLQP / nn-Meter style variants).

Ten families. ``sample_spec`` draws a random but valid variant of one family as a small,
JSON-serialisable dict of knobs (widths, depths, kernel sizes, expansion ratios, SE, input
resolution); ``build_module`` turns a spec into a plain-torch module and ``export_onnx`` into
ONNX bytes, both deterministic per spec. The measuring and ONNX-to-graph steps live elsewhere
(``latency/measure.py``, ``onnx_import.py``); this module only makes networks.

Torch is imported lazily, so importing the zoo (to list ``FAMILIES``, say) costs nothing;
drawing a spec does need torch: a candidate is kept only when its multiply-accumulates fit
:data:`MIN_MACS`..:data:`MAX_MACS` and its weights :data:`MAX_PARAMS` (counted on the meta device,
no weights allocated; about 60 ms of CPU per candidate).

Knob ranges, per family ("per stage" lists follow the family's reference layout; stage depths
are the reference depth n varied to n-1..n+1, at least 1):

================  ==========================================================================
alexnet           width x0.25/0.375/0.5/0.75/1, conv1 kernel 7/9/11 (stride 4), conv2 kernel
                  3/5, 2..4 final 3x3 convs, classifier hidden 512/1024/2048
vgg16             width x0.125/0.25/0.375/0.5, 3x3 convs per stage 1-3,1-3,2-4,2-4,2-4,
                  classifier hidden 256/512/1024 (VGG has only 3x3 convs)
resnet18          width x0.25/0.5/0.75/1, basic blocks per stage 1..3, stem kernel 3/5/7,
                  block kernel 3/5 per stage
squeezenet        stem 3x3/64 (v1.1) or 7x7/96 (v1.0), base_e 64/96/128/160, incr_e 64/96/128
                  every 2 fires, squeeze ratio 1/8, 1/4, 1/2, share of 3x3 expands 1/4..3/4,
                  fires per stage 2-3, 2-3, 2-4
googlenet         width x0.25/0.5/0.75/1, inception blocks per stage 1-2, 2-5, 1-2, stem
                  kernel 5/7, the "5x5" branch kernel 3/5
mobilenet_v2      width x0.35/0.5/0.75/1/1.4, per stage: depth, kernel 3/5/7, expansion 3/4/6
                  (first stage 1); no SE, as in MobileNetV2
mobilenet_v3      large or small layout, width x0.5/0.75/1/1.25, per stage: depth, kernel
                  3/5/7, expansion 3/4/6 (first stage 1), SE (hard-sigmoid) on/off at p=0.5
mnasnet           width x0.5/0.75/1/1.3, per stage: depth, kernel 3/5/7, expansion 3/6, SE
                  on/off at p=0.4 (all off = MnasNet-B1, some on = A1-like)
efficientnet_b0   width x0.5/0.75/1/1.1/1.25, per stage: depth, kernel 3/5/7, expansion 3/4/6
                  (first stage 1), SE on/off at p=0.75; SiLU
nasbench201       the NB201 macro network with one random cell (all cells alike, as in NB201),
                  C 8/16/24/32, N 1..5 cells per stage, 10 classes
================  ==========================================================================

Input resolution: 96..224 in steps of 32 for the ImageNet families, 32..128 in steps of 32 for
nasbench201 (a CIFAR network; 32 px alone is mostly under :data:`MIN_MACS`). Batch size 1.

Weights: random (seed 0), and every BatchNorm calibrated on one random batch, so activations
stay near unit scale as in a trained network (see :func:`_calibrate_batchnorm`).

Measured by ``scripts/bench_zoo.py`` (seed 0, 2 specs per family) on this project's shared
2-core machine under a load average of about 6: export_onnx took 0.3-0.5 s (alexnet),
0.5-0.6 (nasbench201), 0.6-0.7 (squeezenet), 1.0-1.8 (vgg16), 0.8-1.5 (googlenet), 1.6-1.7
(resnet18), 1.4-2.6 (mnasnet), 1.4-1.9 (mobilenet_v2), 1.6-2.7 (mobilenet_v3), 2.0 (efficientnet_b0):
the cost follows the node count (17 to 270) more than the MACs. One-thread onnxruntime latency
was 6 to 160 ms over those 20 networks.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

FAMILIES: tuple[str, ...] = (
    "alexnet", "efficientnet_b0", "googlenet", "mnasnet", "mobilenet_v2", "mobilenet_v3",
    "nasbench201", "resnet18", "squeezenet", "vgg16",
)

IMAGENET_RESOLUTIONS = (96, 128, 160, 192, 224)
NB201_RESOLUTIONS = (32, 64, 96, 128)
NUM_CLASSES = 1000
NB201_CLASSES = 10

# A drawn variant is kept only between these multiply-accumulate counts. On one thread of this
# project's CPU onnxruntime ran the zoo at 10-15 GMAC/s (depthwise families) to 20-40 GMAC/s
# (dense convs): 3 GMAC keeps the slowest variants near 100-150 ms, 20 M the fastest near 1 ms
# (scripts/bench_zoo.py prints measured figures).
MAX_MACS = 3.0e9
MIN_MACS = 2.0e7
# Export time and ONNX size grow with the weights (a 33 M-parameter ResNet variant made 133 MB in
# 4 s); 20 M parameters (80 MB) still admits AlexNet- and VGG-like classifiers.
MAX_PARAMS = 2.0e7
_MAX_TRIES = 200


def _pick(rng: np.random.Generator, options: Sequence) -> Any:
    """One element of ``options`` as a plain Python value (JSON-friendly, unlike numpy scalars)."""
    return options[int(rng.integers(len(options)))]


def _depths(rng: np.random.Generator, base: Sequence[int]) -> list[int]:
    """Blocks per stage: the reference depth n varied to n-1..n+1 (at least 1)."""
    return [int(rng.integers(max(1, n - 1), n + 2)) for n in base]


def _flags(rng: np.random.Generator, n: int, p: float) -> list[bool]:
    return [bool(rng.random() < p) for _ in range(n)]


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8 (never down by more than 10%), as MobileNets do."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


# ---------------------------------------------------------------- reference layouts
# (out channels, depth, stride) per stage; kernels and expansions are knobs, not layout.
_MBV2_STAGES = ((16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))
_MNAS_STAGES = ((24, 3, 2), (40, 3, 2), (80, 3, 2), (96, 2, 1), (192, 4, 2), (320, 1, 1))
_EFFB0_STAGES = ((16, 1, 1), (24, 2, 2), (40, 2, 2), (80, 3, 2), (112, 3, 1), (192, 4, 2), (320, 1, 1))
# MobileNetV3 stages: (out channels, depth, stride, activation); the last conv is 6x the last
# stage's channels (960 and 576 in the reference), ``head`` the hidden width of the classifier.
_MBV3_LAYOUTS = {
    "large": dict(stem=16, stages=((16, 1, 1, "relu"), (24, 2, 2, "relu"), (40, 3, 2, "relu"),
                                   (80, 4, 2, "hswish"), (112, 2, 1, "hswish"), (160, 3, 2, "hswish")),
                  head=1280),
    "small": dict(stem=16, stages=((16, 1, 2, "relu"), (24, 2, 2, "relu"), (40, 3, 2, "hswish"),
                                   (48, 2, 1, "hswish"), (96, 3, 2, "hswish")),
                  head=1024),
}
# GoogLeNet inception blocks: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj).
_INCEPTION = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
    ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
     (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)),
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),
)


# ---------------------------------------------------------------- samplers (knobs only)
def _sample_alexnet(rng):
    return dict(width=_pick(rng, (0.25, 0.375, 0.5, 0.75, 1.0)), conv1_kernel=_pick(rng, (7, 9, 11)),
                conv2_kernel=_pick(rng, (3, 5)), n_conv3=_pick(rng, (2, 3, 4)),
                hidden=_pick(rng, (512, 1024, 2048)))


def _sample_vgg16(rng):
    return dict(width=_pick(rng, (0.125, 0.25, 0.375, 0.5)), depths=_depths(rng, (2, 2, 3, 3, 3)),
                hidden=_pick(rng, (256, 512, 1024)))


def _sample_resnet18(rng):
    return dict(width=_pick(rng, (0.25, 0.5, 0.75, 1.0)), depths=[_pick(rng, (1, 2, 3)) for _ in range(4)],
                stem_kernel=_pick(rng, (3, 5, 7)), kernels=[_pick(rng, (3, 5)) for _ in range(4)])


def _sample_squeezenet(rng):
    stem_kernel, stem_channels = _pick(rng, ((3, 64), (7, 96)))
    return dict(stem_kernel=stem_kernel, stem_channels=stem_channels,
                base_e=_pick(rng, (64, 96, 128, 160)), incr_e=_pick(rng, (64, 96, 128)),
                squeeze_ratio=_pick(rng, (0.125, 0.25, 0.5)), pct3x3=_pick(rng, (0.25, 0.5, 0.75)),
                depths=[_pick(rng, (2, 3)), _pick(rng, (2, 3)), _pick(rng, (2, 3, 4))])


def _sample_googlenet(rng):
    return dict(width=_pick(rng, (0.25, 0.5, 0.75, 1.0)),
                depths=[_pick(rng, (1, 2)), _pick(rng, (2, 3, 4, 5)), _pick(rng, (1, 2))],
                stem_kernel=_pick(rng, (5, 7)), branch_kernel=_pick(rng, (3, 5)))


def _sample_mobilenet_v2(rng):
    n = len(_MBV2_STAGES)
    return dict(width=_pick(rng, (0.35, 0.5, 0.75, 1.0, 1.4)),
                depths=_depths(rng, [d for _, d, _ in _MBV2_STAGES]),
                kernels=[_pick(rng, (3, 5, 7)) for _ in range(n)],
                expansions=[1] + [_pick(rng, (3, 4, 6)) for _ in range(n - 1)])


def _sample_mobilenet_v3(rng):
    layout = _pick(rng, ("large", "small"))
    stages = _MBV3_LAYOUTS[layout]["stages"]
    n = len(stages)
    return dict(layout=layout, width=_pick(rng, (0.5, 0.75, 1.0, 1.25)),
                depths=_depths(rng, [s[1] for s in stages]),
                kernels=[_pick(rng, (3, 5, 7)) for _ in range(n)],
                expansions=[1] + [_pick(rng, (3, 4, 6)) for _ in range(n - 1)],
                se=_flags(rng, n, 0.5))


def _sample_mnasnet(rng):
    n = len(_MNAS_STAGES)
    return dict(width=_pick(rng, (0.5, 0.75, 1.0, 1.3)), depths=_depths(rng, [d for _, d, _ in _MNAS_STAGES]),
                kernels=[_pick(rng, (3, 5, 7)) for _ in range(n)],
                expansions=[_pick(rng, (3, 6)) for _ in range(n)], se=_flags(rng, n, 0.4))


def _sample_efficientnet_b0(rng):
    n = len(_EFFB0_STAGES)
    return dict(width=_pick(rng, (0.5, 0.75, 1.0, 1.1, 1.25)),
                depths=_depths(rng, [d for _, d, _ in _EFFB0_STAGES]),
                kernels=[_pick(rng, (3, 5, 7)) for _ in range(n)],
                expansions=[1] + [_pick(rng, (3, 4, 6)) for _ in range(n - 1)],
                se=_flags(rng, n, 0.75))


def _sample_nasbench201(rng):
    from ..spaces import nb201
    return dict(arch=nb201.to_arch_str(nb201.sample(rng)), channels=_pick(rng, (8, 16, 24, 32)),
                cells_per_stage=int(rng.integers(1, 6)))


_SAMPLERS: dict[str, Callable[[np.random.Generator], dict]] = {
    "alexnet": _sample_alexnet, "efficientnet_b0": _sample_efficientnet_b0,
    "googlenet": _sample_googlenet, "mnasnet": _sample_mnasnet,
    "mobilenet_v2": _sample_mobilenet_v2, "mobilenet_v3": _sample_mobilenet_v3,
    "nasbench201": _sample_nasbench201, "resnet18": _sample_resnet18,
    "squeezenet": _sample_squeezenet, "vgg16": _sample_vgg16,
}


def _check_family(family: str) -> None:
    if family not in _SAMPLERS:
        raise ValueError(f"unknown model family {family!r}; the zoo has: {', '.join(FAMILIES)}")


def sample_spec(family: str, rng: np.random.Generator) -> dict:
    """A random valid variant of ``family``; deterministic given the state of ``rng``.

    Candidates outside :data:`MIN_MACS`..:data:`MAX_MACS` or over :data:`MAX_PARAMS` are drawn
    again (with the same rng), so the kept variants are the family's design space cut to the
    latency range (and export cost) the data set wants.
    """
    _check_family(family)
    resolutions = NB201_RESOLUTIONS if family == "nasbench201" else IMAGENET_RESOLUTIONS
    for _ in range(_MAX_TRIES):
        spec = {"family": family, "resolution": _pick(rng, resolutions), "batch_size": 1,
                **_SAMPLERS[family](rng)}
        if MIN_MACS <= estimate_macs(spec) <= MAX_MACS and estimate_params(spec) <= MAX_PARAMS:
            return spec
    raise RuntimeError(f"no {family} variant within {MIN_MACS:.3g}..{MAX_MACS:.3g} MACs and "
                       f"{MAX_PARAMS:.3g} parameters in {_MAX_TRIES} draws; the family's knob "
                       "ranges do not fit the budget")


def spec_id(spec: Mapping) -> str:
    """A stable 12-hex-digit id: SHA-256 of the spec's canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps(dict(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def sample_specs(n: int, seed: int, families: Sequence[str] = FAMILIES) -> list[dict]:
    """``n`` specs, round robin over ``families``, no two with the same :func:`spec_id`.

    One generator drives the whole list, so a shorter list is a prefix of a longer one with the
    same seed and families.
    """
    return draw_round_robin(n, seed, families, sample_spec, _check_family)


def draw_round_robin(n: int, seed: int, families: Sequence[str], sample: Callable[[str, Any], dict],
                     check_family: Callable[[str], None]) -> list[dict]:
    """The draw behind every family module's ``sample_specs`` (the zoo's, the outside-zoo and the
    training-only families'): ``sample(family, rng)`` in turn over ``families``, one seeded
    generator; a spec whose :func:`spec_id` is already in the list is drawn again."""
    families = tuple(families)
    if not families:
        raise ValueError("sample_specs needs at least one family")
    for f in families:
        check_family(f)
    if n < 0:
        raise ValueError(f"cannot draw a negative number of specs ({n})")
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out: list[dict] = []
    for i in range(n):
        family = families[i % len(families)]
        for _ in range(_MAX_TRIES):
            spec = sample(family, rng)
            sid = spec_id(spec)
            if sid not in seen:
                break
        else:
            raise ValueError(f"could not draw a new {family} spec after {_MAX_TRIES} tries: "
                             f"{n} specs is more than the family's design space gives")
        seen.add(sid)
        out.append(spec)
    return out


def input_shape(spec: Mapping) -> tuple[int, int, int, int]:
    """(batch, 3, H, W) of the network's one input."""
    _validate(spec)
    r = int(spec["resolution"])
    return (int(spec.get("batch_size", 1)), 3, r, r)


def _get(spec: Mapping, key: str) -> Any:
    try:
        return spec[key]
    except (KeyError, TypeError):
        fam = spec.get("family", "?") if isinstance(spec, Mapping) else "?"
        raise ValueError(f"the {fam} spec has no {key!r} knob; draw specs with sample_spec") from None


def _compact(values: Sequence) -> str:
    """'5' when every stage agrees, else '3/5/7/...'."""
    vals = list(values)
    return str(vals[0]) if len(set(vals)) == 1 else "/".join(str(v) for v in vals)


def describe(spec: Mapping) -> str:
    """One human line, e.g. 'mobilenet_v2 @160px, width x0.75, depth 1-2-3-4-3-3-1, ...'."""
    _validate(spec)
    fam = spec["family"]
    parts = [f"{fam} @{spec['resolution']}px"]
    g = spec.get
    if "width" in spec:
        parts.append(f"width x{g('width')}")
    if fam == "alexnet":
        parts += [f"conv1 {g('conv1_kernel')}x{g('conv1_kernel')}", f"conv2 k={g('conv2_kernel')}",
                  f"{g('n_conv3')} 3x3 convs", f"hidden {g('hidden')}"]
    elif fam == "vgg16":
        parts += [f"depth {'-'.join(map(str, g('depths')))}", f"hidden {g('hidden')}"]
    elif fam == "resnet18":
        parts += [f"blocks {'-'.join(map(str, g('depths')))}", f"stem k={g('stem_kernel')}",
                  f"k={_compact(g('kernels'))}"]
    elif fam == "squeezenet":
        parts += [f"stem {g('stem_kernel')}x{g('stem_kernel')}/{g('stem_channels')}",
                  f"base_e {g('base_e')} +{g('incr_e')}", f"squeeze {g('squeeze_ratio')}",
                  f"3x3 share {g('pct3x3')}", f"fires {'-'.join(map(str, g('depths')))}"]
    elif fam == "googlenet":
        parts += [f"inceptions {'-'.join(map(str, g('depths')))}", f"stem k={g('stem_kernel')}",
                  f"branch k={g('branch_kernel')}"]
    elif fam == "nasbench201":
        parts += [f"C={g('channels')}", f"N={g('cells_per_stage')}", f"cell {g('arch')}"]
    else:
        if fam == "mobilenet_v3":
            parts.insert(1, g("layout"))
        parts += [f"depth {'-'.join(map(str, g('depths')))}", f"expansion {_compact(g('expansions'))}",
                  f"k={_compact(g('kernels'))}"]
        if "se" in spec:
            se = g("se")
            parts.append("SE " + ("all" if all(se) else "none" if not any(se) else
                                  "".join("1" if s else "0" for s in se)))
    return ", ".join(parts)


# ---------------------------------------------------------------- building (torch from here on)
def build_module(spec: Mapping):
    """The spec as a torch module in eval mode; weights from ``torch.manual_seed(0)``.

    The global torch RNG of the caller is left as it was.
    """
    def initialise(module):
        _init_weights(module)
        _calibrate_batchnorm(module, input_shape(spec))

    return seeded_module(lambda: _construct(spec), initialise)


def seeded_module(construct: Callable[[], Any], initialise: Callable[[Any], None]):
    """``construct()`` built on the meta device, given storage, then ``initialise(module)`` under
    ``torch.manual_seed(0)`` on one thread, in eval mode; the caller's torch RNG is left as it was.
    Every family module (the zoo's, the outside-zoo and the training-only ones) builds this way.

    The meta device skips torch's default initialisation (which ``initialise`` replaces anyway):
    it was a tenth of the export time.
    """
    import torch

    from ..onnx_import import TORCH_GLOBALS_LOCK

    with torch.device("meta"):
        module = construct()
    module = module.to_empty(device="cpu")
    # The seed is torch's global RNG: one seeded build at a time in the process.
    with TORCH_GLOBALS_LOCK, torch.random.fork_rng(devices=[]), _one_thread(torch):
        torch.manual_seed(0)
        initialise(module)
    return module.eval()


@contextlib.contextmanager
def _one_thread(torch):
    """Run torch on one intra-op thread. On a shared 2-core machine two threads wait on each other:
    building and exporting were about 3x slower with two (measured); the results are the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _calibrate_batchnorm(module, shape) -> None:
    """Set every BatchNorm's running statistics from one forward pass of a random input.

    Untrained BN in eval mode is the identity, and without it activations grew or shrank
    exponentially with depth (5e4 after a deep MnasNet, 1e-34 behind saturated SE gates): float
    denormals slow CPUs down, so the timing would depend on the weights. Calibrated, every BN
    output is near unit scale, as in a trained network. Families without BN skip the pass.
    """
    import torch
    import torch.nn as nn

    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    for m in bns:
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    module.train()
    with torch.no_grad():
        module(torch.randn(shape))
    for m in bns:
        m.momentum = 0.1
    module.eval()


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _validate(spec: Mapping) -> None:
    """Raise ValueError naming what is wrong with a spec, before torch sees it."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a zoo spec is a dict of knobs, got {type(spec).__name__}")
    fam = _get(spec, "family")
    _check_family(fam)
    r, b = _get(spec, "resolution"), spec.get("batch_size", 1)
    low = 32 if fam == "nasbench201" else 64
    if not _is_int(r) or r < low or r % 32:
        raise ValueError(f"{fam} resolution must be a multiple of 32 and at least {low}, got {r!r}")
    if not _is_int(b) or b < 1:
        raise ValueError(f"batch_size must be a positive integer, got {b!r}")
    if fam == "mobilenet_v3" and spec.get("layout") not in _MBV3_LAYOUTS:
        raise ValueError(f"mobilenet_v3 layout must be one of {sorted(_MBV3_LAYOUTS)}, "
                         f"got {spec.get('layout')!r}")
    # The sampler's own output names the knobs a family needs and how long its stage lists are.
    reference = _SAMPLERS[fam](np.random.default_rng(0))
    if fam == "mobilenet_v3":
        n = len(_MBV3_LAYOUTS[spec["layout"]]["stages"])
        reference = {k: ([0] * n if isinstance(v, list) else v) for k, v in reference.items()}
    missing = sorted(set(reference) - set(spec))
    if missing:
        raise ValueError(f"the {fam} spec lacks the knob(s) {', '.join(missing)}; draw specs with "
                         "sample_spec")
    for k, v in reference.items():
        if isinstance(v, list) and (not isinstance(spec[k], (list, tuple)) or len(spec[k]) != len(v)):
            raise ValueError(f"{fam} knob {k!r} must list one value per stage ({len(v)}), "
                             f"got {spec[k]!r}")


def _construct(spec: Mapping):
    _validate(spec)
    return _builders()[spec["family"]](spec)


def _init_weights(module) -> None:
    """Random weights that keep activations near unit scale and give every tensor its own values.

    Kaiming fan-in (not torchvision's fan-out, which shrinks a depthwise conv's output by the
    square root of its channels) keeps deep stacks away from float denormals, which would make
    the timing depend on the weights. No two initializers are equal: the exporter merges equal
    ones (BN-folded zero biases, say) and adds an Identity node per merge, noise in the graph.
    """
    import torch.nn as nn

    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.normal_(m.bias, 0.0, 0.01)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            nn.init.uniform_(m.weight, 0.8, 1.2)
            nn.init.normal_(m.bias, 0.0, 0.01)
            nn.init.normal_(m.running_mean, 0.0, 0.01)
            nn.init.uniform_(m.running_var, 0.8, 1.2)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.normal_(m.bias, 0.0, 0.01)


def estimate_macs(spec: Mapping) -> int:
    """Multiply-accumulates of one inference (convolutions and linear layers), counted by a
    forward pass on the meta device: shapes only, no weights allocated."""
    return _COST.cost(spec)[0]


def estimate_params(spec: Mapping) -> int:
    """Number of weights (BatchNorm included, before it is folded into the convs)."""
    return _COST.cost(spec)[1]


class SpecCost:
    """(MACs, parameters) of a family's specs: validated, built on the meta device and counted
    by :func:`module_cost`, cached per canonical spec (sampling asks for the same spec twice)."""

    def __init__(self, validate: Callable[[Mapping], None], construct: Callable[[Mapping], Any],
                 shape: Callable[[Mapping], tuple]):
        self.validate, self.construct, self.shape = validate, construct, shape
        self._cached = functools.lru_cache(maxsize=4096)(self._count)

    def cost(self, spec: Mapping) -> tuple[int, int]:
        self.validate(spec)
        return self._cached(json.dumps(dict(spec), sort_keys=True))

    def _count(self, canonical: str) -> tuple[int, int]:
        import torch

        spec = json.loads(canonical)
        with torch.device("meta"):
            module = self.construct(spec).eval()
        return module_cost(module, self.shape(spec))


_COST = SpecCost(_validate, _construct, input_shape)


def module_cost(module, shape) -> tuple[int, int]:
    """(MACs of convolutions and linear layers, parameters) of a module built on the meta device,
    for one input of ``shape``. Also used by the families outside the zoo."""
    import torch
    import torch.nn as nn

    params = sum(p.numel() for p in module.parameters())
    # Shape-preserving layers cost nothing here but their meta kernels are slow Python
    # decompositions (batch norm was half the time), so they are swapped out before the pass.
    passthrough = (nn.BatchNorm2d, nn.LayerNorm, nn.ReLU, nn.ReLU6, nn.GELU, nn.Hardswish, nn.SiLU,
                   nn.Sigmoid, nn.Hardsigmoid, nn.Dropout)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, passthrough):
                setattr(parent, name, nn.Identity())
    total = 0

    def count(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total += out.numel() * (m.in_channels // m.groups) * k
        else:
            total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(count) for m in module.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(torch.empty(shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return int(total), int(params)


def _fuse_conv_bn(module):
    """Fold each BatchNorm into the conv right before it (same Sequential), as the exporter would.

    Done here rather than by the exporter's peephole pass: that pass alone took a third of the
    export time, and a fused module also traces fewer nodes. The ONNX graph is the same (Conv
    with bias, no BatchNormalization).
    """
    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for parent in list(module.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
    return module


def export_onnx(spec: Mapping) -> bytes:
    """The spec as ONNX bytes (opset 17, weights inside, BN folded), built in memory."""
    return module_onnx(build_module(spec), input_shape(spec))


def module_onnx(module, shape) -> bytes:
    """A built module as the data set's ONNX (opset 17, weights inside, Conv-BN folded,
    TorchScript exporter). Also used by the families outside the zoo."""
    import torch

    from ..onnx_import import TORCH_GLOBALS_LOCK

    module = _fuse_conv_bn(module)
    example = torch.zeros(shape)
    buf = io.BytesIO()
    # Tracing runs one real forward pass, on one thread (see _one_thread); one export at a time
    # in the process (TORCH_GLOBALS_LOCK: the exporter's state is global).
    with TORCH_GLOBALS_LOCK, _one_thread(torch), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated; the data set pins it on purpose.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=17,
                          do_constant_folding=True, input_names=["input"], output_names=["output"])
    return buf.getvalue()


# ---------------------------------------------------------------- the ten families in plain torch
@functools.lru_cache(maxsize=1)
def _builders() -> dict[str, Callable[[Mapping], Any]]:
    """Family name -> builder. The modules are defined in here so that torch is imported only
    when a network is built, never when the zoo is imported."""
    import torch
    import torch.nn as nn

    from ..spaces import nb201

    acts = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, "silu": nn.SiLU}

    def conv_bn(cin, cout, k, stride=1, groups=1, act="relu"):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(acts[act]())
        return nn.Sequential(*layers)

    class PoolLinear(nn.Module):
        """Global average pool, flatten, linear: exports as GlobalAveragePool-Flatten-Gemm."""

        def __init__(self, cin, classes):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(x), 1))

    class SqueezeExcite(nn.Module):
        def __init__(self, channels, reduced, inner, gate):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.reduce = nn.Conv2d(channels, reduced, 1)
            self.act = acts[inner]()
            self.expand = nn.Conv2d(reduced, channels, 1)
            self.gate = nn.Hardsigmoid() if gate == "hsigmoid" else nn.Sigmoid()

        def forward(self, x):
            return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))

    class InvertedResidual(nn.Module):
        """MBConv: [1x1 expand] - kxk depthwise - [SE] - 1x1 project, residual when shapes allow.
        ``se`` is None or (reduced channels, inner activation, gate)."""

        def __init__(self, cin, cout, k, stride, hidden, act, se=None):
            super().__init__()
            layers = [conv_bn(cin, hidden, 1, act=act)] if hidden != cin else []
            layers.append(conv_bn(hidden, hidden, k, stride, groups=hidden, act=act))
            if se:
                layers.append(SqueezeExcite(hidden, *se))
            layers.append(conv_bn(hidden, cout, 1, act=None))
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.block(x)
            return x + y if self.residual else y

    def mb_stages(spec, layout, cin, w, act_of, se_of):
        """Stack MBConv stages; layout rows start with (out channels, depth, stride)."""
        blocks = []
        for i, row in enumerate(layout):
            cout = _make_divisible(row[0] * w)
            for j in range(spec["depths"][i]):
                hidden = cin * int(spec["expansions"][i])
                blocks.append(InvertedResidual(cin, cout, spec["kernels"][i], row[2] if j == 0 else 1,
                                               hidden, act_of(i), se_of(i, cin, hidden)))
                cin = cout
        return blocks, cin

    def mobilenet_v2(spec):
        w = spec["width"]
        stem = _make_divisible(32 * w)
        blocks, c = mb_stages(spec, _MBV2_STAGES, stem, w, lambda i: "relu6", lambda i, cin, h: None)
        last = _make_divisible(1280 * max(1.0, w))
        return nn.Sequential(conv_bn(3, stem, 3, 2, act="relu6"), *blocks,
                             conv_bn(c, last, 1, act="relu6"), PoolLinear(last, NUM_CLASSES))

    def mobilenet_v3(spec):
        w, lay = spec["width"], _MBV3_LAYOUTS[spec["layout"]]
        stem = _make_divisible(lay["stem"] * w)
        blocks, c = mb_stages(
            spec, lay["stages"], stem, w, lambda i: lay["stages"][i][3],
            lambda i, cin, h: (_make_divisible(h // 4), "relu", "hsigmoid") if spec["se"][i] else None)
        last, head = 6 * c, _make_divisible(lay["head"] * w)
        return nn.Sequential(conv_bn(3, stem, 3, 2, act="hswish"), *blocks, conv_bn(c, last, 1, act="hswish"),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(last, head), nn.Hardswish(),
                             nn.Linear(head, NUM_CLASSES))

    def mnasnet(spec):
        w = spec["width"]
        stem, first = _make_divisible(32 * w), _make_divisible(16 * w)
        blocks, c = mb_stages(
            spec, _MNAS_STAGES, first, w, lambda i: "relu",
            lambda i, cin, h: (_make_divisible(h // 4), "relu", "sigmoid") if spec["se"][i] else None)
        # MnasNet's first block is a separable conv without expansion or residual.
        sep = [conv_bn(stem, stem, 3, groups=stem), conv_bn(stem, first, 1, act=None)]
        return nn.Sequential(conv_bn(3, stem, 3, 2), *sep, *blocks, conv_bn(c, 1280, 1),
                             PoolLinear(1280, NUM_CLASSES))

    def efficientnet_b0(spec):
        w = spec["width"]
        stem = _make_divisible(32 * w)
        blocks, c = mb_stages(
            spec, _EFFB0_STAGES, stem, w, lambda i: "silu",
            lambda i, cin, h: (max(1, cin // 4), "silu", "sigmoid") if spec["se"][i] else None)
        return nn.Sequential(conv_bn(3, stem, 3, 2, act="silu"), *blocks, conv_bn(c, 4 * c, 1, act="silu"),
                             PoolLinear(4 * c, NUM_CLASSES))

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, k, stride):
            super().__init__()
            self.body = nn.Sequential(conv_bn(cin, cout, k, stride), conv_bn(cout, cout, k, act=None))
            self.down = (conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout
                         else nn.Identity())
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.down(x))

    def resnet18(spec):
        w = spec["width"]
        c = _make_divisible(64 * w)
        layers = [conv_bn(3, c, spec["stem_kernel"], 2), nn.MaxPool2d(3, 2, 1)]
        for i, base in enumerate((64, 128, 256, 512)):
            cout = _make_divisible(base * w)
            for j in range(spec["depths"][i]):
                layers.append(BasicBlock(c, cout, spec["kernels"][i], 2 if (i > 0 and j == 0) else 1))
                c = cout
        return nn.Sequential(*layers, PoolLinear(c, NUM_CLASSES))

    def vgg16(spec):
        # No adaptive 7x7 pool before the classifier: the flatten reads (r/32)^2 positions, which
        # is what torchvision's VGG computes at 224 px and stays exportable at every resolution.
        w, layers, c = spec["width"], [], 3
        for i, base in enumerate((64, 128, 256, 512, 512)):
            cout = _make_divisible(base * w)
            for _ in range(spec["depths"][i]):
                layers += [nn.Conv2d(c, cout, 3, 1, 1), nn.ReLU()]
                c = cout
            layers.append(nn.MaxPool2d(2, 2))
        side, h = spec["resolution"] // 32, spec["hidden"]
        return nn.Sequential(*layers, nn.Flatten(1), nn.Linear(c * side * side, h), nn.ReLU(),
                             nn.Dropout(), nn.Linear(h, h), nn.ReLU(), nn.Dropout(),
                             nn.Linear(h, NUM_CLASSES))

    def alexnet(spec):
        w, k1, k2 = spec["width"], spec["conv1_kernel"], spec["conv2_kernel"]
        c1, c2, c3, c4 = (_make_divisible(b * w) for b in (64, 192, 384, 256))
        layers = [nn.Conv2d(3, c1, k1, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
                  nn.Conv2d(c1, c2, k2, 1, k2 // 2), nn.ReLU(), nn.MaxPool2d(3, 2)]
        c = c2
        for i in range(spec["n_conv3"]):
            cout = c3 if i == 0 else c4
            layers += [nn.Conv2d(c, cout, 3, 1, 1), nn.ReLU()]
            c = cout
        layers.append(nn.MaxPool2d(3, 2))
        side = (spec["resolution"] + 4 - k1) // 4 + 1
        for _ in range(3):
            side = (side - 3) // 2 + 1
        h = spec["hidden"]
        return nn.Sequential(*layers, nn.Flatten(1), nn.Dropout(), nn.Linear(c * side * side, h), nn.ReLU(),
                             nn.Dropout(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, NUM_CLASSES))

    class Fire(nn.Module):
        def __init__(self, cin, squeeze, e1, e3):
            super().__init__()
            self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
            self.e1 = nn.Sequential(nn.Conv2d(squeeze, e1, 1), nn.ReLU())
            self.e3 = nn.Sequential(nn.Conv2d(squeeze, e3, 3, 1, 1), nn.ReLU())

        def forward(self, x):
            s = self.squeeze(x)
            return torch.cat([self.e1(s), self.e3(s)], 1)

    def squeezenet(spec):
        # The SqueezeNet paper's own design-space knobs: base_e, incr_e, pct3x3, SR, freq = 2.
        c = spec["stem_channels"]
        layers = [nn.Conv2d(3, c, spec["stem_kernel"], 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True)]
        k = 0
        for i, d in enumerate(spec["depths"]):
            if i > 0:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            for _ in range(d):
                e = spec["base_e"] + spec["incr_e"] * (k // 2)
                e3 = int(e * spec["pct3x3"])
                layers.append(Fire(c, max(8, int(spec["squeeze_ratio"] * e)), e - e3, e3))
                c, k = e, k + 1
        return nn.Sequential(*layers, nn.Dropout(), nn.Conv2d(c, NUM_CLASSES, 1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(1))

    class Inception(nn.Module):
        def __init__(self, cin, ch1, ch3r, ch3, ch5r, ch5, proj, k5):
            super().__init__()
            self.b1 = conv_bn(cin, ch1, 1)
            self.b2 = nn.Sequential(conv_bn(cin, ch3r, 1), conv_bn(ch3r, ch3, 3))
            self.b3 = nn.Sequential(conv_bn(cin, ch5r, 1), conv_bn(ch5r, ch5, k5))
            self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(cin, proj, 1))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

    def googlenet(spec):
        w = spec["width"]
        sc = lambda v: _make_divisible(v * w)  # noqa: E731
        c = sc(192)
        layers = [conv_bn(3, sc(64), spec["stem_kernel"], 2), nn.MaxPool2d(3, 2, ceil_mode=True),
                  conv_bn(sc(64), sc(64), 1), conv_bn(sc(64), c, 3), nn.MaxPool2d(3, 2, ceil_mode=True)]
        for i, d in enumerate(spec["depths"]):
            if i == 1:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            elif i == 2:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            for row in _INCEPTION[i][:d]:
                ch = [sc(v) for v in row]
                layers.append(Inception(c, *ch, spec["branch_kernel"]))
                c = ch[0] + ch[2] + ch[4] + ch[5]
        return nn.Sequential(*layers, PoolLinear(c, NUM_CLASSES))

    # --- NAS-Bench-201 macro network
    class ReLUConvBN(nn.Sequential):
        def __init__(self, cin, cout, k, stride):
            super().__init__(nn.ReLU(), nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                             nn.BatchNorm2d(cout))

    class Zero(nn.Module):
        def forward(self, x):
            return x.mul(0.0)

    def nb201_op(name, c):
        if name == "none":
            return Zero()
        if name == "skip_connect":
            return nn.Identity()
        if name == "avg_pool_3x3":
            return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        k = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}[name]
        return ReLUConvBN(c, c, k, 1)

    class Cell(nn.Module):
        def __init__(self, ops, c):
            super().__init__()
            self.edges = nn.ModuleList(nb201_op(o, c) for o in ops)

        def forward(self, x):
            maps = [x]
            for target in (1, 2, 3):
                terms = [self.edges[k](maps[s]) for k, (s, t) in enumerate(nb201.EDGES) if t == target]
                # Start from the first term: sum() would add a constant 0 node to the graph.
                acc = terms[0]
                for t in terms[1:]:
                    acc = acc + t
                maps.append(acc)
            return maps[3]

    class ResBlock(nn.Module):
        """NB201's reduction block: two ReLU-Conv-BN (the first strided) plus pool-conv shortcut."""

        def __init__(self, cin, cout):
            super().__init__()
            self.a = ReLUConvBN(cin, cout, 3, 2)
            self.b = ReLUConvBN(cout, cout, 3, 1)
            self.down = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

        def forward(self, x):
            return self.b(self.a(x)) + self.down(x)

    def nasbench201(spec):
        ops, c, n = nb201.parse(spec["arch"]), spec["channels"], spec["cells_per_stage"]
        layers = [nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)]
        for stage in range(3):
            if stage > 0:
                layers.append(ResBlock(c, 2 * c))
                c *= 2
            layers += [Cell(ops, c) for _ in range(n)]
        return nn.Sequential(*layers, nn.BatchNorm2d(c), nn.ReLU(), PoolLinear(c, NB201_CLASSES))

    return {"alexnet": alexnet, "efficientnet_b0": efficientnet_b0, "googlenet": googlenet,
            "mnasnet": mnasnet, "mobilenet_v2": mobilenet_v2, "mobilenet_v3": mobilenet_v3,
            "nasbench201": nasbench201, "resnet18": resnet18, "squeezenet": squeezenet, "vgg16": vgg16}
