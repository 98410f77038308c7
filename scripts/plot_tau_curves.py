"""Plot validation Kendall's tau against wall time (and epochs) for training runs.

    python scripts/plot_tau_curves.py RUN_DIR[=LABEL] ... --out assets/results/tau_vs_time.png [--group]

Each RUN_DIR holds the metrics.jsonl written by narformer_core.train. The figure is what the
README shows as the time-to-accuracy curve. ``--group``: runs whose labels share the text before
the first "-" share a colour and one legend entry (e.g. fp32-s0 ... fp32-s5 against bf16-s0 ...),
for comparing settings over several seeds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="run folder, optionally =label")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="NB201: validation Kendall's tau during training (2 CPU cores)")
    ap.add_argument("--group", action="store_true", help="one colour per label prefix (text before the first '-')")
    a = ap.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    group_colour: dict[str, str] = {}
    for spec in a.runs:
        path, _, label = spec.partition("=")
        rows = read(Path(path))
        label = label or Path(path).name
        t = [r["wall_s"] / 60 for r in rows]
        e = [r["epoch"] for r in rows]
        kw = {}
        if a.group:
            group = label.split("-")[0]
            if group in group_colour:
                kw = {"color": group_colour[group]}
            label = None if group in group_colour else group
        line, = axes[0].plot(t, [r["val_tau_ema"] for r in rows], label=f"{label} (EMA)" if label else None, **kw)
        if a.group:
            group_colour.setdefault(group, line.get_color())
        axes[0].plot(t, [r["val_tau"] for r in rows], color=line.get_color(), alpha=0.35, lw=0.8)
        axes[1].plot(e, [r["val_tau_ema"] for r in rows], color=line.get_color(), label=label)
    axes[0].set_xlabel("wall time (minutes)")
    axes[1].set_xlabel("epoch")
    for ax in axes:
        ax.set_ylabel("validation Kendall's tau (200 cells)")
        ax.axhline(0.849, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].text(0.01, 0.851, "paper 5%: 0.849", transform=axes[0].get_yaxis_transform(), fontsize=8, color="grey")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(a.title)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
