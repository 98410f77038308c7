"""Training-only network families: matrix products over many rows (ViT, MLP-Mixer).

Why these exist. The zoo's ten NNLQP families compute every matrix product as a convolution; the
only Gemm they have is the classifier, a one-row product (a vector times a matrix) whose time is
spent loading the weights. A predictor trained on them has never seen a matrix product over
hundreds of rows, whose time is spent on arithmetic like a 1x1 convolution's: it has no way to
tell the two apart. Session 23 found that this is what keeps the outside-zoo ranking (tau) under
0.8 on the Intel host: ConvNeXt, whose pointwise layers are MatMuls over channels-last feature
maps, was predicted 1.3-2.1x too slow by every fit (the fitted cost sum costs those MatMuls as
the zoo's Gemm: 2.9x too slow), while the other five outside families rank at tau 0.88
(assets/latency/README.md, "Session 23"). These two families are networks built from such
products, timed as training-only networks (``bench latency --extra-train``); they are neither
zoo families (the issue's ten, the in-domain and leave-one-family-out benchmark) nor outside-zoo
families (the test of unseen families; ConvNeXt stays unseen: no 4-D channels-last layout, no
depthwise convolution, no layer scale here).

Session 24 timed 600 of them (assets/latency/session24/extra_transformers600_s24.jsonl.gz); with
them in training, two fits rank a fresh outside-zoo draw at tau 0.850 / 0.853 (0.79 without them)
and predict ConvNeXt 1.13x instead of 1.7x (assets/latency/README.md, "Session 24").

================  ==========================================================================
vit               Vision Transformer: patchify conv (patch 8/16/32), class token or mean pool,
                  learned position embedding, pre-norm blocks of multi-head self-attention
                  (one qkv Linear, head width 32/64, Softmax) and a GELU MLP (ratio 2/3/4),
                  width 96-384, depth 2-12
mlp_mixer         MLP-Mixer: patchify conv (patch 8/16/32), pre-norm blocks of a token-mixing
                  MLP (Transpose, Linear over the tokens, hidden x0.5/1/2 of the token count)
                  and a channel-mixing MLP (ratio 2/3/4), width 128-512, depth 2-12, mean pool
================  ==========================================================================

Conventions as the outside-zoo module's (whose helpers it uses): a spec is a JSON-friendly dict
with ``family``, ``resolution`` (96..224 in steps of 32) and ``batch_size`` 1; ``spec_id`` is the
zoo's; weights are random (seed 0) and kept near unit scale; ONNX opset 17, TorchScript exporter
(LayerNormalization, GELU as Erf); a drawn variant is kept only inside the zoo's MAC and
parameter budget, its MACs counting the attention products too. Tensor shapes are Python ints
fixed at construction, so the exported graph has no Shape arithmetic. Torch is imported lazily.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import zoo
from .zoo import _pick, spec_id  # noqa: F401  (spec_id is part of this API)

FAMILIES: tuple[str, ...] = ("mlp_mixer", "vit")
RESOLUTIONS = zoo.IMAGENET_RESOLUTIONS
NUM_CLASSES = zoo.NUM_CLASSES
_MAX_TRIES = 200
_PATCHES = (8, 16, 32)


# ---------------------------------------------------------------- samplers (knobs only)
def _sample_vit(rng):
    patch, width = _pick(rng, _PATCHES), _pick(rng, (96, 128, 192, 256, 320, 384))
    head_width = _pick(rng, [h for h in (32, 64) if width % h == 0])
    return dict(patch=patch, width=width,
                depth=int(rng.integers(2, 13)), head_width=head_width, mlp_ratio=_pick(rng, (2, 3, 4)),
                class_token=bool(rng.random() < 0.5), qkv_bias=bool(rng.random() < 0.5))


def _sample_mlp_mixer(rng):
    return dict(patch=_pick(rng, _PATCHES), width=_pick(rng, (128, 192, 256, 384, 512)),
                depth=int(rng.integers(2, 13)), token_ratio=_pick(rng, (0.5, 1.0, 2.0)),
                mlp_ratio=_pick(rng, (2, 3, 4)))


_SAMPLERS: dict[str, Callable[[np.random.Generator], dict]] = {"mlp_mixer": _sample_mlp_mixer, "vit": _sample_vit}


def _check_family(family: str) -> None:
    if family not in _SAMPLERS:
        raise ValueError(f"unknown training-only family {family!r}; known: {', '.join(FAMILIES)}")


def tokens(spec: Mapping) -> int:
    """Patches per image (without a class token)."""
    return (int(spec["resolution"]) // int(spec["patch"])) ** 2


def _seq_len(spec: Mapping) -> int:
    return tokens(spec) + (1 if spec.get("class_token") else 0)


def _token_hidden(spec: Mapping) -> int:
    return max(4, int(round(tokens(spec) * float(spec["token_ratio"]))))


def sample_spec(family: str, rng: np.random.Generator) -> dict:
    """A random valid variant of ``family`` within the zoo's MAC and parameter budget;
    deterministic given the state of ``rng``."""
    _check_family(family)
    for _ in range(_MAX_TRIES):
        spec = {"family": family, "resolution": _pick(rng, RESOLUTIONS), "batch_size": 1,
                **_SAMPLERS[family](rng)}
        if zoo.MIN_MACS <= estimate_macs(spec) <= zoo.MAX_MACS and estimate_params(spec) <= zoo.MAX_PARAMS:
            return spec
    raise RuntimeError(f"no {family} variant within the zoo's MAC and parameter budget in {_MAX_TRIES} draws")


def sample_specs(n: int, seed: int, families: Sequence[str] = FAMILIES) -> list[dict]:
    """``n`` distinct specs, round robin over ``families``; prefix-stable like ``zoo.sample_specs``."""
    return zoo.draw_round_robin(n, seed, families, sample_spec, _check_family)


# ---------------------------------------------------------------- validation and description
def _validate(spec: Mapping) -> None:
    """Raise ValueError naming what is wrong with a spec, before torch sees it."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a training-only family spec is a dict of knobs, got {type(spec).__name__}")
    fam = spec.get("family")
    if fam is None:
        raise ValueError("the spec has no 'family'; draw specs with sample_spec")
    _check_family(fam)
    r, b = spec.get("resolution"), spec.get("batch_size", 1)
    if not zoo._is_int(r) or r < 32 or r % 32:
        raise ValueError(f"{fam} resolution must be a multiple of 32, at least 32, got {r!r}")
    if not zoo._is_int(b) or b < 1:
        raise ValueError(f"batch_size must be a positive integer, got {b!r}")
    missing = sorted(set(_SAMPLERS[fam](np.random.default_rng(0))) - set(spec))
    if missing:
        raise ValueError(f"the {fam} spec lacks the knob(s) {', '.join(missing)}; draw specs with sample_spec")
    for k in ("patch", "width", "depth", "mlp_ratio"):
        if not zoo._is_int(spec[k]) or spec[k] < 1:
            raise ValueError(f"{fam} knob {k!r} must be a positive integer, got {spec[k]!r}")
    if r % spec["patch"]:
        raise ValueError(f"{fam} patch {spec['patch']} does not divide the resolution {r}")
    if fam == "vit":
        hw = spec["head_width"]
        if not zoo._is_int(hw) or hw < 1 or spec["width"] % hw:
            raise ValueError(f"vit head_width must divide the width {spec['width']}, got {hw!r}")
    if fam == "mlp_mixer" and not (isinstance(spec["token_ratio"], (int, float)) and spec["token_ratio"] > 0):
        raise ValueError(f"mlp_mixer token_ratio must be a positive number, got {spec['token_ratio']!r}")


