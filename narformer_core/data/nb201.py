"""NAS-Bench-201 ground truth, aligned with ``spaces.nb201.enumerate_all()`` order.

Label sources (each a float array of 15,625 accuracies in %, NaN where unknown):

- ``analog``: AnalogNAS-Bench's independent 200-epoch CIFAR-10 retraining of every cell
  (``baseline_accuracy``), shipped by the ``analog-nasbench`` package: the embedded default,
  available on any fresh machine.
- ``nb201-val``: NB201 CIFAR-10 validation accuracy (cifar10-valid split, 200 epochs), all cells.
- ``nb201-test``: the official NB201 CIFAR-10 test accuracy, only for the 8,689 cells >= 90 %.
- ``nb201-12ep-val`` / ``nb201-12ep-test``: accuracy after only 12 epochs (low fidelity).
- ``zen``: the Zen zero-cost proxy score (not an accuracy; a training-free reference).
"""
from __future__ import annotations

import ast
import pickle
from functools import lru_cache
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from ..graph import GraphError
from ..spaces import nb201
from . import DataUnavailable, shared_file

LABEL_SOURCES = {
    "analog": "AnalogNAS-Bench 200-epoch CIFAR-10 retraining (embedded, all 15,625)",
    "nb201-val": "NB201 CIFAR-10 validation accuracy, 200 epochs (all 15,625)",
    "nb201-test": "NB201 official CIFAR-10 test accuracy (8,689 cells >= 90 % only)",
    "nb201-12ep-val": "NB201 CIFAR-10 validation accuracy after 12 epochs (all 15,625)",
    "nb201-12ep-test": "NB201 CIFAR-10 test accuracy after 12 epochs (all 15,625)",
    "zen": "Zen zero-cost proxy score for CIFAR-10 (training-free, not an accuracy)",
}
# AnalogNAS / NASLib tuples index ops in this order and list edges as (t0, t1, t3, t2, t4, t5)
# of the arch string: |t0~0|+|t1~0|t3~1|+|t2~0|t4~1|t5~2|.
TUPLE_OPS = ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")
TUPLE_TO_EDGE = (0, 1, 3, 2, 4, 5)


def tuple_to_ops(t) -> tuple[str, ...]:
    return tuple(TUPLE_OPS[t[k]] for k in TUPLE_TO_EDGE)


class _AnalogRecord:
    """Stand-in for analognasbench.data.Architecture: we only read its attributes."""

    def __setstate__(self, state):
        self.__dict__.update(state)


class _AnalogUnpickler(pickle.Unpickler):
    """Unpickles the package's data file, allowing its two record classes and nothing else.

    The package's own loader imports pkg_resources (gone from new setuptools) and would accept
    any class; this one refuses everything but plain data.
    """

    def find_class(self, module, name):
        if module == "analognasbench.data" and name in ("Architecture", "DriftMeasurement"):
            return _AnalogRecord
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the AnalogNAS data file")


@lru_cache(maxsize=None)
def _analog() -> np.ndarray:
    # Locate the package's folder without importing it (its __init__ needs pkg_resources).
    spec = importlib.util.find_spec("analognasbench")
    path = Path(next(iter(spec.submodule_search_locations))) / "data.anb" if spec else None
    if path is None or not path.exists():
        raise DataUnavailable("the analog-nasbench package is not installed: pip install analog-nasbench")
    with open(path, "rb") as f:
        table = _AnalogUnpickler(f).load()
    out = np.full(nb201.N_ARCHS, np.nan)
    for key, rec in table.items():
        out[nb201.index_of(tuple_to_ops(key))] = float(rec.baseline_accuracy)
    return out


def _by_arch_str(df: pd.DataFrame, column: str) -> np.ndarray:
    name = df.attrs.get("source", "the label file")
    missing = [c for c in ("arch_str", column) if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks the column(s) {', '.join(missing)}; is it the right file?")
    if len(df) == 0:
        raise ValueError(f"{name} has no data rows")
    out = np.full(nb201.N_ARCHS, np.nan)
    idx = []
    for row, s in enumerate(df["arch_str"]):
        try:
            idx.append(nb201.index_of(nb201.parse(s)))
        except GraphError as e:
            raise ValueError(f"{name}, data row {row + 1}: {e}") from None
    # Unreadable numbers become NaN (unknown), like the benchmark's own gaps; inf is no accuracy.
    vals = np.array(pd.to_numeric(df[column], errors="coerce"), dtype=np.float64)   # a writable copy
    vals[~np.isfinite(vals)] = np.nan
    if np.isnan(vals).all():
        raise ValueError(f"{name}: column {column} holds no numbers")
    out[idx] = vals
    return out


@lru_cache(maxsize=None)
def _read_csv(name: str, data_dir) -> pd.DataFrame:
    path = shared_file(name, data_dir)
    try:
        df = pd.read_csv(path)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path} is not a readable CSV file ({type(e).__name__}: {_first_line(e)})") from None
    df.attrs["source"] = str(path)
    return df


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def load_labels(source: str = "analog", data_dir=None) -> np.ndarray:
    """Labels of one source for all 15,625 cells (enumeration order); a read-only array."""
    if source == "analog":
        arr = _analog()
    elif source in ("nb201-val", "zen"):
        col = "val_acc_cifar10" if source == "nb201-val" else "zen_cifar10"
        arr = _by_arch_str(_read_csv("nb201_full_val_acc_naslib.csv", data_dir), col)
    elif source == "nb201-test":
        arr = _by_arch_str(_read_csv("nb201_nnmeter_acc_ge90_and_latency.csv", data_dir), "cifar10_test_acc_200ep")
    elif source in ("nb201-12ep-val", "nb201-12ep-test"):
        col = "cifar10-val" if source.endswith("val") else "cifar10-test"
        arr = _by_arch_str(_read_csv("nb201_12epoch_acc_minibench.csv", data_dir), col)
    else:
        raise ValueError(f"unknown NB201 label source {source!r}; known: {', '.join(LABEL_SOURCES)}")
    arr = np.array(arr, dtype=np.float64)
    arr.setflags(write=False)
    return arr


def official_index(data_dir=None) -> np.ndarray:
    """Official NB201 index of each cell in enumeration order (from the shared CSV)."""
    df = _read_csv("nb201_full_val_acc_naslib.csv", data_dir)
    out = np.full(nb201.N_ARCHS, -1, dtype=np.int64)
    out[[nb201.index_of(nb201.parse(s)) for s in df["arch_str"]]] = df["nb201_index"].to_numpy()
    return out


def naslib_tuple_ops(text: str) -> tuple[str, ...]:
    """'(4, 3, 3, 0, 0, 0)' -> the 6 ops; used to cross-check the tuple convention."""
    return tuple_to_ops(ast.literal_eval(text))
