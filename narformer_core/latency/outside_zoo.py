"""Network families that are NOT in the latency zoo: the out-of-family test of the predictors.

The predictors are trained on the ten NNLQP families of ``latency/zoo.py``. These six families
bring operators, wiring and layouts the zoo never shows them:

================  ==========================================================================
densenet          DenseNet-BC: dense blocks whose every layer reads the Concat of all earlier
                  feature maps, pre-activation BN-ReLU-Conv (standalone BatchNormalization
                  nodes; the zoo folds all but one), transitions with 2x2 average pooling.
                  Growth 12/16/24/32, bottleneck 2x/4x, layers per block 2-6, 4-12, 4-24, 2-16
                  (reference 6-12-24-16), stem 3x3 or 7x7
shufflenet_v2     channel split (Slice), concat and channel shuffle (Reshape-Transpose-Reshape),
                  width x0.5/1/1.5/2 (the paper's channel tables), units per stage 2-6, 4-10,
                  2-6 (reference 4-8-4), depthwise kernel 3/5/7 per stage
resnext           ResNet-50-style bottlenecks (1x1, grouped 3x3, 1x1 at 4x expansion);
                  cardinality 1 (ResNet-50 itself) or 8/16/32/64 at 2/4/8 channels per group,
                  width x0.25/0.5/0.75/1, blocks per stage n-1..n+1 of 3-4-6-3, stem 3/5/7
convnext          ConvNeXt: 4x4/4 patchify stem, depthwise kxk (5/7), LayerNorm in channels-last
                  layout (Transpose, LayerNormalization), pointwise Linear (MatMul) with GELU
                  (Erf), layer scale, mean-pool head; width x0.25/0.375/0.5/0.75 of 96-192-
                  384-768, blocks 1-3, 1-3, 2-9, 1-3 (reference 3-3-9-3), MLP ratio 2/3/4
regnet            RegNetX / RegNetY (with SE): stage widths and depths from the paper's quantised
                  linear rule (depth 10-25, w0 16-96, wa 8-64, wm 2.0-3.0, kept when it gives 4
                  stages), group width 8/16/24/32/48, bottleneck ratio 1
inception_v3      Inception-v3 with its valid-padding stem, 35x35 A blocks (1-3), a grid
                  reduction, 17x17 C blocks (1-4) with factorised 1xn / nx1 convs (n = 5 or 7),
                  a second reduction and 8x8 E blocks (1-2) whose 1x3 / 3x1 branches are
                  concatenated; width x0.25/0.375/0.5/0.75; 128 px and up
================  ==========================================================================

Specs, building and export follow the zoo's conventions (and use its helpers): a spec is a
JSON-friendly dict of knobs with ``family``, ``resolution`` (96..224 in steps of 32; from 128
for Inception-v3) and ``batch_size`` 1; ``spec_id`` is the zoo's; weights are random (seed 0,
Kaiming fan-in) with every BatchNorm calibrated on one random batch; the ONNX export is opset 17
with each Conv-BN pair folded; a drawn variant is kept only inside the zoo's MAC and parameter budget
(:data:`zoo.MIN_MACS`..:data:`zoo.MAX_MACS`, :data:`zoo.MAX_PARAMS`), so the latencies
(about 2-200 ms on one thread here) sit in the range the predictors were trained on: the test
is about new families, not about extrapolating in size.

:func:`measure_spec` times a network exactly as ``latency.dataset.measure_spec`` times a zoo
network (``measure_onnx`` plus the thread CPU time, same options, same record fields), and
:func:`build_outside_set` appends records to a gzip JSON-lines file in the zoo data set's format
(resumable), so ``latency.dataset.load_dataset`` reads it.

Torch is imported lazily, as in the zoo.
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import zoo
from .zoo import _make_divisible, _pick, spec_id  # noqa: F401  (spec_id is part of this API)

FAMILIES: tuple[str, ...] = ("convnext", "densenet", "inception_v3", "regnet", "resnext",
                             "shufflenet_v2")
RESOLUTIONS = zoo.IMAGENET_RESOLUTIONS
NUM_CLASSES = zoo.NUM_CLASSES
_MAX_TRIES = 200

# Inception-v3's stem has three unpadded 3x3 convs and its reductions are unpadded: at 96 px the
# last grid is 1x1, where BatchNorm cannot be calibrated on one image (and at 299 px, the
# reference, it is 8x8). From 128 px it is at least 2x2. Every other family works from 64 px.
_MIN_RESOLUTION = {"inception_v3": 128}

# ShuffleNetV2 channels per stage and of the last conv, by width (the paper's table 5).
_SHUFFLE_CHANNELS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024),
                     1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048)}
# Inception-v3 reference widths: the A blocks' pool projection, the C blocks' 7x7-branch width.
_INCEPTION_A_POOL = (32, 64, 64)
_INCEPTION_C7 = (128, 160, 160, 192)


# ---------------------------------------------------------------- samplers (knobs only)
def _sample_densenet(rng):
    return dict(growth=_pick(rng, (12, 16, 24, 32)), bn_size=_pick(rng, (2, 4)),
                depths=[int(rng.integers(lo, hi + 1)) for lo, hi in ((2, 6), (4, 12), (4, 24), (2, 16))],
                stem_kernel=_pick(rng, (3, 7)))


def _sample_shufflenet_v2(rng):
    return dict(width=_pick(rng, (0.5, 1.0, 1.5, 2.0)),
                depths=[int(rng.integers(lo, hi + 1)) for lo, hi in ((2, 6), (4, 10), (2, 6))],
                kernels=[_pick(rng, (3, 5, 7)) for _ in range(3)])


def _sample_resnext(rng):
    groups = _pick(rng, (1, 8, 16, 32, 64))
    # Cardinality 1 is ResNet-50 (64 channels per group in the first stage); ResNeXt keeps the
    # groups narrow (32x4d, 64x4d, ...).
    group_width = 64 if groups == 1 else _pick(rng, (2, 4, 8))
    return dict(width=_pick(rng, (0.25, 0.5, 0.75, 1.0)), groups=groups, group_width=group_width,
                depths=[int(rng.integers(max(1, n - 1), n + 2)) for n in (3, 4, 6, 3)],
                stem_kernel=_pick(rng, (3, 5, 7)))


def _sample_convnext(rng):
    return dict(width=_pick(rng, (0.25, 0.375, 0.5, 0.75)),
                depths=[int(rng.integers(lo, hi + 1)) for lo, hi in ((1, 3), (1, 3), (2, 9), (1, 3))],
                kernel=_pick(rng, (5, 7)), mlp_ratio=_pick(rng, (2, 3, 4)))


def _sample_regnet(rng):
    # The paper's design space, redrawn until the width rule gives 4 stages (as its models have).
    for _ in range(_MAX_TRIES):
        knobs = dict(depth=int(rng.integers(10, 26)), w0=int(rng.integers(2, 13)) * 8,
                     wa=round(float(rng.uniform(8.0, 64.0)), 2), wm=round(float(rng.uniform(2.0, 3.0)), 2),
                     group_width=_pick(rng, (8, 16, 24, 32, 48)), se=bool(rng.random() < 0.5))
        if len(regnet_stages(knobs)) == 4:
            return knobs
    raise RuntimeError("no 4-stage RegNet in the design space after many draws")


def _sample_inception_v3(rng):
    return dict(width=_pick(rng, (0.25, 0.375, 0.5, 0.75)), n_a=int(rng.integers(1, 4)),
                n_c=int(rng.integers(1, 5)), n_e=int(rng.integers(1, 3)), factor_kernel=_pick(rng, (5, 7)))


_SAMPLERS: dict[str, Callable[[np.random.Generator], dict]] = {
    "convnext": _sample_convnext, "densenet": _sample_densenet, "inception_v3": _sample_inception_v3,
    "regnet": _sample_regnet, "resnext": _sample_resnext, "shufflenet_v2": _sample_shufflenet_v2,
}


def regnet_stages(knobs: Mapping) -> list[tuple[int, int, int]]:
    """(width, depth, group width) per stage from RegNet's quantised linear rule.

    u_j = w0 + wa * j for each of the ``depth`` blocks, snapped to w0 * wm^round(log_wm(u_j / w0))
    and to a multiple of 8; runs of equal width are the stages. The group width is capped at the
    stage width and the width rounded to a multiple of it, as in the paper.
    """
    d, w0, wa, wm = int(knobs["depth"]), float(knobs["w0"]), float(knobs["wa"]), float(knobs["wm"])
    if d < 1 or w0 < 8 or wa <= 0 or wm <= 1:
        raise ValueError(f"RegNet needs depth >= 1, w0 >= 8, wa > 0, wm > 1; got {d}, {w0}, {wa}, {wm}")
    u = w0 + wa * np.arange(d)
    w = w0 * np.power(wm, np.round(np.log(u / w0) / np.log(wm)))
    w = (np.round(w / 8) * 8).astype(int)
    stages: list[list[int]] = []
    for wi in w.tolist():
        if stages and stages[-1][0] == wi:
            stages[-1][1] += 1
        else:
            stages.append([wi, 1])
    out = []
    for wi, di in stages:
        g = min(int(knobs["group_width"]), wi)
        out.append((max(g, int(round(wi / g)) * g), di, g))
    return out


def _check_family(family: str) -> None:
    if family not in _SAMPLERS:
        if family in zoo.FAMILIES:
            raise ValueError(f"{family!r} is a zoo family; the outside set has only: {', '.join(FAMILIES)}")
        raise ValueError(f"unknown outside-zoo family {family!r}; known: {', '.join(FAMILIES)}")


def sample_spec(family: str, rng: np.random.Generator) -> dict:
    """A random valid variant of ``family`` within the zoo's MAC and parameter budget;
    deterministic given the state of ``rng``."""
    _check_family(family)
    low = _MIN_RESOLUTION.get(family, 64)
    resolutions = [r for r in RESOLUTIONS if r >= low]
    for _ in range(_MAX_TRIES):
        spec = {"family": family, "resolution": _pick(rng, resolutions), "batch_size": 1,
                **_SAMPLERS[family](rng)}
        if zoo.MIN_MACS <= estimate_macs(spec) <= zoo.MAX_MACS and estimate_params(spec) <= zoo.MAX_PARAMS:
            return spec
    raise RuntimeError(f"no {family} variant within the zoo's MAC and parameter budget in "
                       f"{_MAX_TRIES} draws")


def sample_specs(n: int, seed: int, families: Sequence[str] = FAMILIES) -> list[dict]:
    """``n`` distinct specs, round robin over ``families``; a shorter list is a prefix of a longer
    one with the same seed and families (as ``zoo.sample_specs``)."""
    return zoo.draw_round_robin(n, seed, families, sample_spec, _check_family)


# ---------------------------------------------------------------- validation and description
def _validate(spec: Mapping) -> None:
    """Raise ValueError naming what is wrong with a spec, before torch sees it."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"an outside-zoo spec is a dict of knobs, got {type(spec).__name__}")
    fam = spec.get("family")
    if fam is None:
        raise ValueError("the spec has no 'family'; draw specs with sample_spec")
    _check_family(fam)
    r, b = spec.get("resolution"), spec.get("batch_size", 1)
    low = _MIN_RESOLUTION.get(fam, 64)
    if not zoo._is_int(r) or r < low or r % 32:
        raise ValueError(f"{fam} resolution must be a multiple of 32 and at least {low}, got {r!r}")
    if not zoo._is_int(b) or b < 1:
        raise ValueError(f"batch_size must be a positive integer, got {b!r}")
    reference = _SAMPLERS[fam](np.random.default_rng(0))
    missing = sorted(set(reference) - set(spec))
    if missing:
        raise ValueError(f"the {fam} spec lacks the knob(s) {', '.join(missing)}; draw specs with sample_spec")
    for k, v in reference.items():
        if isinstance(v, list) and (not isinstance(spec[k], (list, tuple)) or len(spec[k]) != len(v)):
            raise ValueError(f"{fam} knob {k!r} must list one value per stage ({len(v)}), got {spec[k]!r}")
        if isinstance(v, list) and not all(zoo._is_int(x) and x >= 1 for x in spec[k]):
            raise ValueError(f"{fam} knob {k!r} must hold positive integers, got {spec[k]!r}")
    if fam == "shufflenet_v2" and spec["width"] not in _SHUFFLE_CHANNELS:
        raise ValueError(f"shufflenet_v2 width must be one of {sorted(_SHUFFLE_CHANNELS)}, got {spec['width']!r}")
    if fam == "resnext" and (not zoo._is_int(spec["groups"]) or spec["groups"] < 1):
        raise ValueError(f"resnext groups must be a positive integer, got {spec['groups']!r}")
    if fam == "regnet":
        regnet_stages(spec)


