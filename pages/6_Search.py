"""Search: find good NB201 cells with a fixed number of evaluations (accuracy lookups in the
benchmark), by random search, regularised evolution or predictor-guided evolution, optionally
under a latency budget on a device. The page only reads widgets, calls narformer_core.search and
draws."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from narformer_core import app_services as svc
from narformer_core import search
from narformer_core.spaces import nb201

st.set_page_config(page_title="Search · NAR-Former Explorer", page_icon="🔎", layout="wide")

ALGOS = {"random": "Random search", "evolution": "Regularised evolution",
         "predictor": "Predictor-guided evolution (NPENAS)"}
GUIDES = {"gbdt": "gradient-boosted trees (fast)", "mlp": "MLP (a few seconds a round)",
          "gin": "GIN graph network (slower)"}
REPORT = ("nb201-test", "analog")
plots = svc.optional("plots")


@st.cache_data(show_spinner="Reading the published latency tables…")
def device_medians() -> dict[str, float]:
    from narformer_core.data.latency_sets import NB201_DEVICES

    return {d: float(np.nanmedian(search.latency_objective(d).latency)) for d in NB201_DEVICES}


@st.cache_data(show_spinner="Computing the space's Pareto front…")
def space_front(device: str, labels: str) -> list[dict]:
    return search.space_pareto_front(device, labels)


@st.cache_data(show_spinner=False)
def latency_of(device: str) -> np.ndarray:
    return search.latency_objective(device).latency


def cell_figure(arch: str, title: str) -> go.Figure:
    """The cell drawn by plots.cell_dag, or a plain drawing of the 8-node DAG if plots is absent."""
    graph = nb201.to_graph(arch)
    if plots is not None and hasattr(plots, "cell_dag"):
        return plots.cell_dag(graph, title=title, height=280)
    pos = {0: (0, 0), 1: (1, 1.2), 2: (1, 0), 4: (1, -1.2), 3: (2, 0.6), 5: (2, -0.6), 6: (2.6, 0), 7: (3.4, 0)}
    fig = go.Figure()
    for j, i in graph.edges():
        fig.add_trace(go.Scatter(x=[pos[j][0], pos[i][0]], y=[pos[j][1], pos[i][1]], mode="lines",
                                 line=dict(color="#999"), hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=[pos[k][0] for k in range(8)], y=[pos[k][1] for k in range(8)],
                             mode="markers+text", text=graph.ops, textposition="top center",
                             marker=dict(size=22, color="#4c78a8"), showlegend=False))
    fig.update_layout(title=title, height=280, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white")
    return fig


st.title("🔎 Search")
st.caption("An evaluation = looking up a cell's accuracy in the benchmark (what training it would "
           "tell you). Every algorithm gets the same number of evaluations; repeats are free.")

sources = svc.nb201_sources()
search_sources = [s for s in ("nb201-val", "analog", "nb201-12ep-val") if s in sources]
if "nb201-val" not in sources:
    st.info("The shared NB201 benchmark folder is not on this machine: searching on the embedded "
            "'analog' labels, without latency tables. Point NARFORMER_DATA_DIR at the shared data for more.")

c = st.columns([2, 2, 1, 1])
algo = c[0].selectbox("Algorithm", list(ALGOS), format_func=ALGOS.get, index=2, key="search_algo")
guide = c[1].selectbox("Predictor guiding the search", list(GUIDES), format_func=lambda g: f"{g}: {GUIDES[g]}",
                       key="search_guide", disabled=algo != "predictor")
budget = c[2].number_input("Budget (evaluations)", min_value=10, max_value=1000, value=100, step=10,
                           key="search_budget")
seed = c[3].number_input("Seed", min_value=0, max_value=10_000, value=0, step=1, key="search_seed")

c = st.columns([2, 2, 2])
labels = c[0].selectbox("Search on (labels)", search_sources, key="search_labels",
                        format_func=lambda s: f"{s}: {sources[s]}")
objectives = ["accuracy"] + (["accuracy under a latency budget"] if svc.shared_data_available() else [])
objective = c[1].radio("Objective", objectives, key="search_objective", horizontal=True)
device, latency_budget = None, None
if objective != "accuracy":
    medians = device_medians()
    desc = svc.device_descriptions()
    device = c[2].selectbox("Device", list(medians), key="search_device", format_func=lambda d: f"{d}: {desc.get(d, d)}")
    latency_budget = st.number_input(f"Latency budget on {device} (ms); the median cell takes "
                                     f"{medians[device]:.3g} ms", min_value=0.0, value=round(medians[device], 3),
                                     format="%.4f", key="search_latency_budget")

runs: list = st.session_state.setdefault("search_runs", [])
b1, b2 = st.columns([1, 5])
go_clicked = b1.button("▶ Run search", type="primary", key="search_run")
if b2.button("Clear results", key="search_clear"):
    runs.clear()

if go_clicked:
    bar = st.progress(0.0, text="starting…")

    def progress(n: int, total: int, best: float) -> None:
        bar.progress(n / total, text=f"evaluation {n} / {total} · best so far {best:.2f} %")

    try:
        res = search.run_search(algo, int(budget), int(seed), labels, [s for s in REPORT if s in sources],
                                device, latency_budget, guide, progress=progress)
    except ValueError as e:
        bar.empty()
        st.error(str(e))
    else:
        bar.progress(1.0, text=f"done: {res.evaluations} evaluations in {res.wall_s:.1f} s")
        name = ALGOS[algo] + (f" ({guide})" if algo == "predictor" else "") + f", seed {seed}"
        runs.append({"name": name, "result": res})

if not runs:
    st.info("Choose an algorithm and a budget, then run. Runs accumulate below so you can compare them.")
    st.stop()

latest = runs[-1]["result"]
st.subheader(f"Latest: {runs[-1]['name']}")
m = st.columns(4)
m[0].metric(f"Best found ({latest.labels})", f"{latest.best_acc:.2f} %",
            delta=f"-{latest.regret[latest.labels]:.2f} to the best in the space", delta_color="off")
for k, (src, v) in enumerate(latest.test.items()):
    if k < 2:
        m[1 + k].metric(f"Its accuracy on {src}", "unknown (< 90 %)" if not np.isfinite(v) else f"{v:.2f} %",
                        delta=None if not np.isfinite(v) else f"regret {latest.regret[src]:.2f}", delta_color="off")
if latest.objective:
    lat = latest.objective.get("best_latency_ms")
    m[3].metric(f"Its latency on {latest.objective['device']}", "unknown" if lat is None else f"{lat:.3g} ms")

fig = go.Figure()
for r in runs:
    res = r["result"]
    fig.add_trace(go.Scatter(x=np.arange(1, res.evaluations + 1), y=res.best_curve(), mode="lines", name=r["name"]))
top = latest.space_best[latest.labels]["acc"]
if top is not None:
    fig.add_hline(y=top, line_dash="dash", line_color="black", annotation_text=f"best in the space {top:.2f}")
lo = min(float(np.nanmin(r["result"].best_curve()[min(9, r["result"].evaluations - 1):])) for r in runs)
fig.update_layout(title="Best accuracy found so far", xaxis_title="evaluations", yaxis_title=f"{latest.labels} (%)",
                  yaxis_range=[lo - 0.5, (top or lo) + 0.3], height=380, margin=dict(t=50, b=10))
st.plotly_chart(fig, key="search_curve")

st.subheader("Architectures found")
hist = pd.DataFrame([{"evaluation": e.n, "arch": e.arch, f"{latest.labels} (%)": e.acc} for e in latest.history])
if latest.objective:
    hist["latency (ms)"] = latency_of(latest.objective["device"])[[e.index for e in latest.history]]
top_cells = hist.sort_values(f"{latest.labels} (%)", ascending=False, kind="stable").head(10).reset_index(drop=True)
st.dataframe(top_cells, key="search_top_table", hide_index=True)
pick = st.selectbox("Draw", list(top_cells["arch"]), key="search_draw",
                    format_func=lambda a: f"{a}  ({float(top_cells.loc[top_cells['arch'] == a].iloc[0, 2]):.2f} %)")
st.plotly_chart(cell_figure(pick, "the cell (ops on nodes)"), key="search_cell")

if latest.objective:
    st.subheader(f"Latency and accuracy on {latest.objective['device']}")
    lat = hist["latency (ms)"].to_numpy()
    acc = hist[f"{latest.labels} (%)"].to_numpy()
    pf = search.pareto_front(lat, acc)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=lat, y=acc, mode="markers", name="evaluated", marker=dict(color="#bbb"),
                             text=hist["arch"], hoverinfo="text+x+y"))
    fig.add_trace(go.Scatter(x=lat[pf], y=acc[pf], mode="lines+markers", name="Pareto front (evaluated)",
                             line_shape="hv", text=hist["arch"].to_numpy()[pf], hoverinfo="text+x+y"))
    true = [p for p in space_front(latest.objective["device"], latest.labels) if p["acc"] is not None]
    fig.add_trace(go.Scatter(x=[p["latency_ms"] for p in true], y=[p["acc"] for p in true], mode="lines",
                             line_shape="hv", name="front of the whole space", line=dict(color="black", width=1)))
    if latest.objective.get("budget_ms"):
        fig.add_vline(x=latest.objective["budget_ms"], line_dash="dot", line_color="red",
                      annotation_text="latency budget")
    fig.update_layout(xaxis_title="latency (ms)", yaxis_title=f"{latest.labels} (%)", height=420,
                      yaxis_range=[max(np.nanmin(acc), 80) - 1, (top or 95) + 0.5], margin=dict(t=30, b=10))
    st.plotly_chart(fig, key="search_pareto")

with st.expander("All runs of this session"):
    st.dataframe(pd.DataFrame([{"run": r["name"], "budget": r["result"].budget,
                                "best (search labels)": r["result"].best_acc,
                                **{f"on {k}": v for k, v in r["result"].test.items()},
                                **{f"regret {k}": v for k, v in r["result"].regret.items()},
                                "seconds": round(r["result"].wall_s, 2)} for r in runs]),
                 key="search_runs_table", hide_index=True)
