"""Training: launch accuracy-predictor runs in the background and watch them learn.

Runs are processes of their own (``python -m narformer_core train``) that write into a folder each;
this page only reads those folders, so runs outlive the app and every tab sees the same runs.
"""
from __future__ import annotations

import streamlit as st

from narformer_core import plots, runs

st.set_page_config(page_title="Training · NAR-Former Explorer", page_icon="🏋️", layout="wide")
REFRESH_S = 2.0
# Model sizes on offer: the preset's own, or smaller ones that train in seconds per epoch on a CPU.
MODELS = {"preset": None,
          "small (d=64, 2+3 blocks)": {"d_model": 64, "n_heads": 4, "ffn_dim": 128, "depths": [2, 1, 1, 1]},
          "tiny (d=32, 1+3 blocks)": {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": [1, 1, 1, 1]}}

st.title("🏋️ Training")
root = runs.runs_dir()
st.caption(f"Runs live in `{root}` (set NARFORMER_RUNS_DIR to move them). Each run is a background "
           "process; closing the app does not stop it.")

all_runs = runs.list_runs(root)
any_active = any(r.active for r in all_runs)

with st.expander("🚀 Launch a new run", expanded=not any_active):
    with st.form("train_form"):
        c = st.columns(4)
        space = c[0].selectbox("Space", ["nb201", "nb101"], key="train_space")
        train_size = c[1].number_input("Training architectures", 8, 15000, 100, step=10, key="train_size",
                                       help="NB101 (the shipped 292 cells): at most 92 with 200 for validation")
        val_size = c[2].number_input("Validation architectures", 8, 1000, 200, step=10, key="train_val_size")
        epochs = c[3].number_input("Epochs", 1, 10000, 30, step=10, key="train_epochs")
        c = st.columns(4)
        seed = c[0].number_input("Seed", 0, 10_000, 0, key="train_seed")
        lr = c[1].number_input("Learning rate", 1e-6, 1e-1, 1e-3, format="%.0e", key="train_lr")
        batch = c[2].number_input("Batch size", 1, 4096, 128, step=16, key="train_batch")
        preset = c[3].selectbox("Preset", ["fast", "paper"], key="train_preset",
                                help="fast: our time-to-accuracy protocol; paper: the published one "
                                     "(epochs, batch and learning rate above override either)")
        c = st.columns([1, 1, 1, 2])
        model = c[0].selectbox("Model size", list(MODELS), key="train_model",
                               help="the preset's model, or a smaller one for a quick look on a CPU")
        threads = c[1].number_input("CPU threads", 1, 64, 1, key="train_threads",
                                    help="torch threads of the run; on a busy machine one is fastest")
        precision = c[2].selectbox("Arithmetic", ["fp32", "bf16", "auto"], key="train_precision",
                                   help="bf16: bfloat16 matrix products, 1.5-3x faster on CPUs with "
                                        "AVX512-BF16 or AMX (slower elsewhere), about 0.004 lower tau "
                                        "at 781 cells; auto: bf16 only where the hardware has it")
        name = c[3].text_input("Run name (empty: automatic)", key="train_name")
        equivalents = st.checkbox("Train on equivalent copies (NB201)", key="train_equivalents",
                                  help="every step feeds each training cell as a random cell that computes "
                                       "the same function (dead edges with other ops, swapped parallel "
                                       "branches); +0.003 to +0.011 validation tau at 781 cells")
        submitted = st.form_submit_button("🚀 Launch", key="train_launch", type="primary")
    if submitted:
        spec = runs.RunSpec(space=space, train_size=int(train_size), val_size=int(val_size), epochs=int(epochs),
                            seed=int(seed), lr=float(lr), batch_size=int(batch), preset=preset,
                            model=MODELS[model], threads=int(threads), precision=precision,
                            equivalents=bool(equivalents))
        try:
            info = runs.start_run(spec, name or None, root)
        except runs.RunError as e:
            st.error(str(e))
        else:
            st.success(f"Started **{info.name}** (pid {info.pid}). Its curve appears below after the first epoch.")
            st.session_state["train_run_select"] = info.name
            st.session_state["train_compare"] = [info.name]
            all_runs = runs.list_runs(root)
            any_active = True


@st.fragment(run_every=REFRESH_S if any_active else None)
def live() -> None:
    current = runs.list_runs(root)
    if not current:
        st.info("No runs yet. Launch one above, or from a terminal:")
        st.code("python -m narformer_core train --space nb201 --train-size 100 --epochs 30 --out runs/my-run",
                language="bash")
        return
    names = [r.name for r in current]
    by_name = {r.name: r for r in current}
    icons = {"running": "🟢", "starting": "🟡", "stopping": "🟠", "finished": "✅", "stopped": "⏸️",
             "failed": "❌", "crashed": "💥"}
    table = [{"": icons.get(r.state, ""), **r.row()} for r in current]
    st.dataframe(table, hide_index=True, key="train_table", width="stretch",
                 column_config={"best val tau": st.column_config.NumberColumn(format="%.3f"),
                                "last val tau": st.column_config.NumberColumn(format="%.3f"),
                                "last val tau (EMA)": st.column_config.NumberColumn(format="%.3f")})

    st.subheader("Curves")
    # Keep the selection valid as runs come and go (another tab or a terminal may add some).
    prev = [n for n in st.session_state.get("train_compare", []) if n in names]
    st.session_state["train_compare"] = prev or [r.name for r in current if r.active][:4] or names[:1]
    chosen = st.multiselect("Runs to compare", names, key="train_compare")
    c1, c2 = st.columns([1, 3])
    x = c1.radio("x axis", ["epoch", "wall_s"], horizontal=True, key="train_x",
                 format_func={"epoch": "epoch", "wall_s": "wall time"}.get)
    st.session_state.setdefault("train_curves", ["raw", "EMA"])
    show = c2.multiselect("Curves", ["raw", "EMA"], key="train_curves")
    frames = {n: runs.read_metrics(by_name[n]) for n in chosen}
    left, right = st.columns(2)
    left.plotly_chart(plots.tau_curves(frames, x=x, raw="raw" in show, ema="EMA" in show),
                      key="train_tau_chart", width="stretch")
    right.plotly_chart(plots.loss_curves(frames, x=x), key="train_loss_chart", width="stretch")

    st.subheader("Control")
    if st.session_state.get("train_run_select") not in names:
        st.session_state["train_run_select"] = names[0]
    sel = st.selectbox("Run", names, key="train_run_select")
    info = by_name[sel]
    msg = f"**{sel}** is **{info.state}**, epoch {info.epoch}" + (f" of {info.epochs}" if info.epochs else "")
    if info.message:
        msg += f": {info.message}"
    st.markdown(msg)
    b1, b2, b3 = st.columns(3)
    if b1.button("⏹ Stop", key="train_stop", disabled=info.state not in ("running", "starting"),
                 help="asks the run to save and stop after its current epoch", width="stretch"):
        try:
            runs.stop_run(sel, root)
            st.toast(f"Asked {sel} to stop after this epoch.")
        except runs.RunError as e:
            st.error(str(e))
    if b2.button("▶ Resume", key="train_resume", disabled=not info.resumable,
                 help="starts the run again in its folder; training continues from latest.pt", width="stretch"):
        try:
            runs.resume_run(sel, root)
            st.toast(f"Resumed {sel}.")
            st.rerun()
        except runs.RunError as e:
            st.error(str(e))
    if b3.button("🔄 Refresh", key="train_refresh", width="stretch"):
        st.rerun()
    with st.expander("Log (last lines)"):
        st.code(runs.log_tail(info, 3000) or "(no log: the run was not started from the app)", language=None)


live()
