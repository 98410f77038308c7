"""Architecture: bring an architecture (ONNX upload, NB201 cell, NB101 cell, model zoo) and see
its graph, its tokens, its static features, its prediction and what the benchmarks know about it."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import streamlit as st

import app_cache as cache
from narformer_core import app_services as svc
from narformer_core import plots
from narformer_core.graph import ArchGraph, GraphError
from narformer_core.spaces import nb101, nb201

st.set_page_config(page_title="Architecture · NAR-Former Explorer", page_icon="🧱", layout="wide")


# ---------------------------------------------------------------- cached calls
@st.cache_resource(show_spinner=False, max_entries=16)
def _import_onnx(digest: str, max_bytes: int, _data: bytes) -> ArchGraph:
    return svc.import_onnx(_data, max_bytes=max_bytes)


def import_onnx(digest: str, data: bytes) -> ArchGraph:
    # The limit is part of the key: a model accepted under a larger limit must not pass a smaller one.
    return _import_onnx(digest, svc.MAX_ONNX_BYTES, data)


@st.cache_data(show_spinner=False, max_entries=32)
def network_tokens(digest: str, _graph: ArchGraph):
    return svc.network_token_matrix(_graph)


@st.cache_data(show_spinner="Exporting the network to ONNX…", max_entries=32)
def zoo_onnx(spec_json: str) -> bytes:
    return svc.zoo_onnx(spec_json)


@st.cache_data(show_spinner=False)
def nb101_truth(module_hash: str) -> pd.DataFrame:
    return svc.nb101_ground_truth(module_hash)


@st.cache_data(show_spinner="Reading the measured zoo networks…")
def zoo_measured_ms(reference: str, platform_key: str | None, column: str = "median_ms") -> np.ndarray:
    df = svc.latency_dataset(platform_key, column, reference, graphs=False)
    return df["latency_ms"].to_numpy() if len(df) else np.zeros(0)


@st.cache_resource(show_spinner="Starting Netron…", max_entries=8)
def netron_url(digest: str, name: str, _data: bytes) -> str:
    return svc.serve_netron(name, _data)


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- shared sections
def show_cell_prediction(graph: ArchGraph, space: str, key: str) -> None:
    """Predicted accuracy of a cell from a checkpoint of its space, with rank and percentile."""
    refs = svc.find_checkpoints(space)
    if not refs:
        st.info(f"No trained {space.upper()} checkpoint found. Train one (terminal or **Training** page):")
        st.code(svc.TRAIN_HINT if space == "nb201" else svc.TRAIN_HINT_NB101, language="bash")
        return
    labels = [r.label for r in refs]
    ref = refs[labels.index(st.selectbox("Checkpoint", labels, key=f"{key}_checkpoint"))]
    try:
        predictor = cache.load_predictor(ref.path, ref.mtime)
        stored = cache.stored_nb201_predictions(ref) if space == "nb201" else None
        value = (float(stored[nb201.index_of(graph.ops[1:7])]) if stored is not None
                 else svc.predict_graph(predictor, graph))
    except (ValueError, OSError) as e:
        st.error(f"Cannot predict with this checkpoint: {e}")
        return
    c1, c2, c3 = st.columns(3)
    c1.metric("Predicted accuracy", f"{value:.2f} %")
    if space == "nb201":
        allp = cache.all_nb201_predictions(ref, "Ranking among all 15,625 cells (once per checkpoint)…", spinner=True)
        rank, pct = svc.rank_and_percentile(float(allp[nb201.index_of(graph.ops[1:7])]), allp)
        c2.metric(f"Predicted rank of {len(allp):,}", f"{rank:,}", help="1 = the best predicted cell")
        c3.metric("Percentile", f"{pct:.1f} %", help="share of all cells predicted below this one")
        same = svc.equivalence_text(graph.ops[1:7])
        if same:
            st.caption(same)
    else:
        task = predictor.task()
        allp = predictor.predict(task)
        rank, pct = svc.rank_and_percentile(value, allp)
        c2.metric(f"Predicted rank vs the {len(allp)} shipped cells", f"{rank:,}",
                  help="where this cell's prediction falls among the predictions for the NB101 cells "
                       "shipped with the benchmark data (1 = best)")
        c3.metric("Percentile", f"{pct:.1f} %")


def show_tokens(values: np.ndarray, rows: list[str], parts: list[str], what: str, key: str) -> None:
    n = len(rows)
    start = 0
    if n > 200:
        start = st.number_input(f"{n} token rows; show 200 starting at row", 0, n - 1, 0, step=50,
                                key=f"{key}_token_start")
    sl = slice(int(start), int(start) + 200)
    st.plotly_chart(plots.token_heatmap(values[sl], rows[sl], parts, title=what), key=f"{key}_heatmap",
                    width="stretch")


def show_static(graph: ArchGraph) -> None:
    try:
        f = svc.static_features(graph)
    except (GraphError, ValueError) as e:
        st.info(str(e))
        return
    c = st.columns(4)
    c[0].metric("Batch size", f"{f['batch_size']}")
    c[1].metric("FLOPs (MACs)", svc.human(f["flops"]))
    c[2].metric("Parameters", svc.human(f["params"]))
    c[3].metric("Memory access", svc.human(f["memory_access"]), help="output + parameter elements over compute nodes")


def show_latency_prediction(graph: ArchGraph, key: str) -> None:
    if svc.latency_predictor_status() is None:
        st.info("No latency predictor in narformer_core yet: measured latency only.")
        return
    ckpts = svc.latency_checkpoints()
    if not ckpts:
        st.info("No trained latency predictor found in "
                f"`{svc.latency_dir()}`. Train one on the measured zoo networks:")
        st.code(svc.LATENCY_TRAIN_HINT, language="bash")
        return
    names = [p.name for p in ckpts]
    path = ckpts[names.index(st.selectbox("Latency predictor", names, key=f"{key}_latency_ckpt"))]
    try:
        predictor = cache.load_latency_predictor(str(path), path.stat().st_mtime)
        ms = float(svc.predict_latency(predictor, [graph])[0])
    except (ValueError, OSError) as e:
        st.error(f"Cannot predict the latency with {path.name}: {e}")
        return
    plat = predictor.meta.get("platform_key")
    column = str(predictor.meta.get("column", "median_ms"))
    unseen = svc.unseen_latency_ops(predictor, graph)
    if unseen:
        st.warning(f"{predictor.name} never saw these operator types in training: {', '.join(unseen)}. "
                   "Expect a larger error than on the zoo families it was trained on (measured on "
                   "families outside the zoo: `assets/latency/README.md`, \"Outside the zoo\").")
        other = [n for n in names if n != path.name and "unpretrained" in n]
        if svc.latency_pretraining(predictor.meta) and other:
            # Measured: pretraining on the zoo's unmeasured networks costs ~1 point of MAPE on
            # held-out families (assets/latency/README.md, "Session 16").
            st.info(f"{path.name} was pretrained on zoo networks, which helps on the zoo's families and "
                    f"hurts on others; `{other[0]}` (pick it above) is the better choice for this network.")
    c1, c2 = st.columns(2)
    cal, cal_err = svc.latency_calibration(path)
    if cal is not None:
        here_ms = float(cal.apply([ms], [graph])[0])
        c1.metric("Predicted latency, this machine", f"{here_ms:.3f} ms", help=svc.calibration_sentence(cal) +
                  f" Uncalibrated: {ms:.3f} ms on {plat}.")
    else:
        c1.metric("Predicted latency", f"{ms:.3f} ms", help=f"{predictor.name}; trained on measurements from "
                  f"{plat or 'an unrecorded platform'}, statistic `{column}`")
    if cal_err:
        st.warning(f"This machine's calibration of {path.name} cannot be used ({cal_err}); the prediction is "
                   f"in {plat}'s milliseconds. Refit it in the Latency lab.")
    reference = svc.latency_reference_file(predictor.meta)
    ref = zoo_measured_ms(str(reference), plat, column)
    if ref.size:
        rank, pct = svc.rank_and_percentile(-ms, -ref)
        c2.metric("Faster than", f"{pct:.1f} %", help=f"of the {ref.size} measured zoo networks of "
                  f"`{reference.name}` on {plat}")
    if cal is not None:
        where = (f"; calibrated to this machine (`{cal.platform_key}`, {cal.speed_ratio:.2f}x, {cal.n} networks "
                 f"timed here, Latency lab), uncalibrated {ms:.3f} ms. The rank compares the uncalibrated figure.")
    elif svc.same_platform(plat):
        where = "; that is this machine's platform."
    else:
        where = ("; a prediction is for that platform, not for this machine: calibrate it to this machine in the "
                 "Latency lab (about half a minute).")
    st.caption(f"{predictor.name}, trained on `{column}` measured on `{plat}`" + where + (
                   " `min_ms` is the fastest run over several timing sessions: what the hardware can do "
                   "when no other tenant slows it, steadier than one session's median." if column == "min_ms" else ""))
    costs = svc.cost_breakdown(predictor, graph)
    if costs:
        with st.expander("Where the time goes (per operator kind)"):
            total = sum(r["ms"] for r in costs if r["ms"] is not None)
            st.plotly_chart(plots.cost_breakdown(costs, total), key=f"{key}_cost_bars", width="stretch")
            guessed = [r["kind"] for r in costs if r["by_category"] and r["ms"] is not None]
            unseen = [r["kind"] for r in costs if r["ms"] is None]
            st.caption("The operator-cost sum: per operator kind, fitted costs per million MACs, per million "
                       "elements written and read, per parameter and per call, added up."
                       + (f" {predictor.name} multiplies that sum by what its transformer reads in the "
                          f"network's structure ({ms / total:.2f}x here)." if predictor.kind == "narformer" else "")
                       + (" A kind ending in /c8 or /c1 runs on channel counts that are a multiple of 8 "
                          "but not 16, or of neither: CPU kernels work on blocks of 8 or 16 channels, and "
                          "a tensor that fills no whole block costs more per MAC."
                          if any(r["kind"].endswith(("/c8", "/c1")) for r in costs) else "")
                       + (f" Kinds never seen in training, costed as their category (conv, matmul, pool, "
                          f"data movement or elementwise): {', '.join(guessed)}." if guessed else "")
                       + (f" Kinds with no cost at all (their category was never seen either): {', '.join(unseen)}."
                          if unseen else ""))


def show_latency(graph: ArchGraph, onnx_bytes: bytes, family: str, description: str, key: str) -> None:
    st.markdown("**Latency**")
    show_latency_prediction(graph, key)
    try:
        stored = svc.stored_latency(graph)
    except ValueError as e:  # e.g. a postgresql:// database that cannot be reached
        st.error(f"Could not read the latency database: {e}")
        stored = pd.DataFrame()
    if st.button("⏱️ Measure latency on this machine", key=f"{key}_measure",
                 help="onnxruntime, CPU, 1 thread, batch as in the model; stored in the latency database"):
        try:
            with st.spinner("Measuring (5 warm-up runs, 30 timed runs)…"):
                res = svc.measure_and_store(onnx_bytes, graph, family=family, description=description)
            # The shipped predictors learnt the fastest run (refnorm_ms, min_ms): compare with that one.
            st.success(f"Measured {res['median_ms']:.3f} ms (median of {res['repeats']}, IQR "
                       f"{res['iqr_ms']:.3f} ms; fastest run {res['min_ms']:.3f} ms, the statistic the shipped "
                       f"latency predictors learnt) on {res['platform_key']}; stored in {svc.latency_db_label()}.")
            stored = svc.stored_latency(graph)
        except (ValueError, OSError) as e:
            st.error(f"Could not measure this model: {e}")
    measured = stored[stored["source"].isin(["measured", "imported"])] if len(stored) else stored
    if len(measured):
        last = measured.iloc[0]
        db, _ = svc.latency_db_contents()
        same = db[(db["platform_key"] == last["platform_key"]) & db["source"].isin(["measured", "imported"])]
        per_graph = same.groupby("graph_hash")["median_ms"].first().to_numpy()
        rank, pct = svc.rank_and_percentile(-float(last["median_ms"]), -per_graph)
        c1, c2 = st.columns(2)
        c1.metric("Measured latency (latest)", f"{last['median_ms']:.3f} ms", help=last["platform_key"])
        c2.metric("Speed rank in the database", f"{rank} / {len(per_graph)}",
                  help="among the graphs measured on the same platform; 1 = fastest")
        st.dataframe(stored[["platform_key", "median_ms", "iqr_ms", "repeats", "measured_at", "source"]],
                     hide_index=True, key=f"{key}_stored", width="stretch")
    else:
        st.caption("Not measured on this machine yet.")


def show_network(graph: ArchGraph, onnx_bytes: bytes, name: str, family: str, description: str, key: str) -> None:
    """Everything about a whole network (ONNX upload or zoo model)."""
    digest = digest_of(onnx_bytes)
    meta = graph.meta
    ops = pd.Series(graph.ops[1:]).value_counts()
    st.success(f"**{name}**: {len(graph)} nodes ({meta.get('n_ops', len(graph))} operators), "
               f"{len(graph.edges())} edges, opset {meta.get('opset', '?')}. Most common ops: "
               + ", ".join(f"{op} ×{k}" for op, k in ops.head(6).items()))
    if meta.get("unknown_ops"):
        st.warning(f"Ops outside the token vocabulary (encoded as 'unknown'): {', '.join(meta['unknown_ops'])}")
    st.markdown("**Graph**")
    views = (["Netron", "DAG"] if svc.netron_available() else ["DAG"])
    view = st.radio("View", views, horizontal=True, key=f"{key}_view", label_visibility="collapsed")
    if view == "Netron":
        try:
            url = netron_url(digest, name, onnx_bytes)
            st.caption(f"Netron {svc.netron_version()} serving this model at {url} (this machine only). Its "
                       "offline page first shows a consent dialog, and stops working about 180 days after "
                       "its build; then pick the DAG view.")
            st.iframe(url, height=620)
        except Exception as e:  # a third-party server: any failure falls back to our own drawing
            st.warning(f"Netron could not start ({type(e).__name__}: {e}); drawing the graph instead.")
            view = "DAG"
    if view == "DAG":
        st.plotly_chart(plots.cell_dag(graph), key=f"{key}_dag", width="stretch")
    st.markdown("**Tokens**: 480 values per node, 15 slots of 32 (hover for node, slot and value)")
    values, rows, parts = network_tokens(f"{digest}-{graph.stable_hash()}", graph)
    show_tokens(values, rows, parts, f"{name}: network tokens", key)
    st.markdown("**Static features** (enter the latency head, not the tokens)")
    show_static(graph)
    show_latency(graph, onnx_bytes, family, description, key)


# ---------------------------------------------------------------- page
st.title("🧱 Architecture")
st.caption("Every input becomes one architecture graph; the graph becomes tokens; tokens become a "
           "prediction. Pick how to bring an architecture:")

tab_names = ["Upload ONNX", "Compose NB201", "Compose NB101", "Model zoo"]
t_upload, t_nb201, t_nb101, t_zoo = st.tabs(tab_names, key="arch_tab", on_change="rerun", default="Compose NB201")

if t_upload.open:
    with t_upload:
        if svc.optional("onnx_import") is None:
            st.info("The ONNX import (narformer_core/onnx_import.py) is not in this checkout yet.")
        else:
            st.caption(f"Limit: {svc.MAX_ONNX_BYTES / 1e6:.0f} MB and {svc.MAX_ONNX_NODES:,} operators. "
                       "Weights are read only for their shapes; the model is not run unless you measure it.")
            up = st.file_uploader("ONNX model (.onnx)", type=["onnx"], key="arch_upload")
            if up is None:
                st.info("Upload an .onnx file, or take one from the **Model zoo** tab.")
            else:
                data = up.getvalue()
                graph = None
                try:
                    graph = import_onnx(digest_of(data), data)
                except (GraphError, ValueError) as e:
                    st.error(f"Could not read {up.name}: {e}")
                except Exception as e:  # the page must survive any file; say what went wrong
                    st.error(f"Could not read {up.name}: {type(e).__name__}: {e}")
                if graph is not None:
                    show_network(graph, data, up.name, "upload", up.name, "arch_onnx")

if t_nb201.open:
    with t_nb201:
        for k, op in enumerate(svc.nb201_default_cell()):
            st.session_state.setdefault(f"arch_nb201_edge_{k}", op)
        left, right = st.columns([2, 3])
        with left:
            names = svc.nb201_edge_names()
            cols = st.columns(3)
            ops = tuple(cols[k % 3].selectbox(names[k], nb201.OPS, key=f"arch_nb201_edge_{k}",
                                              format_func=lambda o: svc.SHORT_OPS[o]) for k in range(6))
            st.code(nb201.to_arch_str(ops), language=None, wrap_lines=True)
        graph = nb201.to_graph(ops)
        with right:
            st.plotly_chart(plots.cell_dag(graph), key="arch_nb201_dag", width="stretch")
        st.markdown("**Tokens**: 192 values per node: op type | position | sources (hover for node, part and value)")
        values, rows, parts = svc.cell_token_matrix(graph)
        show_tokens(values, rows, parts, "NB201 cell tokens", "arch_nb201")
        st.markdown("**Prediction**")
        show_cell_prediction(graph, "nb201", "arch_nb201")
        st.markdown("**Ground truth**")
        st.dataframe(cache.nb201_ground_truth(nb201.index_of(ops)), hide_index=True, key="arch_nb201_truth", width="stretch")
        st.markdown("**As a whole network**")
        st.caption(f"The NB201 CIFAR-10 network built on this cell (C={svc.NB201_NETWORK['channels']}, "
                   f"N={svc.NB201_NETWORK['cells_per_stage']}, 32×32): its ONNX graph, static features and latency.")
        if st.toggle("Build the network", key="arch_nb201_build"):
            spec = svc.nb201_network_spec(ops)
            try:
                data = zoo_onnx(json.dumps(spec, sort_keys=True))
                net = import_onnx(digest_of(data), data)
            except (GraphError, ValueError) as e:
                st.error(f"Could not build the network: {e}")
            else:
                show_network(net, data, f"NB201 network {nb201.to_arch_str(ops)}", "nasbench201",
                             svc.zoo_describe(spec), "arch_nb201_net")

if t_nb101.open:
    with t_nb101:
        st.caption("Tick entry (i, j) when node j reads node i. Only the upper triangle is allowed; nodes off "
                   "every input→output path are pruned, as NAS-Bench-101 does. Checked as you edit.")
        n = nb101.MAX_NODES
        cols_names = [f"→{j}" for j in range(n)]
        base = pd.DataFrame(svc.NB101_DEFAULT_MATRIX.astype(bool), columns=cols_names,
                            index=[f"{i}" for i in range(n)])
        left, right = st.columns([3, 2])
        with left:
            edited = st.data_editor(base, key="arch_nb101_matrix", width="stretch",
                                    column_config={c: st.column_config.CheckboxColumn(c, width="small") for c in cols_names})
        with right:
            ops = ["input"]
            for k in range(1, n - 1):
                ops.append(st.selectbox(f"node {k}", nb101.OPS, key=f"arch_nb101_op_{k}",
                                        index=nb101.OPS.index(svc.NB101_DEFAULT_OPS[k])))
            ops.append("output")
        matrix = edited.to_numpy().astype(np.int64)
        try:
            graph = svc.nb101_graph(matrix, ops)
        except GraphError as e:
            st.error(f"Not a valid NAS-Bench-101 cell: {e}")
        else:
            st.success(f"Valid cell: {len(graph)} nodes and {len(graph.edges())} edges after pruning; "
                       f"module hash `{graph.meta['hash']}`.")
            st.plotly_chart(plots.cell_dag(graph), key="arch_nb101_dag", width="stretch")
            st.markdown("**Tokens**: 192 values per node: op type | position | sources")
            values, rows, parts = svc.cell_token_matrix(graph)
            show_tokens(values, rows, parts, "NB101 cell tokens", "arch_nb101")
            st.markdown("**Prediction**")
            show_cell_prediction(graph, "nb101", "arch_nb101")
            st.markdown("**Ground truth**")
            truth = nb101_truth(graph.meta["hash"])
            if len(truth):
                st.dataframe(truth, hide_index=True, key="arch_nb101_truth", width="stretch")
            else:
                st.caption("This module is not among the NB101 cells shipped with the benchmark data "
                           "(the full 423,624-cell table is a separate download).")

if t_zoo.open:
    with t_zoo:
        zoo = svc.optional("latency.zoo")
        if zoo is None or svc.optional("onnx_import") is None:
            st.info("The model zoo (narformer_core/latency/zoo.py) or the ONNX import is not in this checkout yet.")
        else:
            c1, c2, c3 = st.columns(3)
            kinds = dict(svc.network_families())
            names = list(kinds)
            family = c1.selectbox("Family", names, key="arch_zoo_family",
                                  index=names.index("resnet18") if "resnet18" in names else 0,
                                  format_func=lambda f: f if kinds[f] == "zoo" else f"{f} ({kinds[f]})")
            seed = c2.slider("Variant (random seed)", 0, 99, 0, key="arch_zoo_seed")
            res_options = list(zoo.NB201_RESOLUTIONS if family == "nasbench201" else zoo.IMAGENET_RESOLUTIONS)
            resolution = c3.select_slider("Input resolution", ["as drawn", *res_options], key=f"arch_zoo_res_{family}")
            try:
                spec = svc.zoo_spec(family, seed, None if resolution == "as drawn" else int(resolution))
                st.caption(svc.zoo_describe(spec))
                if kinds[family] == "outside the zoo":
                    st.caption("A family the latency predictors never trained on (their out-of-family test): "
                               "expect its predicted latency to be rougher than a zoo network's.")
                elif kinds[family] == "training-only":
                    st.caption("A training-only family: matrix products over many rows (attention, token and "
                               "channel MLPs), which the zoo's ten families never have; the shipped predictors "
                               "have not trained on it yet.")
                data = zoo_onnx(json.dumps(spec, sort_keys=True))
                graph = import_onnx(digest_of(data), data)
            except (GraphError, ValueError, RuntimeError) as e:
                st.error(f"Could not build this variant: {e}")
            else:
                st.download_button("Download the ONNX file", data, file_name=f"{family}-{seed}.onnx",
                                   key="arch_zoo_download")
                show_network(graph, data, f"{family} variant {seed}", family, svc.zoo_describe(spec), "arch_zoo")