def input_shape(spec: Mapping) -> tuple[int, int, int, int]:
    _validate(spec)
    r = int(spec["resolution"])
    return (int(spec.get("batch_size", 1)), 3, r, r)


def describe(spec: Mapping) -> str:
    """One human line, e.g. 'vit @224px, patch 16, width 192 x 12 blocks, 3 heads of 64, MLP x4, class token'."""
    _validate(spec)
    fam, g = spec["family"], spec.get
    parts = [f"{fam} @{spec['resolution']}px", f"patch {g('patch')}", f"width {g('width')} x {g('depth')} blocks"]
    if fam == "vit":
        parts += [f"{g('width') // g('head_width')} heads of {g('head_width')}", f"MLP x{g('mlp_ratio')}",
                  "class token" if g("class_token") else "mean pool"]
    else:
        parts += [f"token MLP {_token_hidden(spec)} for {tokens(spec)} tokens", f"channel MLP x{g('mlp_ratio')}"]
    return ", ".join(parts)


# ---------------------------------------------------------------- building and export
def _construct(spec: Mapping):
    _validate(spec)
    return _builders()[spec["family"]](spec)


def _init_weights(module) -> None:
    """Random weights near unit scale, every tensor its own values (as ``zoo._init_weights``).

    Not the zoo's initializer: its N(0, 0.01) Linear is meant for one classifier head; over a deep
    residual stack of Linears it would shrink activations towards float denormals, whose
    arithmetic is slow and would make the timing depend on the weights. Linears get Kaiming
    fan-in instead, and may lack a bias (a ViT's qkv). Position embeddings and class tokens are
    small; all values differ (equal initializers would be merged behind Identity nodes).
    """
    import torch.nn as nn

    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            nn.init.normal_(m.bias, 0.0, 0.01)
        elif isinstance(m, nn.LayerNorm):
            nn.init.uniform_(m.weight, 0.8, 1.2)
            nn.init.normal_(m.bias, 0.0, 0.01)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            if m.bias is not None:
                nn.init.normal_(m.bias, 0.0, 0.01)
        for name in ("position", "class_token"):
            p = getattr(m, name, None)
            if isinstance(p, nn.Parameter):
                nn.init.normal_(p, 0.0, 0.02)


