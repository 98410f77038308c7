"""Plotly figure builders shared by the app's pages and the notebooks.

Every function takes plain data (a graph, arrays, DataFrames) and returns a ``go.Figure``; none
reads files or knows about Streamlit, so the same figure appears in a page and in a notebook.
"""
from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from .graph import ArchGraph

# Cell ops get fixed colours so a cell reads the same on every page.
OP_COLORS = {
    "input": "#4c78a8", "output": "#4c78a8",
    "nor_conv_3x3": "#e45756", "nor_conv_1x1": "#f58518", "avg_pool_3x3": "#54a24b",
    "skip_connect": "#b279a2", "none": "#bab0ac",
    "conv3x3-bn-relu": "#e45756", "conv1x1-bn-relu": "#f58518", "maxpool3x3": "#54a24b",
    "Conv": "#e45756", "Gemm": "#f58518", "MatMul": "#f58518", "Relu": "#72b7b2",
    "BatchNormalization": "#eeca3b", "Add": "#b279a2", "Concat": "#9d755d",
    "MaxPool": "#54a24b", "AveragePool": "#54a24b", "GlobalAveragePool": "#54a24b",
}
_PALETTE = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6",
            "#9d755d", "#bab0ac")
SHORT = {"nor_conv_3x3": "conv3x3", "nor_conv_1x1": "conv1x1", "avg_pool_3x3": "avgpool",
         "skip_connect": "skip", "conv3x3-bn-relu": "conv3x3", "conv1x1-bn-relu": "conv1x1",
         "maxpool3x3": "maxpool"}
RUN_COLORS = _PALETTE


def op_color(op: str) -> str:
    if op in OP_COLORS:
        return OP_COLORS[op]
    h = int(hashlib.md5(op.encode()).hexdigest()[:6], 16)
    return _PALETTE[h % len(_PALETTE)]


# ------------------------------------------------------------------ graphs
WRAP_DEPTHS = 32      # a graph deeper than WRAP_AFTER is folded into rows of this many depths
WRAP_AFTER = 48


def dag_layout(graph: ArchGraph, wrap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """x = longest-path depth from the inputs, y = spread within a depth (centred on 0).

    A whole network is mostly a chain: a ConvNeXt is 140 depths deep and one node wide, so drawn
    on one line it fills the page's width with dots a few pixels apart. Deeper than
    ``WRAP_AFTER`` (or when ``wrap`` is given), the depths are folded into rows of ``wrap``
    columns that run alternately left to right and right to left, like a snake: depth d and
    d + 1 stay neighbours (side by side, or one above the other at a row's end), so the chain
    still reads as one path. Rows go downwards, each as tall as its widest depth.
    """
    n = len(graph)
    depth = np.zeros(n, dtype=int)
    for i, node in enumerate(graph.nodes):          # nodes are in topological order
        if node.inputs:
            depth[i] = 1 + max(depth[j] for j in node.inputs)
    spread = np.zeros(n)
    for d in np.unique(depth):
        members = np.flatnonzero(depth == d)
        spread[members] = (np.arange(len(members)) - (len(members) - 1) / 2.0)[::-1]
    levels = int(depth.max()) + 1 if n else 0
    if wrap is None:
        wrap = WRAP_DEPTHS if levels > WRAP_AFTER else 0
    if not wrap or wrap < 2 or levels <= wrap:
        return depth.astype(float), spread
    row, col = depth // wrap, depth % wrap
    col = np.where(row % 2 == 1, wrap - 1 - col, col)  # odd rows run right to left
    # Each row is as tall as its widest depth plus a gap, so rows never overlap.
    half = np.array([np.abs(spread[row == r]).max(initial=0.0) for r in range(int(row.max()) + 1)])
    centre = np.zeros(len(half))
    for r in range(1, len(half)):
        centre[r] = centre[r - 1] - (half[r - 1] + half[r] + 1.5)
    return col.astype(float), centre[row] + spread


def cell_dag(graph: ArchGraph, title: str | None = None, height: int | None = None) -> go.Figure:
    """The graph drawn left to right, ops on nodes, arrows on edges; hover shows the node."""
    x, y = dag_layout(graph)
    n = len(graph)
    big = n > 60
    fig = go.Figure()
    ex, ey = [], []
    for j, i in graph.edges():
        ex += [x[j], x[i], None]
        ey += [y[j], y[i], None]
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="#888", width=1 if big else 1.6),
                             hoverinfo="skip", showlegend=False))
    # Arrows as one list in the layout: add_annotation per edge re-validates the layout each time.
    arrows = [] if big else [dict(x=x[i], y=y[i], ax=x[j], ay=y[j], xref="x", yref="y", axref="x", ayref="y",
                                  showarrow=True, arrowhead=3, arrowsize=1.2, arrowwidth=1.4, arrowcolor="#666",
                                  standoff=18, startstandoff=18, text="") for j, i in graph.edges()]
    hover = []
    for i, node in enumerate(graph.nodes):
        parts = [f"<b>node {i}</b>: {node.op}"]
        if node.name and node.name != node.op:
            parts.append(node.name)
        if node.shape:
            parts.append(f"output {tuple(node.shape)}")
        if node.inputs:
            parts.append(f"reads {', '.join(map(str, node.inputs))}")
        shown = {k: v for k, v in node.attrs.items() if k not in ("weight_positions",)}
        for k, v in list(shown.items())[:6]:
            parts.append(f"{k} = {v}")
        hover.append("<br>".join(parts))
    labels = [SHORT.get(op, op) for op in graph.ops]
    if big:
        # A whole network brings a dozen operator types; the fixed cell colours repeat among
        # them (Gemm, MatMul and any hashed type can share one), so here each type gets its own.
        palette = qualitative.Dark24
        colour = {op: palette[k % len(palette)] for k, op in enumerate(sorted(set(graph.ops)))}
    else:
        colour = {op: op_color(op) for op in set(graph.ops)}
    fig.add_trace(go.Scatter(
        x=x, y=y, mode="markers" if big else "markers+text", text=labels, textposition="bottom center",
        marker=dict(size=10 if big else 30, color=[colour[o] for o in graph.ops],
                    line=dict(color="white", width=2)),
        hovertext=hover, hoverinfo="text", showlegend=False, customdata=list(range(n))))
    if big:
        # Without labels on the nodes, a legend says which colour is which operator type.
        for op in sorted(set(graph.ops)):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=SHORT.get(op, op),
                                     marker=dict(size=10, color=colour[op]), showlegend=True))
    else:
        fig.add_trace(go.Scatter(x=x, y=y, mode="text", text=[str(i) for i in range(n)],
                                 textfont=dict(color="white", size=12), hoverinfo="skip", showlegend=False))
    span = max(y.max() - y.min(), 1.0) if n else 1.0
    fig.update_layout(
        annotations=arrows, title=title, height=height or int(min(700, max(260, 120 + 70 * span))),
        margin=dict(l=10, r=10, t=40 if title else 10, b=10), plot_bgcolor="white",
        legend=dict(orientation="h", yanchor="top", y=-0.02, x=0),
        xaxis=dict(visible=False, range=[x.min() - 0.5, x.max() + 0.5] if n else None),
        yaxis=dict(visible=False, range=[y.min() - 0.8, y.max() + 0.6] if n else None))
    return fig


