"""Data: the benchmark tables behind every figure, with filters and a download."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from narformer_core import app_services as svc

st.set_page_config(page_title="Data · NAR-Former Explorer", page_icon="🗂️", layout="wide")

DATASETS = {
    "nb201": ("NB201 accuracy, every label source per cell",
              "All 15,625 NAS-Bench-201 cells. analog: AnalogNAS-Bench retraining (embedded, from the "
              "analog-nasbench package); nb201-val / nb201-test / nb201-12ep-val: the shared benchmark files "
              "(test accuracy only for cells >= 90 %)."),
    "nb101": ("NB101 cells (NASLib, 292 modules)",
              "Real NAS-Bench-101 cells from NASLib, merged by module hash: validation accuracy at 108 epochs."),
    "latency": ("NB201 latency on 31 devices",
                "HW-NAS-Bench / HELP (27 settings, all cells) and nn-Meter (4 edge devices, 2,000 cells), in ms."),
    "fbnet": ("FBNet latency on 27 devices", "5,000 FBNet macro-space networks (22 block choices) from HELP, in ms."),
    "db": ("Latency database (this machine)", "What was measured here, when and on which platform."),
}


@st.cache_data(show_spinner="Loading the table…")
def load(name: str) -> pd.DataFrame:
    if name == "nb201":
        return svc.nb201_table()
    if name == "nb101":
        return svc.nb101_table()
    if name == "latency":
        return svc.nb201_device_table()
    if name == "fbnet":
        from narformer_core.data.latency_sets import FBNET_DEVICES, fbnet_latency

        archs, _ = fbnet_latency(FBNET_DEVICES[0])
        df = pd.DataFrame({"blocks": [" ".join(map(str, a)) for a in archs]})
        for d in FBNET_DEVICES:
            df[d] = fbnet_latency(d)[1]
        return df
    raise ValueError(f"unknown data set {name!r}")


st.title("🗂️ Data")
st.caption("The benchmark data behind every figure, as published (nothing here is synthetic).")
name = st.selectbox("Data set", list(DATASETS), key="data_set", format_func=lambda k: DATASETS[k][0])
st.caption(DATASETS[name][1])

try:
    df = svc.latency_db_contents()[0] if name == "db" else load(name)
except (FileNotFoundError, ValueError) as e:
    st.info(f"Not available on this machine: {e}")
    st.stop()
if not len(df):
    st.info("The table is empty.")
    st.stop()

c1, c2, c3 = st.columns([2, 2, 1])
text = c1.text_input("Rows whose text contains", key="data_filter_text",
                     help="matched against every text column (e.g. an op name, part of an arch string, a hash)")
numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and c not in ("index",)]
col = c2.selectbox("Filter on a numeric column", ["(none)", *numeric], key="data_filter_col")
limit = c3.number_input("Rows shown", 10, 20_000, 500, step=100, key="data_rows")

mask = pd.Series(True, index=df.index)
if text:
    texty = [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]
    hit = pd.Series(False, index=df.index)
    for c in texty:
        hit |= df[c].astype(str).str.contains(text, case=False, regex=False, na=False)
    mask &= hit
if col != "(none)":
    values = df[col].dropna()
    if len(values):
        lo, hi = float(values.min()), float(values.max())
        if lo < hi:
            sel = st.slider(f"{col} between", lo, hi, (lo, hi), key=f"data_range_{name}_{col}")
            mask &= df[col].between(*sel)
filtered = df[mask]
st.caption(f"{len(filtered):,} of {len(df):,} rows match; showing the first {min(len(filtered), int(limit)):,}.")
st.dataframe(filtered.head(int(limit)), hide_index=True, key="data_table", width="stretch")
st.download_button(f"⬇ Download the {len(filtered):,} matching rows (CSV)", filtered.to_csv(index=False).encode(),
                   file_name=f"narformer-{name}.csv", mime="text/csv", key="data_download")