def build_module(spec: Mapping):
    """The spec as a torch module in eval mode, initialised as the zoo does (seed 0, the caller's
    torch RNG left as it was)."""
    return zoo.seeded_module(lambda: _construct(spec), _init_weights)


def export_onnx(spec: Mapping) -> bytes:
    """The spec as ONNX bytes with the zoo's export settings (opset 17, weights inside, TorchScript exporter)."""
    return zoo.module_onnx(build_module(spec), input_shape(spec))


def _attention_macs(spec: Mapping) -> int:
    """The two products of self-attention per block (scores and weighted sum), which no Linear
    layer carries and so ``zoo.module_cost`` does not count: 2 * n^2 * width per block."""
    if spec["family"] != "vit":
        return 0
    n = _seq_len(spec)
    return 2 * n * n * int(spec["width"]) * int(spec["depth"]) * int(spec.get("batch_size", 1))


class _Cost(zoo.SpecCost):
    def _count(self, canonical: str) -> tuple[int, int]:
        import json

        macs, params = super()._count(canonical)
        return macs + _attention_macs(json.loads(canonical)), params


_COST = _Cost(_validate, _construct, input_shape)


def estimate_macs(spec: Mapping) -> int:
    """Multiply-accumulates of the patchify conv, every Linear and the attention products."""
    return _COST.cost(spec)[0]


def estimate_params(spec: Mapping) -> int:
    return _COST.cost(spec)[1]


@functools.lru_cache(maxsize=1)
def _builders() -> dict[str, Callable[[Mapping], Any]]:
    """Family name -> builder; defined in here so that torch loads only when a network is built."""
    import torch
    import torch.nn as nn

    class PatchEmbed(nn.Module):
        """Conv with kernel = stride = patch, then (b, C, h, w) -> (b, h*w, C). The reshape takes
        Python ints: flatten() would trace into Shape-Slice-Concat arithmetic."""

        def __init__(self, spec):
            super().__init__()
            self.shape = (int(spec.get("batch_size", 1)), int(spec["width"]), tokens(spec))
            self.proj = nn.Conv2d(3, int(spec["width"]), int(spec["patch"]), int(spec["patch"]))

        def forward(self, x):
            return self.proj(x).reshape(self.shape).transpose(1, 2)

    class MLP(nn.Module):
        def __init__(self, cin, hidden):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(cin, hidden), nn.GELU(), nn.Linear(hidden, cin)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Attention(nn.Module):
        def __init__(self, batch, n, width, head_width, qkv_bias):
            super().__init__()
            self.batch, self.n, self.width = batch, n, width
            self.heads, self.head_width = width // head_width, head_width
            self.scale = head_width ** -0.5
            self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
            self.proj = nn.Linear(width, width)

        def forward(self, x):
            b = self.batch
            qkv = self.qkv(x).reshape(b, self.n, 3, self.heads, self.head_width).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
            out = (attn @ v).transpose(1, 2).reshape(b, self.n, self.width)
            return self.proj(out)

    class ViTBlock(nn.Module):
        def __init__(self, batch, n, width, head_width, mlp_ratio, qkv_bias):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(width), Attention(batch, n, width, head_width, qkv_bias)
            self.norm2, self.mlp = nn.LayerNorm(width), MLP(width, width * mlp_ratio)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self, spec):
            super().__init__()
            w, n, self.batch = int(spec["width"]), _seq_len(spec), int(spec.get("batch_size", 1))
            self.width = w
            self.embed = PatchEmbed(spec)
            self.class_token = nn.Parameter(torch.empty(1, 1, w)) if spec["class_token"] else None
            self.position = nn.Parameter(torch.empty(1, n, w))
            self.blocks = nn.Sequential(*[ViTBlock(self.batch, n, w, int(spec["head_width"]), int(spec["mlp_ratio"]),
                                                   bool(spec["qkv_bias"])) for _ in range(int(spec["depth"]))])
            self.norm, self.head = nn.LayerNorm(w), nn.Linear(w, NUM_CLASSES)

        def forward(self, x):
            x = self.embed(x)
            if self.class_token is not None:
                # Sizes as ints: expand(b, -1, -1) traces into ConstantOfShape-Equal-Where arithmetic.
                token = self.class_token if self.batch == 1 else self.class_token.expand(self.batch, 1, self.width)
                x = torch.cat([token, x], dim=1)
            x = self.norm(self.blocks(x + self.position))
            return self.head(x[:, 0] if self.class_token is not None else x.mean(dim=1))

    class MixerBlock(nn.Module):
        def __init__(self, n, width, token_hidden, mlp_ratio):
            super().__init__()
            self.norm1, self.token_mlp = nn.LayerNorm(width), MLP(n, token_hidden)
            self.norm2, self.channel_mlp = nn.LayerNorm(width), MLP(width, width * mlp_ratio)

        def forward(self, x):
            # Token mixing: the MLP runs along the tokens, so the (1, n, C) map is transposed.
            x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
            return x + self.channel_mlp(self.norm2(x))

    class Mixer(nn.Module):
        def __init__(self, spec):
            super().__init__()
            w, n = int(spec["width"]), tokens(spec)
            self.embed = PatchEmbed(spec)
            self.blocks = nn.Sequential(*[MixerBlock(n, w, _token_hidden(spec), int(spec["mlp_ratio"]))
                                          for _ in range(int(spec["depth"]))])
            self.norm, self.head = nn.LayerNorm(w), nn.Linear(w, NUM_CLASSES)

        def forward(self, x):
            return self.head(self.norm(self.blocks(self.embed(x))).mean(dim=1))

    return {"vit": ViT, "mlp_mixer": Mixer}
