"""Latency lab: published per-device latencies of NB201 cells, and the latency database of what
was measured here (and predicted, once a latency predictor exists)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import app_cache as cache
from narformer_core import app_services as svc
from narformer_core import plots
from narformer_core.graph import GraphError
from narformer_core.spaces import nb201

st.set_page_config(page_title="Latency lab · NAR-Former Explorer", page_icon="⏱️", layout="wide")


@st.cache_data(show_spinner="Reading the published latency tables…")
def device_table() -> pd.DataFrame:
    return svc.nb201_device_table()


@st.cache_resource(show_spinner="Reading the measured zoo networks…")
def zoo_dataset(reference: str, platform_key: str | None = None, column: str = "median_ms") -> pd.DataFrame:
    return svc.latency_dataset(platform_key, column, reference, graphs=False)


@st.cache_data(show_spinner="Predicting the zoo networks…", max_entries=8)
def zoo_predictions(path: str, mtime: float, reference: str, platform_key: str | None, column: str,
                    rows: tuple[int, ...]) -> np.ndarray:
    # Stored beside the checkpoint by scripts/precompute_latency_heldout.py (checked against the
    # file's SHA-256): the shipped ensemble takes ~4 s on one core for its 200 held-out networks.
    stored = svc.heldout_predictions(path, reference, column, rows)
    if stored is not None:
        return stored
    df = svc.latency_dataset(platform_key, column, reference)
    graphs = df["graph"].to_numpy()[list(rows)]
    return svc.predict_latency(cache.load_latency_predictor(path, mtime), list(graphs))


def random_cell() -> None:
    st.session_state["lat_arch"] = nb201.to_arch_str(nb201.sample(np.random.default_rng()))


st.title("⏱️ Latency lab")
st.caption("How fast is a cell? Published measurements on 31 device settings (27 from HW-NAS-Bench/HELP, "
           "4 edge devices from nn-Meter), and what was measured on this machine.")

# ---------------------------------------------------------------- published device latencies
st.header("NB201 cells on 31 devices")
if not svc.shared_data_available():
    st.info("The published latency tables are in the shared benchmark folder, which is not on this machine. "
            "Point NARFORMER_DATA_DIR at it to see per-device latencies.")
else:
    table = device_table()
    desc = svc.device_descriptions()
    st.session_state.setdefault("lat_arch", nb201.to_arch_str(svc.nb201_default_cell()))
    c1, c2 = st.columns([4, 1])
    arch = c1.text_input("Cell (NB201 arch string)", key="lat_arch")
    c2.button("🎲 Random cell", key="lat_random", on_click=random_cell, width="stretch")
    try:
        ops = nb201.parse(arch)
    except GraphError as e:
        st.error(f"Not an NB201 cell: {e}")
        ops = None
    if ops is not None:
        index = nb201.index_of(ops)
        devices = list(desc)
        c1, c2 = st.columns([3, 1])
        device = c1.selectbox("Device", devices, key="lat_device", format_func=lambda d: f"{d}: {desc[d]}")
        log_x = c2.toggle("log scale", key="lat_logx")
        col = table[device].to_numpy()
        v = float(col[index])
        known = col[np.isfinite(col)]
        m = st.columns(3)
        if np.isfinite(v):
            m[0].metric(f"Latency on {device}", f"{v:.3g} ms")
            m[1].metric("Faster than", f"{100 * np.mean(known > v):.1f} % of cells")
        else:
            m[0].metric(f"Latency on {device}", "not measured")
            m[1].metric("Faster than", "–")
        m[2].metric("Cells measured on this device", f"{known.size:,}")
        if device in ("cpu", "gpu", "gpu1", "vpu"):
            st.caption("nn-Meter measured 2,000 cells of >= 90 % accuracy on the edge devices.")
        st.plotly_chart(plots.value_histogram(col, v if np.isfinite(v) else None, log_x=log_x,
                                              title=f"All cells on {desc[device]}"),
                        key="lat_hist", width="stretch")
        st.markdown("**This cell on every device**")
        per_device = svc.cell_on_devices(index, table)
        st.plotly_chart(plots.device_strip(per_device), key="lat_strip", width="stretch")
        st.dataframe(per_device, hide_index=True, key="lat_devices_table", width="stretch",
                     column_config={"latency ms": st.column_config.NumberColumn(format="%.4g"),
                                    "median ms (all cells)": st.column_config.NumberColumn(format="%.4g")})

# ---------------------------------------------------------------- this machine
st.header("This machine: the latency database")
try:
    df, stats = svc.latency_db_contents()
except ValueError as e:  # e.g. a postgresql:// database that cannot be reached
    st.error(f"Could not read the latency database: {e}")
    df, stats = pd.DataFrame(), {"path": svc.latency_db_label(), "graphs": 0, "measurements": 0}
st.caption(f"Database: `{stats['path']}` (set NARFORMER_LATENCY_DB to use another). Measure a model from the "
           "**Architecture** page (upload, zoo, or an NB201 cell's network).")
m = st.columns(4)
m[0].metric("Graphs", stats.get("graphs", 0))
m[1].metric("Measurements", stats.get("measurements", 0))
by_source = stats.get("by_source", {})
m[2].metric("Measured here / imported", f"{by_source.get('measured', 0)} / {by_source.get('imported', 0)}")
m[3].metric("Predicted", by_source.get("predicted", 0))
if not len(df):
    st.info("Nothing measured yet.")
else:
    platforms = ["all", *sorted(df["platform_key"].unique())]
    plat = st.selectbox("Platform", platforms, key="lat_db_platform")
    shown = df if plat == "all" else df[df["platform_key"] == plat]
    st.dataframe(shown[["measured_at", "family", "description", "platform_key", "median_ms", "iqr_ms", "repeats",
                        "source", "graph_hash"]], hide_index=True, key="lat_db_table", width="stretch")
    measured = shown[shown["source"].isin(["measured", "imported"])]
    if len(measured) > 1:
        fig = go.Figure()
        for fam, g in measured.groupby("family"):
            fig.add_trace(go.Box(y=g["median_ms"], name=str(fam), boxpoints="all"))
        fig.update_layout(yaxis_title="median latency (ms)", height=320, margin=dict(l=10, r=10, t=20, b=10),
                          showlegend=False)
        st.plotly_chart(fig, key="lat_db_box", width="stretch")

# ---------------------------------------------------------------- predicted vs measured
st.header("Predicted vs measured")
ckpts = svc.latency_checkpoints() if svc.latency_predictor_status() else []
if svc.latency_predictor_status() is None:
    st.info("No latency predictor in narformer_core yet.")
elif not ckpts:
    st.info(f"No trained latency predictor in `{svc.latency_dir()}`. Train one on the measured zoo networks:")
    st.code(svc.LATENCY_TRAIN_HINT, language="bash")
else:
    names = [p.name for p in ckpts]
    path = ckpts[names.index(st.selectbox("Latency predictor", names, key="lat_pred_ckpt"))]
    try:
        predictor = cache.load_latency_predictor(str(path), path.stat().st_mtime)
    except (ValueError, OSError) as e:
        st.error(f"Cannot load {path.name}: {e}")
        predictor = None
    if predictor is not None:
        plat = predictor.meta.get("platform_key")
        column = str(predictor.meta.get("column", "median_ms"))
        reference = svc.latency_reference_file(predictor.meta)
        zoo = zoo_dataset(str(reference), plat, column)
        if not len(zoo):
            st.info(f"No measured zoo networks on {plat} in `{svc.latency_dir()}` to compare with.")
        else:
            from narformer_core.metrics import acc_within, mape

            # Only the networks the predictor never trained on, when they are known: a score on its
            # own training networks would flatter it.
            held = svc.held_out_rows(predictor.meta, reference, len(zoo))
            rows = held if held is not None else np.arange(len(zoo))
            pred = zoo_predictions(str(path), path.stat().st_mtime, str(reference), plat, column,
                                   tuple(int(i) for i in rows))
            meas = zoo["latency_ms"].to_numpy()[rows]   # the statistic the predictor was trained on
            c = st.columns(3)
            c[0].metric("Held-out networks" if held is not None else "Zoo networks", len(rows))
            c[1].metric("MAPE", f"{mape(pred, meas):.1f} %")
            c[2].metric("Acc(10%)", f"{acc_within(pred, meas):.1f} %")
            if held is not None:
                st.caption(f"{predictor.name} on the {len(rows)} networks of `{reference.name}` it never saw while "
                           f"training (of {len(zoo)}), measured on `{plat}`, statistic `{column}`.")
            else:
                st.caption(f"{predictor.name} on every network of `{reference.name}` measured on `{plat}` "
                           f"(statistic `{column}`), the ones it was trained on included; held-out figures come "
                           "from `python -m narformer_core bench latency`.")
            pretrained = svc.pretraining_sentence(predictor.meta)
            if pretrained:
                st.caption(pretrained)
            extra = svc.extra_training_sentence(predictor.meta, getattr(predictor, "prior_weight", 0.0))
            if extra:
                st.caption(extra)
            st.plotly_chart(plots.pred_vs_truth(pred, meas, hover=zoo["description"].to_numpy()[rows],
                                                x_title="measured (ms)", y_title="predicted (ms)", name="zoo networks"),
                            key="lat_zoo_scatter", width="stretch")

def calibration_section(path, predictor) -> None:
    """This machine's calibration of the chosen checkpoint: its state, and a button to (re)fit it."""
    st.header("This machine's milliseconds")
    trained_on = predictor.meta.get("platform_key")
    here = svc.here_platform_key()
    cal, err = svc.latency_calibration(path)
    if err:
        st.warning(f"The calibration file of {path.name} for this machine cannot be used: {err}. "
                   "Fit a new one below.")
    if cal is not None:
        c = st.columns(4)
        c[0].metric("Speed ratio here", f"{cal.speed_ratio:.2f}x", help=f"this machine's ms / {cal.checkpoint_platform}'s")
        c[1].metric("Networks timed", cal.n)
        c[2].metric("Leave-one-out MAPE, uncalibrated", f"{cal.loo.get('uncorrected_mape', float('nan')):.1f} %")
        c[3].metric("Leave-one-out MAPE, calibrated", f"{cal.loo.get('calibrated_mape', float('nan')):.1f} %")
        st.caption(svc.calibration_sentence(cal) + " The Architecture page and `predict-latency` now give this "
                   "machine's milliseconds for this checkpoint.")
        # The checkpoint's predictions times the global ratio: how far each network is from it is
        # what the local correction learns.
        st.plotly_chart(plots.pred_vs_truth(np.asarray(cal.predicted_ms) * cal.speed_ratio, np.asarray(cal.measured_ms),
                                            hover=np.asarray(cal.names or [""] * cal.n), x_title="measured here (ms)", y_title="checkpoint x speed ratio (ms)",
                                            name="calibration networks"),
                        key="lat_cal_scatter", width="stretch")
    elif svc.same_platform(trained_on):
        st.caption(f"{path.name} was trained on measurements of this platform (`{here}`): its predictions are "
                   "this machine's milliseconds already. A calibration can still correct a drift.")
    else:
        st.info(f"{path.name} predicts milliseconds of `{trained_on}`; this machine is `{here}`. Time a few zoo "
                "networks here to carry its predictions over (about 1.5 s per network).")
    k = st.slider("Zoo networks to time", 5, 60, 20, step=5, key="lat_cal_k",
                  help="spread over the zoo's families, none from the checkpoint's test split")
    if st.button(f"⏱️ Time {k} zoo networks here and calibrate", key="lat_cal_go"):
        bar = st.progress(0.0, text="timing zoo networks…")

        def progress(i, n, what):
            bar.progress(i / n, text=f"{i}/{n}: {what}")

        try:
            svc.calibrate_latency_here(path, k, progress=progress)
        except (ValueError, OSError) as e:
            st.error(f"The calibration failed: {e}. Nothing was changed.")
        else:
            st.rerun()


if ckpts and predictor is not None:
    calibration_section(path, predictor)

pairs = pd.DataFrame()
if len(df):
    pred_db = df[df["source"] == "predicted"].groupby(["graph_hash", "platform_key"])["median_ms"].first()
    meas_db = df[df["source"].isin(["measured", "imported"])].groupby(["graph_hash", "platform_key"])["median_ms"].first()
    pairs = pd.concat([pred_db.rename("predicted"), meas_db.rename("measured")], axis=1).dropna()
if len(pairs):
    from narformer_core.metrics import acc_within, mape

    st.markdown("**In the latency database**: graphs with a stored prediction and a measurement on the same platform")
    c = st.columns(3)
    c[0].metric("Graphs with both", len(pairs))
    c[1].metric("MAPE (database)", f"{mape(pairs['predicted'], pairs['measured']):.1f} %")
    c[2].metric("Acc(10%) (database)", f"{acc_within(pairs['predicted'], pairs['measured']):.1f} %")
    st.plotly_chart(plots.pred_vs_truth(pairs["predicted"].to_numpy(), pairs["measured"].to_numpy(),
                                        x_title="measured (ms)", y_title="predicted (ms)", name="graphs"),
                    key="lat_pred_scatter", width="stretch")
