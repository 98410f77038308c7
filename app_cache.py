"""The app's cached calls, shared by app.py and pages/*.py (one definition each).

Streamlit keys a cache on the function, so one wrapper here is one cache for every page: a
checkpoint loaded on the home page is not loaded again on Rankings, and its 15,625 predictions
are assembled once. The wrappers only add caching to ``narformer_core.app_services``; the package
itself never imports Streamlit (docs: ARCHITECTURE.md), hence this module beside app.py. Imported
by name (``import app_cache``): Streamlit puts app.py's folder on the path, pytest.ini does the
same for the tests. Cached calls used by one page only stay in that page.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from narformer_core import app_services as svc
from narformer_core.spaces import nb201


@st.cache_resource(show_spinner="Loading the checkpoint…", max_entries=4)
def load_predictor(path: str, mtime: float):
    return svc.load_predictor(path, mtime)


@st.cache_data(show_spinner=False, persist="disk", max_entries=256)
def predicted_chunk(path: str, mtime: float, start: int, stop: int, version: int) -> np.ndarray:
    return svc.predict_chunk(load_predictor(path, mtime), "nb201", start, stop)


@st.cache_resource
def prediction_store() -> dict:
    """(checkpoint path, mtime) -> all 15,625 predictions, once assembled: a rerun then costs a
    dict lookup instead of 16 cache reads."""
    return {}


def stored_nb201_predictions(ref: svc.CheckpointRef) -> np.ndarray | None:
    """All 15,625 predictions of ``ref`` if they are at hand (shipped beside the checkpoint, or
    assembled earlier in this server), else None. A cell's prediction is then a lookup: with
    equivalence averaging, predicting one cell afresh means predicting its whole class (up to
    341 cells, seconds for an ensemble on one thread)."""
    store = prediction_store()
    key = (ref.path, ref.mtime)
    if key not in store:
        store[key] = svc.precomputed_predictions(ref.path)      # shipped beside the checkpoint?
    return store[key]


def all_nb201_predictions(ref: svc.CheckpointRef, text: str, spinner: bool = False) -> np.ndarray:
    """Every NB201 cell's prediction by checkpoint ``ref``, built chunk by chunk the first time.

    The first time shows ``text`` with a progress bar (the cells done so far after it), or with a
    spinner and its timer when ``spinner`` is true (for a page that shows it inside a small section).
    """
    store = prediction_store()
    key = (ref.path, ref.mtime)
    if stored_nb201_predictions(ref) is None:
        spans = svc.chunks(nb201.N_ARCHS)
        if spinner:
            with st.spinner(text, show_time=True):
                parts = [predicted_chunk(ref.path, ref.mtime, a, b, svc.PREDICTIONS_VERSION) for a, b in spans]
        else:
            bar = st.progress(0.0, text=text)
            parts = []
            for k, (a, b) in enumerate(spans):
                parts.append(predicted_chunk(ref.path, ref.mtime, a, b, svc.PREDICTIONS_VERSION))
                bar.progress((k + 1) / len(spans), text=f"{text} {b:,}")
            bar.empty()
        store[key] = svc.assembled_predictions(load_predictor(ref.path, ref.mtime), "nb201", parts)
    return store[key]


@st.cache_data(show_spinner=False)
def nb201_ground_truth(index: int) -> pd.DataFrame:
    return svc.nb201_ground_truth(index)


@st.cache_resource(show_spinner="Loading the latency predictor…", max_entries=4)
def load_latency_predictor(path: str, mtime: float):
    return svc.load_latency_predictor(path, mtime)
