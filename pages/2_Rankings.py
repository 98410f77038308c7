"""Rankings: a checkpoint's predictions for a whole benchmark against the ground truth, with the
baselines beside it when narformer_core/baselines.py is there."""
from __future__ import annotations

import numpy as np
import streamlit as st

import app_cache as cache
from narformer_core import app_services as svc
from narformer_core import arena
from narformer_core import plots
from narformer_core.spaces import nb201

st.set_page_config(page_title="Rankings · NAR-Former Explorer", page_icon="🏆", layout="wide")


@st.cache_data(show_spinner="Predicting the NB101 cells…", max_entries=8)
def nb101_predictions(path: str, mtime: float) -> np.ndarray:
    p = cache.load_predictor(path, mtime)
    return np.asarray(p.predict(p.task()), dtype=np.float64)


@st.cache_data(show_spinner=False, persist="disk", max_entries=32)
def baseline_predictions(name: str, path: str, mtime: float, labels: str | None) -> np.ndarray:
    return svc.fit_baseline(name, cache.load_predictor(path, mtime), labels)


@st.cache_data(show_spinner=False)
def labels_of(source: str) -> np.ndarray:
    return svc.nb201_labels(source)


def arena_section() -> None:
    """The saved predictor arena: one table (predictor x train size) and tau against train size."""
    path = arena.arena_file()
    if arena.arena_file(averaged=True).exists():
        scores = st.radio("Scores", ["each predictor's own outputs", "averaged over equivalent cells"],
                          horizontal=True, key="arena_scores",
                          help="averaged: every predictor's prediction for a cell is the mean over the cells "
                               "that compute the same function (dead edges, swapped parallel branches)")
        path = arena.arena_file(averaged=scores.startswith("averaged"))
    try:
        res = arena.load_arena(path)
    except arena.ArenaFileError as e:
        st.error(f"Cannot show the predictor arena: {e}")
        return
    frame = arena.arena_frame(res) if res is not None else None
    if frame is None or frame.empty:
        st.info(f"No predictor-arena results {'in' if res is not None else 'at'} `{path}` yet. They are made "
                "on the command line (CPU-heavy: the torch baselines take about a minute per fit):")
        st.code(arena.ARENA_COMMAND, language="bash")
        return
    st.caption(f"Every predictor fitted on the same NB201 splits (`tasks.split(task, n, {res.get('val_size', 200)}, "
               f"seed)`: n training cells and {res.get('val_size', 200)} validation cells for model selection), "
               f"labels `{res.get('labels', '?')}`; Kendall's tau on {res.get('tau_on', 'the unseen cells')}. "
               "Each cell: tau mean ± one standard deviation over seeds (and how many seeds), then the mean wall "
               "time of one fit on the project's shared 2-core machine.")
    st.dataframe(arena.arena_grid(frame), hide_index=True, key="arena_table", width="stretch")
    single = frame[frame["single_seed"]]
    if len(single):
        where = "; ".join(f"{r['name']} at {r['train_size']:,} cells" for _, r in single.iterrows())
        st.warning(f"One seed only, so no spread: {where}. Such a tau is one draw of the split and "
                   "initialisation, not a mean.")
    for name, sources in arena.other_sources(frame).items():
        st.caption(f"{name} rows come from trained checkpoints, not the bench: " + "; ".join(sources) + ".")
    if frame["old_gbdt_rule"].any():
        st.caption("† GBDT measured with its earlier tree-size rule, which was picked by looking at unseen "
                   "cells: not a fair baseline. The GBDT now chooses its trees on the validation cells; refresh "
                   "these rows with `nice -n 10 python scripts/bench_arena.py --predictors gbdt "
                   "--train-sizes 100,781,1563,7813 --seeds 0-2`.")
    st.plotly_chart(plots.arena_taus(frame), key="arena_plot", width="stretch")
    st.caption(f"From `{path.name}` ({len(res['runs'])} runs). Open markers: one seed, no error bar.")


st.title("🏆 Rankings")
st.caption("A predictor is judged by how well it orders architectures: Kendall's tau between predicted "
           "and measured accuracy over the whole benchmark.")

tab_ckpt, tab_arena = st.tabs(["📈 A checkpoint's ranking", "🏟️ Predictor arena"])
# The arena needs no checkpoint: drawn first, so the checkpoint tab's st.stop() cannot hide it.
with tab_arena:
    arena_section()