def input_shape(spec: Mapping) -> tuple[int, int, int, int]:
    _validate(spec)
    r = int(spec["resolution"])
    return (int(spec.get("batch_size", 1)), 3, r, r)


def describe(spec: Mapping) -> str:
    """One human line, e.g. 'densenet @160px, growth 24, bottleneck 4x, layers 3-8-17-5, stem k=7'."""
    _validate(spec)
    fam, g = spec["family"], spec.get
    parts = [f"{fam} @{spec['resolution']}px"]
    dash = lambda v: "-".join(map(str, v))  # noqa: E731
    if fam == "densenet":
        parts += [f"growth {g('growth')}", f"bottleneck {g('bn_size')}x", f"layers {dash(g('depths'))}",
                  f"stem k={g('stem_kernel')}"]
    elif fam == "shufflenet_v2":
        parts += [f"width x{g('width')}", f"units {dash(g('depths'))}", f"k={zoo._compact(g('kernels'))}"]
    elif fam == "resnext":
        card = "ResNet-50 bottleneck" if g("groups") == 1 else f"{g('groups')}x{g('group_width')}d"
        parts += [f"width x{g('width')}", card, f"blocks {dash(g('depths'))}", f"stem k={g('stem_kernel')}"]
    elif fam == "convnext":
        parts += [f"width x{g('width')}", f"blocks {dash(g('depths'))}", f"k={g('kernel')}",
                  f"MLP x{g('mlp_ratio')}"]
    elif fam == "regnet":
        st = regnet_stages(spec)
        parts += ["RegNetY (SE)" if g("se") else "RegNetX", f"widths {dash(s[0] for s in st)}",
                  f"blocks {dash(s[1] for s in st)}", f"group width {g('group_width')}"]
    elif fam == "inception_v3":
        parts += [f"width x{g('width')}", f"blocks A{g('n_a')} C{g('n_c')} E{g('n_e')}",
                  f"factorised 1x{g('factor_kernel')}"]
    return ", ".join(parts)