# ------------------------------------------------------------------ tokens
def token_heatmap(values: np.ndarray, row_labels: Sequence[str], column_parts: Sequence[str],
                  title: str | None = None, max_rows: int = 400, height: int | None = None) -> go.Figure:
    """Nodes x token values. ``column_parts`` names the part (cell) or slot (network) of each column.

    Hovering a cell shows the node, the part/slot, the index of the value inside it, and the value.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != len(column_parts):
        raise ValueError(f"token matrix of shape {values.shape} does not match {len(column_parts)} column labels")
    rows = list(row_labels)[:max_rows]
    z = values[:max_rows]
    names, starts = [], []
    prev, k = None, 0
    for c, part in enumerate(column_parts):
        if part != prev:
            starts.append((c, part))
            prev, k = part, 0
        names.append(f"{part} [{k}]")
        k += 1
    small = z.size <= 60_000
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(values.shape[1])), y=rows, colorscale="RdBu", zmid=0,
        # Each column is named "<part> [k]"; past a size the per-cell names cost more than they help.
        customdata=np.broadcast_to(np.array(names, dtype=object), z.shape).tolist() if small else None,
        hovertemplate=("node: %{y}<br>slot: %{customdata}<br>value: %{z:.3f}<extra></extra>" if small
                       else "node: %{y}<br>column %{x}<br>value: %{z:.3f}<extra></extra>"),
        colorbar=dict(title="value", thickness=12)))
    centers = []
    for idx, (c, part) in enumerate(starts):
        end = starts[idx + 1][0] if idx + 1 < len(starts) else values.shape[1]
        centers.append(((c + end - 1) / 2.0, part))
        if c > 0:
            fig.add_vline(x=c - 0.5, line=dict(color="black", width=1))
    fig.update_xaxes(tickmode="array", tickvals=[c for c, _ in centers], ticktext=[p for _, p in centers],
                     tickangle=-45 if len(centers) > 4 else 0, side="top", showgrid=False)
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False,
                     tickfont=dict(size=10 if len(rows) > 30 else 12))
    fig.update_layout(title=title, height=height or int(min(900, max(260, 140 + 22 * len(rows)))),
                      margin=dict(l=10, r=10, t=110 if len(centers) > 4 else 60, b=10))
    return fig


# ------------------------------------------------------------------ training curves
def _x_title(x: str) -> str:
    return {"epoch": "epoch", "wall_s": "wall time (s)", "step": "step"}.get(x, x)


def tau_curves(runs: Mapping[str, pd.DataFrame], x: str = "epoch", raw: bool = True, ema: bool = True,
               title: str = "Validation Kendall's tau") -> go.Figure:
    """Validation tau (raw solid, EMA dashed) of one or more runs, against epoch or wall time."""
    fig = go.Figure()
    for k, (name, df) in enumerate(runs.items()):
        color = RUN_COLORS[k % len(RUN_COLORS)]
        if df is None or not len(df):
            continue
        if raw:
            fig.add_trace(go.Scatter(x=df[x], y=df["val_tau"], mode="lines+markers" if len(df) < 30 else "lines",
                                     name=f"{name} · raw", line=dict(color=color), legendgroup=name))
        if ema and "val_tau_ema" in df:
            fig.add_trace(go.Scatter(x=df[x], y=df["val_tau_ema"], mode="lines", name=f"{name} · EMA",
                                     line=dict(color=color, dash="dash"), legendgroup=name))
    fig.update_layout(title=title, xaxis_title=_x_title(x), yaxis_title="Kendall's tau", height=380,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.2))
    return fig


def loss_curves(runs: Mapping[str, pd.DataFrame], x: str = "epoch", log_y: bool = True,
                terms: Sequence[str] = ("loss", "mse", "rank", "cons")) -> go.Figure:
    """Training loss (and its terms, dotted) of one or more runs."""
    fig = go.Figure()
    dashes = {"loss": "solid", "mse": "dot", "rank": "dash", "cons": "dashdot"}
    for k, (name, df) in enumerate(runs.items()):
        color = RUN_COLORS[k % len(RUN_COLORS)]
        if df is None or not len(df):
            continue
        for t in terms:
            if t in df:
                fig.add_trace(go.Scatter(x=df[x], y=df[t], mode="lines", name=f"{name} · {t}",
                                         line=dict(color=color, dash=dashes.get(t, "solid"),
                                                   width=2 if t == "loss" else 1),
                                         legendgroup=name, visible=True if t == "loss" else "legendonly"))
    fig.update_layout(title="Training loss", xaxis_title=_x_title(x), yaxis_title="loss", height=340,
                      yaxis_type="log" if log_y else "linear", margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", y=-0.25))
    return fig


# ------------------------------------------------------------------ rankings
def pred_vs_truth(pred: np.ndarray, truth: np.ndarray, hover: Sequence[str] | None = None,
                  highlight: np.ndarray | None = None, title: str | None = None,
                  x_title: str = "ground truth accuracy (%)", y_title: str = "predicted accuracy (%)",
                  name: str = "architectures") -> go.Figure:
    """Scatter of prediction against truth (WebGL, fine for all 15,625), with the y = x line."""
    pred, truth = np.asarray(pred, float), np.asarray(truth, float)
    ok = np.isfinite(pred) & np.isfinite(truth)
    fig = go.Figure()
    fig.add_trace(go.Scattergl(x=truth[ok], y=pred[ok], mode="markers", name=name,
                               marker=dict(size=4, opacity=0.45, color="#4c78a8"),
                               hovertext=None if hover is None else np.asarray(hover, dtype=object)[ok],
                               hovertemplate="truth %{x:.2f}<br>predicted %{y:.2f}<br>%{hovertext}<extra></extra>"))
    if highlight is not None and np.any(highlight & ok):
        h = highlight & ok
        fig.add_trace(go.Scattergl(x=truth[h], y=pred[h], mode="markers", name="used in training",
                                   marker=dict(size=5, color="#e45756", opacity=0.8)))
    if ok.any():
        lo, hi = float(min(truth[ok].min(), pred[ok].min())), float(max(truth[ok].max(), pred[ok].max()))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                                 line=dict(color="#888", dash="dot")))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=460,
                      margin=dict(l=10, r=10, t=50 if title else 10, b=10), legend=dict(orientation="h", y=-0.15))
    return fig


def rank_error_hist(errors: Mapping[str, np.ndarray], nbins: int = 60) -> go.Figure:
    """Histogram of predicted rank minus true rank, one overlaid series per predictor."""
    fig = go.Figure()
    for k, (name, e) in enumerate(errors.items()):
        fig.add_trace(go.Histogram(x=np.asarray(e), name=name, nbinsx=nbins, opacity=0.6,
                                   marker_color=RUN_COLORS[k % len(RUN_COLORS)]))
    fig.update_layout(barmode="overlay", xaxis_title="predicted rank − true rank", yaxis_title="architectures",
                      height=340, margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.2))
    return fig


def tau_bars(taus: Mapping[str, float], title: str = "Kendall's tau") -> go.Figure:
    names = list(taus)
    fig = go.Figure(go.Bar(x=names, y=[taus[n] for n in names], text=[f"{taus[n]:.3f}" for n in names],
                           textposition="outside", marker_color=[RUN_COLORS[k % len(RUN_COLORS)] for k in range(len(names))]))
    fig.update_layout(title=title, yaxis_title="Kendall's tau", yaxis_range=[min(0.0, min(taus.values(), default=0)), 1.05],
                      height=300, margin=dict(l=10, r=10, t=50, b=10))
    return fig


# ------------------------------------------------------------------ latency
def value_histogram(values: np.ndarray, selected: float | None = None, x_title: str = "latency (ms)",
                    title: str | None = None, log_x: bool = False, label: str = "selected cell") -> go.Figure:
    """Distribution of a column with the selected architecture's value marked."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if log_x:
        v = v[v > 0]
    fig = go.Figure(go.Histogram(x=np.log10(v) if log_x else v, nbinsx=80, marker_color="#4c78a8", name="all cells"))
    if selected is not None and np.isfinite(selected):
        xs = np.log10(selected) if log_x else selected
        fig.add_vline(x=xs, line=dict(color="#e45756", width=3),
                      annotation_text=f"{label}: {selected:.3g}", annotation_position="top")
    fig.update_layout(title=title, xaxis_title=("log10 " + x_title) if log_x else x_title, yaxis_title="cells",
                      height=300, margin=dict(l=10, r=10, t=50 if title else 30, b=10), showlegend=False)
    return fig