with tab_ckpt:
    space = st.radio("Benchmark", ["nb201", "nb101"], horizontal=True, key="rank_space",
                     format_func={"nb201": "NAS-Bench-201", "nb101": "NAS-Bench-101 (shipped cells)"}.get)
    refs = svc.find_checkpoints(space)
    if not refs:
        st.info(f"No trained {space.upper()} checkpoint found. Train one (terminal or **Training** page):")
        st.code(svc.TRAIN_HINT if space == "nb201" else svc.TRAIN_HINT_NB101, language="bash")
        st.stop()

    c1, c2, c3 = st.columns(3)
    labels = [r.label for r in refs]
    ref = refs[labels.index(c1.selectbox("Checkpoint", labels, key="rank_checkpoint"))]
    try:
        predictor = cache.load_predictor(ref.path, ref.mtime)
    except (ValueError, OSError) as e:
        st.error(f"Cannot use this checkpoint: {e}")
        st.stop()
    info = svc.checkpoint_summary(predictor)

    if space == "nb201":
        sources = svc.nb201_sources()
        default = info["labels"] if info["labels"] in sources else "analog"
        source = c2.selectbox("Ground truth", list(sources), index=list(sources).index(default), key="rank_labels",
                              help="\n".join(f"{k}: {v}" for k, v in sources.items()))
        pred = cache.all_nb201_predictions(ref, "Predicting all 15,625 cells (once per checkpoint)…")
        truth = np.asarray(labels_of(source), dtype=np.float64)
        ids = [nb201.to_arch_str(c) for c in nb201.enumerate_all()]
    else:
        task = predictor.task()
        source = c2.selectbox("Ground truth", [task.labels], key="rank_labels")
        pred = nb101_predictions(ref.path, ref.mtime)
        truth = np.asarray(task.y, dtype=np.float64)
        ids = list(task.ids)
    seen = np.zeros(len(pred), dtype=bool)
    seen[np.asarray(predictor.meta["train_idx"], dtype=np.int64)] = True
    seen[np.asarray(predictor.meta["val_idx"], dtype=np.int64)] = True
    scope = c3.radio("Architectures", ["all", "unseen"], horizontal=True, key="rank_scope",
                     format_func={"all": "all (as the paper)", "unseen": "unseen only"}.get,
                     help="unseen: not used for training or validation by this checkpoint")
    st.caption(f"Checkpoint: trained on {info['train_size']:,} {space.upper()} architectures with {info['labels']} "
               f"labels, {info['val_size']} for validation; {svc.validation_text(info)}.")

    keep = np.isfinite(truth) & (~seen if scope == "unseen" else np.ones_like(seen))
    frame = svc.ranking_frame(pred[keep], truth[keep], np.asarray(ids, dtype=object)[keep], seen[keep])
    ok_all, ok_unseen = np.isfinite(truth), np.isfinite(truth) & ~seen
    m = st.columns(4)
    m[0].metric("Kendall's tau (all)", f"{svc.kendall(pred[ok_all], truth[ok_all]):.3f}", help=f"{ok_all.sum():,} architectures")
    m[1].metric("Kendall's tau (unseen)", f"{svc.kendall(pred[ok_unseen], truth[ok_unseen]):.3f}",
                help=f"{ok_unseen.sum():,} architectures")
    m[2].metric("Architectures shown", f"{len(frame):,}")
    m[3].metric("Mean |rank error|", f"{frame['rank error'].abs().mean():,.0f}" if len(frame) else "–")

    # ---------------------------------------------------------------- baselines
    errors = {"NAR-Former": frame["rank error"].to_numpy()}
    taus = {"NAR-Former": svc.kendall(frame["predicted"], frame["truth"])}
    names = svc.baseline_names()
    if not names:
        st.info("Baselines appear here when narformer_core/baselines.py is present.")
    else:
        chosen = st.multiselect("Baselines beside NAR-Former (fitted on the checkpoint's own training split)",
                                names, key="rank_baselines")
        # The checkpoint's own labels when this machine has them, else the embedded ones (same cells).
        fit_labels = None
        if space == "nb201" and info["labels"] not in svc.nb201_sources():
            fit_labels = "analog"
            if chosen:
                st.caption(f"The checkpoint was trained on {info['labels']} labels, which are not on this machine; "
                           "the baselines are fitted on the same cells with the embedded analog labels.")
        for name in chosen:
            try:
                with st.spinner(f"Fitting {name} on {info['train_size']} architectures…", show_time=True):
                    bp = baseline_predictions(name, ref.path, ref.mtime, fit_labels)
            except (ValueError, OSError, RuntimeError) as e:
                st.warning(f"{name}: {e}")
                continue
            bf = svc.ranking_frame(bp[keep], truth[keep], np.asarray(ids, dtype=object)[keep])
            errors[name] = bf["rank error"].to_numpy()
            taus[name] = svc.kendall(bf["predicted"], bf["truth"])
        if len(taus) > 1:
            st.plotly_chart(plots.tau_bars(taus, title=f"Kendall's tau ({scope})"), key="rank_tau_bars", width="stretch")

    left, right = st.columns(2)
    with left:
        st.plotly_chart(plots.pred_vs_truth(frame["predicted"].to_numpy(), frame["truth"].to_numpy(),
                                            hover=frame["arch"].to_numpy(),
                                            highlight=frame["used in training"].to_numpy() if scope == "all" else None,
                                            title=f"Predicted vs {source}", x_title=f"{source} (%)"),
                        key="rank_scatter", width="stretch")
    with right:
        st.plotly_chart(plots.rank_error_hist(errors), key="rank_hist", width="stretch")

    k = st.slider("Top k", 5, 100, 20, step=5, key="rank_topk")
    top = frame.sort_values("predicted", ascending=False).head(k)
    hits = int((top["true rank"] <= k).sum())
    st.markdown(f"**Top {k} by prediction**: {hits} of them are in the true top {k}; the best true rank among "
                f"them is {int(top['true rank'].min()) if len(top) else '–'}.")
    st.dataframe(top.reset_index(drop=True), key="rank_top_table", width="stretch",
                 column_config={"predicted": st.column_config.NumberColumn(format="%.2f"),
                                "truth": st.column_config.NumberColumn(format="%.2f")})
