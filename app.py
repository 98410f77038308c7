"""NAR-Former Explorer: the entry point and home page. Run with ``streamlit run app.py``.

Compose an NB201 cell, see it drawn, its predicted accuracy from a trained NAR-Former checkpoint,
its predicted rank among all 15,625 cells, and the measured accuracy and true rank.
The page only reads widgets, calls narformer_core and draws.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import streamlit as st

import app_cache as cache
from narformer_core import app_services as svc
from narformer_core import plots
from narformer_core.spaces import nb201

st.set_page_config(page_title="NAR-Former Explorer", page_icon="🧭", layout="wide")

HERE = Path(__file__).parent
# Pages this file knows how to introduce; any other pages/*.py (e.g. one added later) is still
# listed in the navigation, titled from its file name.
PAGES = {"1_Architecture.py": ("Architecture", "🧱", "upload ONNX, compose cells, see tokens"),
         "2_Rankings.py": ("Rankings", "🏆", "predicted vs true ranking, baselines"),
         "3_Training.py": ("Training", "🏋️", "train predictors in the background"),
         "4_Latency_lab.py": ("Latency lab", "⏱️", "device latencies, measure here"),
         "5_Data.py": ("Data", "🗂️", "browse the benchmark data")}


def randomize() -> None:
    rng = np.random.default_rng()
    for k, op in enumerate(nb201.sample(rng)):
        st.session_state[f"home_edge_{k}"] = op


def reset() -> None:
    for k, op in enumerate(svc.nb201_default_cell()):
        st.session_state[f"home_edge_{k}"] = op


# ---------------------------------------------------------------- the home page
def home() -> None:
    st.title("🧭 NAR-Former Explorer")
    st.markdown(
        "**NAR-Former** (Yi et al., CVPR 2023) predicts how good a neural architecture is without "
        "training it. Every node of the architecture becomes a token: its operation, its position and "
        "the positions of its inputs, each written as sines and cosines of the number. A multi-stage "
        "fusion transformer reads the tokens and predicts accuracy (or latency). Trained on a few hundred "
        "NAS-Bench-201 cells, it ranks all 15,625. Compose a cell below and see where it lands.")
    present = [(f"pages/{f}", *v) for f, v in PAGES.items() if (HERE / "pages" / f).exists()]
    for col, (path, label, icon, what) in zip(st.columns(max(1, len(present))), present):
        with col:
            st.page_link(path, label=label, icon=icon)
            st.caption(what)
    st.divider()

    # ---------------------------------------------------------------- compose
    for k, op in enumerate(svc.nb201_default_cell()):
        st.session_state.setdefault(f"home_edge_{k}", op)

    left, right = st.columns([2, 3])
    with left:
        st.subheader("Compose an NB201 cell")
        st.caption("Four feature maps (0 = the cell's input, 3 = its output); each of the six edges "
                   "carries one operation.")
        names = svc.nb201_edge_names()
        ops = []
        for target, edges in ((1, [0]), (2, [1, 2]), (3, [3, 4, 5])):
            row = st.columns(3)
            for slot, k in enumerate(edges):
                with row[slot]:
                    ops.append((k, st.selectbox(names[k], nb201.OPS, key=f"home_edge_{k}",
                                                format_func=lambda o: svc.SHORT_OPS[o])))
        ops = tuple(op for _, op in sorted(ops))
        b1, b2 = st.columns(2)
        b1.button("🎲 Random cell", key="home_random", on_click=randomize, width="stretch")
        b2.button("↺ Reset", key="home_reset", on_click=reset, width="stretch")
        arch = nb201.to_arch_str(ops)
        st.code(arch, language=None, wrap_lines=True)

    graph = nb201.to_graph(ops)
    index = nb201.index_of(ops)
    with right:
        st.plotly_chart(plots.cell_dag(graph, title="The cell as a graph (ops on nodes, NAR-Former's view)"),
                        key="home_dag", width="stretch")

    # ---------------------------------------------------------------- predict
    st.subheader("Prediction")
    refs = svc.find_checkpoints("nb201")
    pred_col, truth_col = st.columns([2, 3])
    with pred_col:
        if not refs:
            st.info("No trained NB201 checkpoint found (looked in "
                    f"`{svc.checkpoint_dir()}` and in the runs folder). Train one, in a terminal or on the "
                    "**Training** page, then reload:")
            st.code(svc.TRAIN_HINT, language="bash")
        else:
            labels = [r.label for r in refs]
            choice = st.selectbox("Checkpoint", labels, key="home_checkpoint")
            ref = refs[labels.index(choice)]
            try:
                predictor = cache.load_predictor(ref.path, ref.mtime)
            except (ValueError, OSError) as e:
                st.error(f"Cannot use this checkpoint: {e}")
                predictor = None
            if predictor is not None:
                info = svc.checkpoint_summary(predictor)
                st.caption(f"Trained on {info['train_size']:,} cells ({info['labels']} labels), "
                           f"{svc.validation_text(info)}.")
                stored = cache.stored_nb201_predictions(ref)
                value = float(stored[index]) if stored is not None else svc.predict_graph(predictor, graph)
                st.metric("Predicted accuracy", f"{value:.2f} %")
                same = svc.equivalence_text(graph.ops[1:7])
                if same:
                    st.caption(same)
                with st.spinner("Ranking among all 15,625 cells…", show_time=True):
                    allp = cache.all_nb201_predictions(ref, "Predicting all 15,625 cells once for this checkpoint…")
                rank, pct = svc.rank_and_percentile(float(allp[index]), allp)
                m1, m2 = st.columns(2)
                m1.metric(f"Predicted rank of {nb201.N_ARCHS:,}", f"{rank:,}", help="1 = the best predicted cell")
                m2.metric("Percentile", f"{pct:.1f} %", help="share of all cells predicted below this one")
    with truth_col:
        st.markdown("**Ground truth** (measured by training the cell)")
        st.dataframe(cache.nb201_ground_truth(index), hide_index=True, key="home_truth", width="stretch")
        if not svc.shared_data_available():
            st.caption("Only the embedded AnalogNAS labels are here; point NARFORMER_DATA_DIR at the shared "
                       "benchmark folder to add the NB201 validation and test accuracies.")
    st.caption("See this cell's tokens on the **Architecture** page, and how the whole ranking compares on "
               "**Rankings**.")


# ---------------------------------------------------------------- navigation
def _order(path: Path) -> tuple:
    m = re.match(r"(\d*)[_ -]*(.*)\.py$", path.name)
    return (int(m.group(1)) if m and m.group(1) else 1_000_000, path.name.lower())


def _page(path: Path):
    title, icon, _ = PAGES.get(path.name, (None, None, None))
    if title is None:
        title = re.sub(r"^\d+[_ -]*", "", path.stem).replace("_", " ").strip() or path.stem
    return st.Page(f"pages/{path.name}", title=title, icon=icon)


st.navigation([st.Page(home, title="Home", icon="🧭", default=True),
               *[_page(p) for p in sorted((HERE / "pages").glob("*.py"), key=_order)
                 if not p.name.startswith((".", "_"))]]).run()