# ---------------------------------------------------------------- building and export
def _construct(spec: Mapping):
    _validate(spec)
    return _builders()[spec["family"]](spec)


def _init_extra(module) -> None:
    """What zoo._init_weights leaves alone: LayerNorm and ConvNeXt's layer scale.

    Near-unit, all different (equal initializers would be merged behind Identity nodes); the
    layer scale is small, as trained ConvNeXts have it, so the residual stream stays near unit scale.
    """
    import torch.nn as nn

    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.uniform_(m.weight, 0.8, 1.2)
            nn.init.normal_(m.bias, 0.0, 0.01)
        scale = getattr(m, "layer_scale", None)
        if isinstance(scale, nn.Parameter):
            nn.init.uniform_(scale, 0.05, 0.15)


def build_module(spec: Mapping):
    """The spec as a torch module in eval mode, initialised as the zoo does (seed 0, the caller's
    torch RNG left as it was)."""
    def initialise(module):
        zoo._init_weights(module)
        _init_extra(module)
        zoo._calibrate_batchnorm(module, input_shape(spec))

    return zoo.seeded_module(lambda: _construct(spec), initialise)


def export_onnx(spec: Mapping) -> bytes:
    """The spec as ONNX bytes with the zoo's export settings (opset 17, weights inside, Conv-BN
    folded, TorchScript exporter)."""
    return zoo.module_onnx(build_module(spec), input_shape(spec))