def device_strip(table: pd.DataFrame, value_col: str = "latency ms", pct_col: str = "percentile (faster than)") -> go.Figure:
    """The selected cell's percentile on every device (100 = faster than every other cell)."""
    t = table.dropna(subset=[value_col])
    fig = go.Figure(go.Bar(x=t["device"], y=t[pct_col], marker_color="#72b7b2",
                           hovertext=[f"{d}: {v:.3g} ms" for d, v in zip(t["device"], t[value_col])],
                           hoverinfo="text"))
    fig.update_layout(yaxis_title="faster than (% of cells)", yaxis_range=[0, 100], height=300,
                      margin=dict(l=10, r=10, t=20, b=10), xaxis_tickangle=-45)
    return fig


# ------------------------------------------------------------------ predictor arena
def arena_taus(frame: pd.DataFrame, title: str = "Kendall's tau on unseen cells vs training cells") -> go.Figure:
    """Tau against train size, a line per predictor, error bars of one std over seeds.

    ``frame`` is ``arena.arena_frame``: columns name, train_size, tau_mean, tau_std, n_seeds.
    A point of a single seed has no error bar and an open marker, and its hover says so.
    """
    fig = go.Figure()
    for k, (name, rows) in enumerate(frame.groupby("name", sort=False)):
        rows = rows.sort_values("train_size")
        single = rows["n_seeds"].to_numpy() == 1
        color = RUN_COLORS[k % len(RUN_COLORS)]
        fig.add_trace(go.Scatter(
            x=rows["train_size"], y=rows["tau_mean"], name=name, mode="lines+markers",
            line=dict(color=color), marker=dict(size=9, color=color, symbol=["circle-open" if s else "circle" for s in single]),
            error_y=dict(type="data", array=np.where(single, 0.0, rows["tau_std"].to_numpy(float)), visible=True),
            customdata=np.stack([rows["n_seeds"], rows["tau_std"]], axis=1),
            hovertemplate=[f"{name}<br>%{{x:,}} cells<br>tau %{{y:.3f}}" + (" (1 seed only)" if s else
                           " ± %{customdata[1]:.3f} over %{customdata[0]} seeds") + "<extra></extra>" for s in single]))
    fig.update_layout(title=title, xaxis=dict(title="training cells", type="log"), yaxis_title="Kendall's tau",
                      height=380, margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.2))
    return fig


def cost_breakdown(rows: Sequence[Mapping], total_ms: float | None = None) -> go.Figure:
    """Horizontal bars: estimated ms per operator kind (``OperatorCostModel.breakdown``)."""
    known = [r for r in rows if r["ms"] is not None]
    known = sorted(known, key=lambda r: r["ms"])
    fig = go.Figure(go.Bar(x=[r["ms"] for r in known], y=[r["kind"] for r in known], orientation="h",
                           marker_color=[op_color(r["kind"].split("/")[0]) for r in known],
                           customdata=[r["operators"] for r in known],
                           hovertemplate="%{y}: %{x:.3f} ms over %{customdata} operators<extra></extra>"))
    title = "Where the time goes (operator-cost sum)"
    if total_ms is not None:
        title += f": {total_ms:.2f} ms in all"
    fig.update_layout(title=title, xaxis_title="estimated ms", height=120 + 22 * len(known),
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig
