"""How fast are whole-network tokens? ResNet-50 (plain torch) -> ONNX graph -> 480-value tokens.

    python scripts/bench_network_tokenizer.py              # ResNet-50 import + tokenize timings
    python scripts/bench_network_tokenizer.py --features   # also ResNet-18 / VGG-16 static features

The target is tokenize_network (tokens + static features) under 100 ms for ResNet-50. The
--features run exports VGG-16 (550 MB of weights: ~15 s and ~4 GB of memory).
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from narformer_core.features import static_features  # noqa: E402
from narformer_core.network_tokenizer import tokenize_network  # noqa: E402
from narformer_core.onnx_import import from_torch, load_onnx  # noqa: E402


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.short(x))


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.short(x))


def resnet(blocks=(3, 4, 6, 3), bottleneck=True) -> nn.Module:
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, n in enumerate(blocks):
        width = 64 * 2 ** stage
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            if bottleneck:
                layers.append(Bottleneck(cin, width, stride))
                cin = width * 4
            else:
                layers.append(Basic(cin, width, stride))
                cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


def vgg16() -> nn.Module:
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    layers += [nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(512 * 49, 4096), nn.ReLU(inplace=True),
               nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
               nn.Linear(4096, 1000)]
    return nn.Sequential(*layers)


def report_features(name: str, module: nn.Module) -> None:
    t = time.perf_counter()
    g = from_torch(module.eval(), torch.randn(1, 3, 224, 224))
    dt = time.perf_counter() - t
    f = static_features(g)
    torch_params = sum(p.numel() for p in module.parameters())
    print(f"{name}: {f['flops'] / 1e9:.3f} GMACs, {f['params'] / 1e6:.3f} M params "
          f"(torch: {torch_params / 1e6:.3f} M), memory access {f['memory_access'] / 1e6:.1f} M elements, "
          f"{len(g)} nodes; export + import {dt:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--features", action="store_true", help="also ResNet-18 and VGG-16 figures")
    args = ap.parse_args()
    torch.manual_seed(0)

    t = time.perf_counter()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(resnet().eval(), (torch.randn(1, 3, 224, 224),), buf, dynamo=False)
    t_export = time.perf_counter() - t
    t = time.perf_counter()
    g = load_onnx(buf.getvalue())
    t_import = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        tokens = tokenize_network(g)
        times.append(time.perf_counter() - t)
    f = static_features(g)
    print(f"ResNet-50: {len(g)} nodes -> tokens {tokens.nodes.shape}; torch export {t_export:.2f} s, "
          f"load_onnx ({len(buf.getvalue()) / 1e6:.0f} MB) {t_import:.2f} s")
    print(f"tokenize_network (tokens + static features): median {statistics.median(times) * 1e3:.2f} ms, "
          f"min {min(times) * 1e3:.2f} ms over {args.repeats} runs (target < 100 ms)")
    print(f"ResNet-50 features: {f['flops'] / 1e9:.3f} GMACs, {f['params'] / 1e6:.3f} M params")
    if args.features:
        report_features("ResNet-18", resnet((2, 2, 2, 2), bottleneck=False))
        report_features("VGG-16", vgg16())


if __name__ == "__main__":
    main()