def estimate_macs(spec: Mapping) -> int:
    """Multiply-accumulates of convolutions and linear layers, counted on the meta device."""
    return _COST.cost(spec)[0]


def estimate_params(spec: Mapping) -> int:
    return _COST.cost(spec)[1]


_COST = zoo.SpecCost(_validate, _construct, input_shape)


@functools.lru_cache(maxsize=1)
def _builders() -> dict[str, Callable[[Mapping], Any]]:
    """Family name -> builder; defined in here so that torch loads only when a network is built.

    Every Conv that a BatchNorm follows sits right before it in one Sequential (the zoo's fold
    looks for exactly that), and no Conv is registered right before a BN it does not feed.
    """
    import torch
    import torch.nn as nn

    def pair(k):
        return (k, k) if isinstance(k, int) else tuple(k)

    def conv_bn(cin, cout, k, stride=1, groups=1, act=True, padding=None):
        k = pair(k)
        pad = padding if padding is not None else (k[0] // 2, k[1] // 2)
        layers = [nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class PoolLinear(nn.Module):
        def __init__(self, cin, classes=NUM_CLASSES):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(x), 1))

    # --- DenseNet-BC
    class DenseLayer(nn.Module):
        def __init__(self, cin, growth, bn_size):
            super().__init__()
            mid = bn_size * growth
            self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, mid, 1, bias=False),
                                      nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, growth, 3, 1, 1, bias=False))

        def forward(self, features):
            x = features[0] if len(features) == 1 else torch.cat(features, 1)
            return self.body(x)

    class DenseBlock(nn.Module):
        def __init__(self, cin, n, growth, bn_size):
            super().__init__()
            self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, bn_size) for i in range(n))

        def forward(self, x):
            # Each layer reads all earlier maps: one Concat with a growing number of inputs.
            features = [x]
            for layer in self.layers:
                features.append(layer(features))
            return torch.cat(features, 1)

    def densenet(spec):
        g, bn = spec["growth"], spec["bn_size"]
        c = 2 * g
        k = spec["stem_kernel"]
        layers = [conv_bn(3, c, k, 2), nn.MaxPool2d(3, 2, 1)]
        for i, n in enumerate(spec["depths"]):
            layers.append(DenseBlock(c, n, g, bn))
            c += n * g
            if i < len(spec["depths"]) - 1:
                cout = c // 2
                layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, cout, 1, bias=False),
                                            nn.AvgPool2d(2, 2)))
                c = cout
        return nn.Sequential(*layers, nn.BatchNorm2d(c), nn.ReLU(), PoolLinear(c))

    # --- ShuffleNetV2
    def channel_shuffle(x, groups=2):
        n, c, h, w = x.shape
        return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, cin, cout, stride, k):
            super().__init__()
            half = cout // 2
            if stride == 1:
                if cin != cout:
                    raise ValueError(f"a stride-1 ShuffleNetV2 unit keeps its width ({cin} != {cout})")
                self.left = None
                right_in = self.keep = cin // 2
            else:
                self.left = nn.Sequential(conv_bn(cin, cin, k, stride, groups=cin, act=False),
                                          conv_bn(cin, half, 1))
                right_in = cin
            self.right = nn.Sequential(conv_bn(right_in, half, 1),
                                       conv_bn(half, half, k, stride, groups=half, act=False),
                                       conv_bn(half, half, 1))

        def forward(self, x):
            if self.left is None:
                # Split sizes as Python ints: chunk() traces into Shape-Gather-Div-Slice arithmetic.
                a, b = torch.split(x, [self.keep, x.shape[1] - self.keep], dim=1)
                out = torch.cat([a, self.right(b)], 1)
            else:
                out = torch.cat([self.left(x), self.right(x)], 1)
            return channel_shuffle(out)

    def shufflenet_v2(spec):
        *stage_c, last = _SHUFFLE_CHANNELS[spec["width"]]
        layers, c = [conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)], 24
        for cout, n, k in zip(stage_c, spec["depths"], spec["kernels"]):
            for j in range(n):
                layers.append(ShuffleUnit(c, cout, 2 if j == 0 else 1, k))
                c = cout
        return nn.Sequential(*layers, conv_bn(c, last, 1), PoolLinear(last))

    # --- ResNeXt / ResNet-50 bottleneck
    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, cout, stride, groups, se=None):
            super().__init__()
            layers = [conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups=groups)]
            if se:
                layers.append(SqueezeExcite(mid, se))
            layers.append(conv_bn(mid, cout, 1, act=False))
            self.body = nn.Sequential(*layers)
            self.down = (conv_bn(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout
                         else nn.Identity())
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.down(x))

    def resnext(spec):
        w, groups = spec["width"], spec["groups"]
        c = _make_divisible(64 * w)
        layers = [conv_bn(3, c, spec["stem_kernel"], 2), nn.MaxPool2d(3, 2, 1)]
        for i, n in enumerate(spec["depths"]):
            per_group = max(1, int(round(spec["group_width"] * (2 ** i) * w)))
            mid, cout = groups * per_group, _make_divisible(256 * (2 ** i) * w)
            for j in range(n):
                layers.append(Bottleneck(c, mid, cout, 2 if (i > 0 and j == 0) else 1, groups))
                c = cout
        return nn.Sequential(*layers, PoolLinear(c))

    # --- RegNetX / RegNetY
    class SqueezeExcite(nn.Module):
        def __init__(self, channels, reduced):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.reduce = nn.Conv2d(channels, reduced, 1)
            self.act = nn.ReLU()
            self.expand = nn.Conv2d(reduced, channels, 1)
            self.gate = nn.Sigmoid()

        def forward(self, x):
            return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))

    def regnet(spec):
        layers, c = [conv_bn(3, 32, 3, 2)], 32
        for width, depth, gw in regnet_stages(spec):
            for j in range(depth):
                # RegNetY's SE squeezes to a quarter of the block's input width.
                se = max(1, c // 4) if spec["se"] else None
                layers.append(Bottleneck(c, width, width, 2 if j == 0 else 1, width // gw, se))
                c = width
        return nn.Sequential(*layers, PoolLinear(c))

    # --- ConvNeXt
    class ChannelsFirstLayerNorm(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.ln = nn.LayerNorm(c, eps=1e-6)

        def forward(self, x):
            return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class ConvNeXtBlock(nn.Module):
        def __init__(self, c, k, ratio):
            super().__init__()
            self.dw = nn.Conv2d(c, c, k, 1, k // 2, groups=c)
            self.norm = nn.LayerNorm(c, eps=1e-6)
            self.pw1 = nn.Linear(c, ratio * c)
            self.act = nn.GELU()
            self.pw2 = nn.Linear(ratio * c, c)
            self.layer_scale = nn.Parameter(torch.empty(c))

        def forward(self, x):
            y = self.dw(x).permute(0, 2, 3, 1)          # (B, H, W, C)
            y = self.pw2(self.act(self.pw1(self.norm(y)))) * self.layer_scale
            return x + y.permute(0, 3, 1, 2)

    class MeanPoolHead(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm = nn.LayerNorm(c, eps=1e-6)
            self.fc = nn.Linear(c, NUM_CLASSES)

        def forward(self, x):
            return self.fc(self.norm(x.mean((2, 3))))

    def convnext(spec):
        dims = [_make_divisible(b * spec["width"]) for b in (96, 192, 384, 768)]
        layers = [nn.Conv2d(3, dims[0], 4, 4), ChannelsFirstLayerNorm(dims[0])]
        for i, (d, n) in enumerate(zip(dims, spec["depths"])):
            if i > 0:
                layers += [ChannelsFirstLayerNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], d, 2, 2)]
            layers += [ConvNeXtBlock(d, spec["kernel"], spec["mlp_ratio"]) for _ in range(n)]
        return nn.Sequential(*layers, MeanPoolHead(dims[-1]))

    # --- Inception-v3
    def cbr(cin, cout, k, stride=1, padding=0):
        return conv_bn(cin, cout, k, stride, padding=padding)

    class Branches(nn.Module):
        """Concat of parallel branches (each a module)."""

        def __init__(self, *branches):
            super().__init__()
            self.branches = nn.ModuleList(branches)

        def forward(self, x):
            return torch.cat([b(x) for b in self.branches], 1)

    class SplitTail(nn.Module):
        """Inception-v3 E block's branch: a trunk, then 1x3 and 3x1 side by side, concatenated."""

        def __init__(self, trunk, cin, cout):
            super().__init__()
            self.trunk = trunk
            self.a = cbr(cin, cout, (1, 3), padding=(0, 1))
            self.b = cbr(cin, cout, (3, 1), padding=(1, 0))

        def forward(self, x):
            t = self.trunk(x)
            return torch.cat([self.a(t), self.b(t)], 1)

    def inception_v3(spec):
        s = lambda v: _make_divisible(v * spec["width"])  # noqa: E731
        n = spec["factor_kernel"]
        p = n // 2
        c = s(192)
        layers = [cbr(3, s(32), 3, 2), cbr(s(32), s(32), 3), cbr(s(32), s(64), 3, padding=1),
                  nn.MaxPool2d(3, 2), cbr(s(64), s(80), 1), cbr(s(80), c, 3), nn.MaxPool2d(3, 2)]
        for i in range(spec["n_a"]):
            pool = s(_INCEPTION_A_POOL[i])
            layers.append(Branches(
                cbr(c, s(64), 1),
                nn.Sequential(cbr(c, s(48), 1), cbr(s(48), s(64), 5, padding=2)),
                nn.Sequential(cbr(c, s(64), 1), cbr(s(64), s(96), 3, padding=1), cbr(s(96), s(96), 3, padding=1)),
                nn.Sequential(nn.AvgPool2d(3, 1, 1), cbr(c, pool, 1))))
            c = s(64) + s(64) + s(96) + pool
        layers.append(Branches(
            cbr(c, s(384), 3, 2),
            nn.Sequential(cbr(c, s(64), 1), cbr(s(64), s(96), 3, padding=1), cbr(s(96), s(96), 3, 2)),
            nn.MaxPool2d(3, 2)))
        c = s(384) + s(96) + c
        for i in range(spec["n_c"]):
            c7 = s(_INCEPTION_C7[i])
            layers.append(Branches(
                cbr(c, s(192), 1),
                nn.Sequential(cbr(c, c7, 1), cbr(c7, c7, (1, n), padding=(0, p)),
                              cbr(c7, s(192), (n, 1), padding=(p, 0))),
                nn.Sequential(cbr(c, c7, 1), cbr(c7, c7, (n, 1), padding=(p, 0)),
                              cbr(c7, c7, (1, n), padding=(0, p)), cbr(c7, c7, (n, 1), padding=(p, 0)),
                              cbr(c7, s(192), (1, n), padding=(0, p))),
                nn.Sequential(nn.AvgPool2d(3, 1, 1), cbr(c, s(192), 1))))
            c = 4 * s(192)
        layers.append(Branches(
            nn.Sequential(cbr(c, s(192), 1), cbr(s(192), s(320), 3, 2)),
            nn.Sequential(cbr(c, s(192), 1), cbr(s(192), s(192), (1, n), padding=(0, p)),
                          cbr(s(192), s(192), (n, 1), padding=(p, 0)), cbr(s(192), s(192), 3, 2)),
            nn.MaxPool2d(3, 2)))
        c = s(320) + s(192) + c
        for _ in range(spec["n_e"]):
            layers.append(Branches(
                cbr(c, s(320), 1),
                SplitTail(cbr(c, s(384), 1), s(384), s(384)),
                SplitTail(nn.Sequential(cbr(c, s(448), 1), cbr(s(448), s(384), 3, padding=1)), s(384), s(384)),
                nn.Sequential(nn.AvgPool2d(3, 1, 1), cbr(c, s(192), 1))))
            c = s(320) + 4 * s(384) + s(192)
        return nn.Sequential(*layers, PoolLinear(c))

    return {"convnext": convnext, "densenet": densenet, "inception_v3": inception_v3, "regnet": regnet,
            "resnext": resnext, "shufflenet_v2": shufflenet_v2}


# ---------------------------------------------------------------- measuring (the zoo data set's way)
def measure_spec(spec: Mapping, measure: Mapping | None = None) -> tuple[dict, Any]:
    """Export, import and time one outside-zoo spec -> (record, graph): the zoo data set's
    ``dataset.measure_spec`` (same steps, options and record fields) with this module's networks."""
    import sys

    from . import dataset as ds

    return ds.measure_spec(spec, measure, networks=sys.modules[__name__])


def build_outside_set(out: str | os.PathLike, per_family: int, *, seed: int = 0,
                      families: Sequence[str] = FAMILIES, measure: Mapping | None = None,
                      progress: bool = True, max_failures: int = 10,
                      allow_mixed_platform: bool = False) -> dict:
    """Measure ``per_family`` networks of each family into ``out`` (gzip JSON lines, the zoo data
    set's format; networks already in the file are skipped, so a second call resumes)."""
    from . import dataset as ds

    if per_family < 0:
        raise ValueError(f"per_family cannot be negative ({per_family})")
    out = Path(out)
    families = tuple(families)
    existing = ds._open_for_append(out)
    ds._check_platform(existing, measure, out, allow_mixed_platform)
    present = {r["spec_id"] for r in existing}
    todo = [s for s in sample_specs(per_family * len(families), seed, families) if spec_id(s) not in present]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc=f"measure -> {out.name}", unit="net", dynamic_ncols=True)
    t0, added, failures = time.perf_counter(), 0, []
    try:
        for spec in todo:
            try:
                record, _ = measure_spec(spec, measure)
            except (ValueError, RuntimeError, MemoryError) as e:
                failures.append({"spec_id": spec_id(spec), "family": spec["family"],
                                 "error": f"{type(e).__name__}: {str(e)[:300]}"})
                if bar:
                    bar.write(f"skipped {spec_id(spec)} ({spec['family']}): {failures[-1]['error']}")
                if len(failures) >= max_failures:
                    raise ds.DatasetError(f"{len(failures)} networks failed; stopping. Last: "
                                          f"{failures[-1]['error']}") from None
                continue
            ds._append(out, record)
            added += 1
            if bar:
                bar.set_postfix_str(f"{record['family'][:13]} {record['median_ms']:.2f} ms "
                                    f"(cpu {record.get('cpu_median_ms', float('nan')):.2f}), "
                                    f"load {record['load_avg']}")
                bar.update(1)
    finally:
        if bar:
            bar.close()
    return {"path": str(out), "added": added, "total": len(existing) + added,
            "seconds": round(time.perf_counter() - t0, 1), "failures": failures}
