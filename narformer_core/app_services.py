"""What the app's pages call: plain functions over the package, no Streamlit in here.

Pages wrap these in ``st.cache_resource`` (models, servers) or ``st.cache_data`` (tables, arrays).
Everything here also works from a notebook or a test. Where a module written by someone else is
not there yet (the ONNX import, network tokens, the model zoo, baselines, a latency predictor),
:func:`optional` answers None and the page says so instead of failing.

Locations, each overridable by an environment variable so that tests and demos can point the app
elsewhere:

- checkpoints: ``$NARFORMER_CHECKPOINT_DIR`` (default ``assets/checkpoints``), plus the best
  checkpoints of training runs under ``$NARFORMER_RUNS_DIR`` (default ``runs/``);
- the latency database: ``$NARFORMER_LATENCY_DB`` (default ``assets/latency.db``);
- benchmark data: ``$NARFORMER_DATA_DIR`` (default ``../shared/data``), see ``data/__init__.py``.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .graph import ArchGraph, GraphError
from .spaces import nb101, nb201

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINTS = ("nb201-781.pt", "nb201-1563.pt")
TRAIN_HINT = ("python -m narformer_core train --space nb201 --train-size 781 --epochs 100 "
              "--out runs/nb201-781-quick")
TRAIN_HINT_NB101 = ("python -m narformer_core train --space nb101 --train-size 80 --val-size 200 "
                    "--epochs 200 --out runs/nb101-quick")
# Uploads above this size are refused before parsing (Streamlit's own limit is set a little above
# it in .streamlit/config.toml, so the user sees our message rather than the uploader's).
MAX_ONNX_BYTES = 50_000_000
MAX_ONNX_NODES = 5000
# Bump when what predict_chunk or assembled_predictions returns changes: the pages' disk caches
# and the shipped NAME.predictions.npz files key on it. 4: NB201 equivalent cells averaged.
PREDICTIONS_VERSION = 4
# The NB201 macro network a cell is measured in (the benchmark's CIFAR-10 network).
NB201_NETWORK = {"channels": 16, "cells_per_stage": 5, "resolution": 32}
SHORT_OPS = {"none": "none", "skip_connect": "skip", "nor_conv_1x1": "conv 1x1",
             "nor_conv_3x3": "conv 3x3", "avg_pool_3x3": "avg pool"}


# ------------------------------------------------------------------ locations and optional modules
def checkpoint_dir() -> Path:
    env = os.environ.get("NARFORMER_CHECKPOINT_DIR")
    return Path(env) if env else PROJECT_ROOT / "assets" / "checkpoints"


def latency_db_path() -> Path | str:
    """The latency database: a SQLite file, or a postgresql:// URL (kept a string) from the env."""
    from .latency.db_backends import is_database_url

    env = os.environ.get("NARFORMER_LATENCY_DB")
    if env and is_database_url(env):
        return env
    return Path(env) if env else PROJECT_ROOT / "assets" / "latency.db"


def latency_db_label() -> str:
    """The latency database's location, safe to show (a URL's password masked)."""
    from .latency.db_backends import mask_url

    return mask_url(latency_db_path())


def optional(module: str):
    """``narformer_core.<module>`` if it exists (and imports), else None."""
    full = f"narformer_core.{module}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as e:
        # Only the module itself missing means "not written yet"; a missing dependency inside it
        # is a real error and must show.
        if e.name and (e.name == full or full.startswith(e.name + ".")):
            return None
        raise


def shared_data_available() -> bool:
    from .data import data_dir

    return (data_dir() / "nb201_full_val_acc_naslib.csv").exists()


# ------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class CheckpointRef:
    path: str
    label: str
    origin: str          # "shipped" or "run"
    space: str | None
    mtime: float


def _space_of_run(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "config.json").read_text()).get("space")
    except (OSError, ValueError):
        return None


def _space_of_file(path: Path) -> str | None:
    for s in ("nb201", "nb101"):
        if path.name.startswith(s):
            return s
    return None


def find_checkpoints(space: str | None = "nb201") -> list[CheckpointRef]:
    """Shipped checkpoints first (the 781 one first), then the best checkpoints of training runs.

    ``space`` keeps only checkpoints of that space where it can be told without loading them
    (file name prefix, or the run's config.json); None keeps all.
    """
    from .runs import runs_dir

    out: list[CheckpointRef] = []
    cdir = checkpoint_dir()
    if cdir.is_dir():
        files = sorted(cdir.glob("*.pt"), key=lambda p: (p.name not in SHIPPED_CHECKPOINTS,
                                                         SHIPPED_CHECKPOINTS.index(p.name) if p.name in SHIPPED_CHECKPOINTS else 0,
                                                         p.name))
        for p in files:
            s = _space_of_file(p)
            if space is None or s in (space, None):
                out.append(CheckpointRef(str(p), f"{p.stem} (shipped)", "shipped", s, p.stat().st_mtime))
    rdir = runs_dir()
    if rdir.is_dir():
        for run in sorted(rdir.iterdir(), key=lambda p: p.name):
            if not run.is_dir():
                continue
            s = _space_of_run(run)
            if space is not None and s not in (space, None):
                continue
            for name in ("best_ema.pt", "best.pt"):
                p = run / name
                if p.exists():
                    out.append(CheckpointRef(str(p), f"runs/{run.name}/{name}", "run", s, p.stat().st_mtime))
    return out


def load_predictor(path: str, mtime: float | None = None):
    """A NARFormerPredictor (``mtime`` only keys the caller's cache: a rewritten best.pt reloads)."""
    import torch

    from .predictors import NARFormerPredictor

    # One intra-op thread. Measured on the project's shared 2-core machine (load ~5): one cell took
    # 24 ms with 1 thread and 840 ms with 2 (every small op waits for the second thread to be
    # scheduled), and 1,024 cells 2.5 s against 8 s. The app mostly predicts one cell at a time.
    torch.set_num_threads(1)
    return NARFormerPredictor.from_checkpoint(path)


def checkpoint_summary(predictor) -> dict:
    m = predictor.meta
    tc = m.get("train_config", {})
    return {"space": m.get("task", {}).get("space"), "labels": m.get("task", {}).get("labels"),
            "kind": m.get("kind"), "epoch": m.get("epoch"), "val_tau": m.get("val_tau"),
            "train_size": len(m.get("train_idx", ())), "val_size": len(m.get("val_idx", ())),
            "seed": tc.get("seed"), "params": predictor.model.n_params(),
            "members": len(m.get("members", ())), "selection": selection_text(m)}


def selection_text(meta: dict) -> str:
    """Where a checkpoint's validation tau comes from, for a caption: one epoch, or an ensemble."""
    if meta.get("members"):
        return f"of the mean of {len(meta['members'])} runs on one split"
    return f"at epoch {meta.get('epoch')}"


def validation_text(info: dict) -> str:
    """'validation tau 0.899 at epoch 41' for a checkpoint_summary; a file may not record it
    (an ensemble assembled without scripts/package_ensemble.py)."""
    if not isinstance(info.get("val_tau"), (int, float)):
        return "validation tau not recorded"
    return f"validation tau {info['val_tau']:.3f} {info['selection']}"


def equivalence_text(ops: Sequence[str]) -> str | None:
    """Why a cell shares its prediction with other cells (None if it has no equivalent)."""
    ops = tuple(ops)
    cls = nb201.equivalence_classes()
    others = int((cls == cls[nb201.index_of(ops)]).sum()) - 1
    if others == 0:
        return None
    if all(o == "none" for o in nb201.canonical(ops)):
        return (f"No path of ops joins this cell's input to its output, so it outputs zeros, like "
                f"{others:,} other cells. Its prediction is the mean over all of them.")
    why = []
    dead = nb201.dead_edges(ops)
    if dead:
        edges = ", ".join(f"{s}→{t}" for s, t in dead)
        why.append(f"edge{'s' if len(dead) > 1 else ''} {edges} carr{'y' if len(dead) > 1 else 'ies'} "
                   "nothing to the output, so {} op does not matter".format("their" if len(dead) > 1 else "its"))
    live = nb201.canonical(ops)
    if live[2] == "none" and (live[0], live[4]) != (live[1], live[5]):
        why.append("with edge 1→2 empty, nodes 1 and 2 are parallel branches that can swap")
    return (f"This cell computes the same function as {others:,} other cell{'s' if others > 1 else ''} "
            f"({'; '.join(why)}). Its prediction is the mean over all of them.")


def predict_graph(predictor, graph: ArchGraph) -> float:
    return float(predictor.predict_graphs([graph])[0])


def predict_chunk(predictor, space: str, start: int, stop: int) -> np.ndarray:
    """Predicted accuracy (%) of architectures start..stop-1 of the space's task (enumeration order)."""
    import torch

    from .tasks import load_task
    from .train import predict_tokens

    if predictor.space != space:
        raise GraphError(f"this checkpoint predicts {predictor.space} cells, not {space}")
    # Tokens do not depend on labels: the space's embedded default task has every cell in
    # enumeration order even where the checkpoint's own label source is not on this machine.
    task = load_task(space)
    tk = task.tokens(predictor.scheme)
    sl = slice(start, min(stop, len(task)))
    mask = tk.mask[sl]
    raw = predict_tokens(predictor.model, torch.from_numpy(tk.depth[sl]), torch.from_numpy(tk.nodes[sl]),
                         None if mask.all() else torch.from_numpy(mask))
    # The checkpoint's target map (fraction or quantile of the training labels) gives back percent.
    if hasattr(predictor, "to_percent"):
        return np.asarray(predictor.to_percent(raw), dtype=np.float64)
    return np.asarray(raw, dtype=np.float64) * 100.0


def chunks(n: int, size: int = 1024) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def predictions_file(checkpoint: str | Path) -> Path:
    """Where precomputed NB201 predictions of a checkpoint live: NAME.predictions.npz beside it."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".predictions.npz")


def _sha256(path: Path) -> str:
    from .latency.calibration import file_sha256

    return file_sha256(path)


def write_precomputed_predictions(checkpoint: str | Path, predictions: np.ndarray) -> Path:
    """Store every NB201 cell's prediction beside ``checkpoint``, tied to its bytes (sha256).

    The shipped 16-run ensemble takes about two minutes to predict all 15,625 cells on one thread;
    shipped beside it, the app's first ranking is instant on a fresh machine. An ensemble saved
    across files is covered too: its main file records each part file's sha256.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.shape != (nb201.N_ARCHS,) or not np.isfinite(predictions).all():
        raise ValueError(f"expected {nb201.N_ARCHS:,} finite predictions, got shape {predictions.shape}")
    out = predictions_file(checkpoint)
    np.savez_compressed(out, predictions=predictions, sha256=np.array(_sha256(Path(checkpoint))),
                        version=np.array(PREDICTIONS_VERSION))
    return out


def precomputed_predictions(checkpoint: str | Path) -> np.ndarray | None:
    """The stored predictions of this very checkpoint file, or None (none stored, made for other
    bytes or by an older predict_chunk, or unreadable: then the app predicts as usual)."""
    side = predictions_file(checkpoint)
    if not side.is_file():
        return None
    try:
        with np.load(side, allow_pickle=False) as z:   # never unpickle: plain arrays only
            if int(z["version"]) != PREDICTIONS_VERSION or str(z["sha256"]) != _sha256(Path(checkpoint)):
                return None
            pred = np.asarray(z["predictions"], dtype=np.float64)
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return pred if pred.shape == (nb201.N_ARCHS,) and np.isfinite(pred).all() else None


def assembled_predictions(predictor, space: str, parts: list[np.ndarray]) -> np.ndarray:
    """The chunks of predict_chunk joined into the whole space's predictions, finished as
    NARFormerPredictor.predict finishes them: NB201 cells averaged over their equivalents (an
    average that spans chunks, hence done here and not per chunk)."""
    out = np.concatenate(parts)
    if getattr(predictor, "averages_equivalents", lambda s: False)(space) and len(out) == nb201.N_ARCHS:
        out = nb201.mean_over_equivalents(out)
    return out


def predict_all(predictor, space: str = "nb201", progress: Callable[[float], None] | None = None,
                chunk: int = 1024) -> np.ndarray:
    """Predicted accuracy (%) of every architecture of the space's task, in chunks."""
    from .tasks import load_task

    n = len(load_task(space))
    parts = []
    for k, (a, b) in enumerate(chunks(n, chunk)):
        parts.append(predict_chunk(predictor, space, a, b))
        if progress:
            progress((k + 1) / len(chunks(n, chunk)))
    return assembled_predictions(predictor, space, parts)


def rank_and_percentile(value: float, population: np.ndarray) -> tuple[int, float]:
    """Rank (1 = highest) of ``value`` among ``population`` and the share (%) of it strictly below."""
    pop = np.asarray(population, dtype=np.float64)
    pop = pop[np.isfinite(pop)]
    higher = int(np.sum(pop > value))
    lower = int(np.sum(pop < value))
    return higher + 1, 100.0 * lower / max(1, len(pop))


def ranks_descending(values: np.ndarray) -> np.ndarray:
    """Rank of every entry, 1 = highest; ties share the best rank; NaN stays NaN."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    s = np.sort(v[ok])
    # Rank = 1 + how many are strictly higher.
    out[ok] = 1 + (len(s) - np.searchsorted(s, v[ok], side="right"))
    return out


# ------------------------------------------------------------------ NB201
def nb201_default_cell() -> tuple[str, ...]:
    return nb201.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")


def nb201_edge_names() -> list[str]:
    return [f"edge {s} → {t}" for s, t in nb201.EDGES]


def nb201_sources() -> dict[str, str]:
    """Label sources available on this machine: analog always, the shared NB201 ones when present."""
    from .data.nb201 import LABEL_SOURCES

    keep = ["analog"]
    if shared_data_available():
        keep += ["nb201-val", "nb201-test", "nb201-12ep-val"]
    return {k: LABEL_SOURCES[k] for k in keep}


@lru_cache(maxsize=None)
def nb201_labels(source: str) -> np.ndarray:
    """Labels of one source (read-only, cached: the loader re-parses 15,625 arch strings per call,
    about a second of every composed cell's ground truth before this cache)."""
    from .data.nb201 import load_labels

    return load_labels(source)


def nb201_ground_truth(index: int) -> pd.DataFrame:
    """One row per available label source: accuracy of cell ``index`` and its true rank."""
    rows = []
    for src, desc in nb201_sources().items():
        y = nb201_labels(src)
        v = float(y[index])
        known = int(np.isfinite(y).sum())
        if np.isfinite(v):
            rank, pct = rank_and_percentile(v, y)
            rows.append({"source": src, "accuracy %": round(v, 2), "true rank": f"{rank:,} / {known:,}",
                         "percentile": round(pct, 1), "what": desc})
        else:
            rows.append({"source": src, "accuracy %": None, "true rank": f"unknown (not among the {known:,})",
                         "percentile": None, "what": desc})
    return pd.DataFrame(rows)


def nb201_table() -> pd.DataFrame:
    """Every NB201 cell with every available label source side by side (enumeration order)."""
    cells = nb201.enumerate_all()
    df = pd.DataFrame({"index": np.arange(len(cells)), "arch_str": [nb201.to_arch_str(c) for c in cells]})
    for k, name in enumerate(nb201_edge_names()):
        df[name] = [SHORT_OPS[c[k]] for c in cells]
    for src in nb201_sources():
        df[src] = nb201_labels(src)
    if shared_data_available():
        from .data.nb201 import official_index

        df.insert(1, "nb201_index", official_index())
    return df


# ------------------------------------------------------------------ NB101
NB101_DEFAULT_MATRIX = np.array([
    [0, 1, 1, 0, 0, 0, 0],
    [0, 0, 0, 1, 0, 0, 0],
    [0, 0, 0, 0, 1, 0, 0],
    [0, 0, 0, 0, 0, 1, 0],
    [0, 0, 0, 0, 0, 1, 0],
    [0, 0, 0, 0, 0, 0, 1],
    [0, 0, 0, 0, 0, 0, 0]])
NB101_DEFAULT_OPS = ["input", "conv3x3-bn-relu", "conv1x1-bn-relu", "conv3x3-bn-relu", "maxpool3x3",
                     "conv3x3-bn-relu", "output"]


def nb101_table(source: str = "naslib-500-unique") -> pd.DataFrame:
    from .data.nb101 import load_nb101

    t = load_nb101(source)
    return pd.DataFrame({"module_hash": t.hashes, "nodes": [len(g) for g in t.graphs],
                         "edges": [len(g.edges()) for g in t.graphs],
                         "ops": [", ".join(g.ops[1:-1]) for g in t.graphs],
                         "val_acc": t.val_acc, "test_acc": t.test_acc, "params": t.params})


def nb101_ground_truth(module_hash: str) -> pd.DataFrame:
    """Accuracy and true rank of an NB101 module in the shipped cells (empty when it is not there)."""
    rows = []
    try:
        df = nb101_table()
    except (FileNotFoundError, ValueError):
        return pd.DataFrame(rows)
    hit = df[df["module_hash"] == module_hash]
    if len(hit):
        v = float(hit["val_acc"].iloc[0])
        rank, pct = rank_and_percentile(v, df["val_acc"].to_numpy())
        rows.append({"source": "naslib-500-unique", "accuracy %": round(v, 2),
                     "true rank": f"{rank} / {len(df)}", "percentile": round(pct, 1),
                     "what": "NB101 108-epoch validation accuracy (NASLib cells)"})
    return pd.DataFrame(rows)


def nb101_graph(matrix, ops: Sequence[str]) -> ArchGraph:
    # Passed as given: nb101.to_graph checks entries and ops and says what is wrong (a cast to
    # int64 here turned 0.5 into 0 and NaN into a huge negative number, and list(None) failed).
    return nb101.to_graph(matrix, ops)


# ------------------------------------------------------------------ tokens
def cell_token_matrix(graph: ArchGraph) -> tuple[np.ndarray, list[str], list[str]]:
    """(n + 1, 192) cell tokens incl. the end token, row labels, and the part of each column."""
    from .tokenizer import cell_token_labels, tokenize_graphs

    tk = tokenize_graphs([graph])
    n = len(graph)
    rows = [f"{i} {op}" for i, op in enumerate(graph.ops)] + [f"{n} end token"]
    return tk.nodes[0, : n + 1], rows, cell_token_labels()


def network_token_matrix(graph: ArchGraph) -> tuple[np.ndarray, list[str], list[str]]:
    """(n + 1, 480) network tokens incl. the end token, row labels, and the slot of each column."""
    from .network_tokenizer import slot_labels, tokenize_network

    tk = tokenize_network(graph)
    n = len(graph)
    rows = [f"{i} {node.op}" + (f" ({node.name})" if node.name and node.name != node.op else "")
            for i, node in enumerate(graph.nodes)] + [f"{n} end token"]
    return tk.nodes, rows, slot_labels()


# ------------------------------------------------------------------ whole networks
def import_onnx(data: bytes, max_bytes: int | None = None, max_nodes: int | None = None) -> ArchGraph:
    """Uploaded bytes -> graph. Raises GraphError/ValueError with a sentence for any bad input.

    Limits default to MAX_ONNX_BYTES / MAX_ONNX_NODES as they are at call time.
    """
    mod = optional("onnx_import")
    if mod is None:
        raise GraphError("the ONNX import (narformer_core/onnx_import.py) is not available yet")
    if not data:
        raise GraphError("the file is empty (0 bytes): not an ONNX model")
    return mod.load_onnx(bytes(data), max_bytes=max_bytes or MAX_ONNX_BYTES, max_nodes=max_nodes or MAX_ONNX_NODES)


def static_features(graph: ArchGraph) -> dict:
    mod = optional("features")
    if mod is None:
        raise GraphError("static features (narformer_core/features.py) are not available yet")
    return mod.static_features(graph)


def human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".strip()


def nb201_network_spec(ops: Sequence[str]) -> dict:
    return {"family": "nasbench201", "resolution": NB201_NETWORK["resolution"], "batch_size": 1,
            "arch": nb201.to_arch_str(ops), "channels": NB201_NETWORK["channels"],
            "cells_per_stage": NB201_NETWORK["cells_per_stage"]}


# The Model zoo tab offers every family the project can build: the zoo's ten (measured, the
# predictors' training families), the outside-zoo test families and the training-only ones.
FAMILY_KINDS = {"latency.zoo": "zoo", "latency.outside_zoo": "outside the zoo",
                "latency.extra_families": "training-only"}


def network_families() -> list[tuple[str, str]]:
    """[(family, kind)] of every family a module here can build, the zoo's first."""
    out = []
    for module, kind in FAMILY_KINDS.items():
        m = optional(module)
        out += [(f, kind) for f in (m.FAMILIES if m is not None else ())]
    return out


def _family_module(family: str):
    families = optional("latency.families")
    if families is None:
        zoo = optional("latency.zoo")
        if zoo is None:
            raise GraphError("the model zoo (narformer_core/latency/zoo.py) is not available yet")
        return zoo
    return families.network_module(family)


def zoo_spec(family: str, seed: int, resolution: int | None = None) -> dict:
    """A random variant (seeded) of any buildable family, optionally at another resolution."""
    spec = _family_module(family).sample_spec(family, np.random.default_rng(int(seed)))
    if resolution:
        spec["resolution"] = int(resolution)
    return spec


def zoo_onnx(spec_json: str) -> bytes:
    """ONNX bytes of a family spec (given as JSON so that callers can cache on a string)."""
    spec = json.loads(spec_json)
    return _family_module(spec.get("family")).export_onnx(spec)


def zoo_describe(spec: dict) -> str:
    try:
        return _family_module(spec.get("family")).describe(spec)
    except (GraphError, ValueError):
        return json.dumps(spec)


LATENCY_TRAIN_HINT = ("python -m narformer_core latency train --dataset assets/latency/zoo2000_s14.jsonl.gz "
                      "--column refnorm_ms --out assets/latency/narformer_latency.pt")


def latency_dir() -> Path:
    """Where latency predictor checkpoints and the measured zoo data set live."""
    env = os.environ.get("NARFORMER_LATENCY_DIR")
    return Path(env) if env else PROJECT_ROOT / "assets" / "latency"


def latency_predictor_status() -> str | None:
    """None when narformer_core has no latency predictor module; else its module name."""
    return "narformer_core.latency.predictors" if optional("latency.predictors") is not None else None


def latency_checkpoints() -> list[Path]:
    """Trained latency predictors (``*.pt`` in the latency folder), the shipped NAR-Former one first."""
    d = latency_dir()
    if not d.is_dir():
        return []
    return sorted(d.glob("*.pt"), key=lambda p: (p.name != "narformer_latency.pt", p.name))


def load_latency_predictor(path: str, mtime: float | None = None):
    mod = optional("latency.predictors")
    if mod is None:
        raise GraphError("no latency predictor module (narformer_core/latency/predictors.py) yet")
    return mod.load_predictor(path)


def predict_latency(predictor, graphs: Sequence[ArchGraph]) -> np.ndarray:
    return np.asarray(predictor.predict(list(graphs)), dtype=np.float64)


@lru_cache(maxsize=1)
def here_platform_key() -> str:
    """This machine's platform key for one thread, batch 1 (what the app measures with)."""
    from .latency.measure import platform_info, platform_key

    return platform_key(platform_info(1, 1))


def same_platform(checkpoint_platform: str | None) -> bool:
    from .latency.measure import platform_keys_compatible

    return bool(checkpoint_platform) and platform_keys_compatible(str(checkpoint_platform), here_platform_key())


def latency_calibration(checkpoint: str | Path):
    """(this machine's calibration of ``checkpoint`` or None, an error message or None)."""
    from .latency.calibration import CalibrationError, find_calibration

    try:
        return find_calibration(checkpoint, here_platform_key()), None
    except (CalibrationError, OSError) as e:
        return None, str(e)


def calibrate_latency_here(checkpoint: str | Path, networks: int,
                           progress: Callable[[int, int, str], None] | None = None):
    """Time ``networks`` zoo networks here, store them in the latency database and fit this
    machine's calibration of ``checkpoint`` (``latency calibrate`` from the app)."""
    from .latency.calibration import calibrate_checkpoint

    db = open_latency_db()
    try:
        cal, _, _ = calibrate_checkpoint(checkpoint, networks=int(networks), progress=progress, db=db,
                                         default_dataset=PROJECT_ROOT / "assets" / "latency" / "zoo2000_s14.jsonl.gz")
    finally:
        db.close()
    return cal


def calibration_sentence(cal) -> str:
    loo = cal.loo or {}
    return (f"Calibrated on {cal.n} zoo networks timed here ({cal.fitted_at[:16].replace('T', ' ')} UTC): this "
            f"machine runs them {cal.speed_ratio:.2f}x the checkpoint's milliseconds on {cal.checkpoint_platform}. "
            f"Leave-one-out over those networks: {loo.get('uncorrected_mape', float('nan')):.1f}% MAPE as the "
            f"checkpoint predicts, {loo.get('ratio_only_mape', float('nan')):.1f}% scaled by the ratio, "
            f"{loo.get('calibrated_mape', float('nan')):.1f}% calibrated.")


def unseen_latency_ops(predictor, graph: ArchGraph) -> list[str]:
    """Operator types of ``graph`` that none of ``predictor``'s training networks had (NAR-Former
    checkpoints from session 14 on record them; others give an empty list)."""
    unseen = getattr(predictor, "unseen_ops", None)
    return list(unseen(graph)) if callable(unseen) else []


def latency_pretraining(meta: dict) -> list[dict]:
    """The pretraining records of a latency checkpoint: its own, or those of the fits it was merged
    from (``latency merge``), in order; empty when it was never pretrained."""
    parts = [meta["pretrain"]] if isinstance(meta.get("pretrain"), dict) else []
    parts += [m["pretrain"] for m in meta.get("merged_from") or []
              if isinstance(m, dict) and isinstance(m.get("pretrain"), dict)]
    return parts


def pretraining_sentence(meta: dict) -> str | None:
    """One sentence saying how a latency checkpoint was pretrained (None if it was not)."""
    parts = latency_pretraining(meta)
    if not parts:
        return None

    def what(pre: dict) -> str:
        proxy = str(pre.get("proxy") or "operator-cost sum")
        # "operator-cost sum" before session 20, "operator-cost sum (channel blocks)" since.
        blocks = " (its kinds split by channel blocks)" if "channel blocks" in proxy else ""
        source = (f"the operator-cost sum{blocks} fitted on its training networks" if proxy.startswith("operator-cost sum")
                  else "a teacher ensemble fitted on the same training networks (self-training)")
        return f"{int(pre.get('networks', 0)):,} unmeasured zoo networks (`{pre.get('set')}`; their latency from {source})"

    if len(parts) == 1 and not meta.get("merged_from"):
        return f"Pretrained on {what(parts[0])} before it was fitted to the measured ones."
    merged = meta.get("merged_from") or []
    return (f"An ensemble of {meta.get('members', '?')} networks from {len(merged)} fits on the same training "
            "networks: " + "; ".join(f"{m.get('members', '?')} pretrained on {what(m['pretrain'])}"
                                     if isinstance(m.get("pretrain"), dict) else f"{m.get('members', '?')} not pretrained"
                                     for m in merged) + ".")


def extra_training_sentence(meta: dict, prior_weight: float = 0.0) -> str | None:
    """What else a latency checkpoint learnt from beyond its own data set's training networks:
    measured networks of ``--extra-train`` files (session 21) and the cost-sum prior's blend
    (``prior_weight``: the loaded predictor's, which is what it predicts with).
    Why: "never saw N of M networks" alone would let a reader assume it trained on the rest only."""
    from .latency.dataset import extra_train_paths

    out = []
    files = [Path(p).name for p in extra_train_paths(meta)]
    n = (meta.get("extra_train") or {}).get("n")
    if files and n:
        out.append(f"It also trained on {int(n):,} further measured networks that are not in that set "
                   f"({', '.join(f'`{f}`' for f in files)}).")
    w = float(prior_weight or 0.0)
    if w > 0:
        out.append(f"Its prediction is blended (in log) with the operator-cost sum's, weight {w:.2f} "
                   "chosen on its validation networks.")
    return " ".join(out) or None


def cost_breakdown(predictor, graph: ArchGraph) -> list[dict] | None:
    """The operator-cost sum's estimate per operator kind of ``graph``, when ``predictor`` has one
    (the "opcost" kind, or NAR-Former with ``offset="opcost"``, whose residual multiplies it)."""
    from .latency.op_cost import OperatorCostModel

    model = getattr(predictor, "offset_model", None) if predictor.kind == "narformer" else getattr(predictor, "model", None)
    return model.breakdown(graph) if isinstance(model, OperatorCostModel) else None


DEV_LATENCY_SET = "zoo_cpu.jsonl.gz"   # the 150-network development set, the fallback reference


def latency_reference_file(meta: dict | None = None) -> Path:
    """The measured networks a latency predictor is compared with.

    The data set it was trained on (``meta["dataset"]``) when that file is in the latency folder:
    its labels are the statistic the predictor learned, and the networks it held out can be told
    apart. Otherwise the development set.
    """
    name = _dataset_name(meta)
    own = latency_dir() / name if name else None
    return own if own is not None and own.is_file() else latency_dir() / DEV_LATENCY_SET


def _dataset_name(meta: dict | None) -> str:
    """File name of the data set a latency predictor's metadata says it was trained on ('' if none)."""
    return Path(str((meta or {}).get("dataset") or "")).name


def held_out_rows(meta: dict, reference: Path, n_rows: int) -> np.ndarray | None:
    """Rows of ``reference`` the predictor never trained on, or None when that is unknown.

    Known only when the reference is the predictor's own data set, whole (the same network count
    as at training), and its metadata lists the test networks (``bench latency --save-in-domain``
    and the shipped checkpoints do).
    """
    idx = meta.get("test_indices")
    if idx is None or _dataset_name(meta) != reference.name or meta.get("n_networks") != n_rows:
        return None
    idx = np.unique(np.asarray(idx, dtype=np.int64))
    return idx if idx.size and idx[0] >= 0 and idx[-1] < n_rows else None


def latency_dataset(platform_key: str | None = None, column: str = "median_ms",
                    path: str | os.PathLike | None = None, graphs: bool = True) -> pd.DataFrame:
    """Measured zoo networks, one row each, graph included unless ``graphs`` is False (building
    2,000 graphs is a third of the time to read them): ``path`` (a data set file), by default the
    development set (assets/latency/zoo_cpu.jsonl.gz).

    ``latency_ms`` holds ``column`` (what a predictor was trained on, e.g. ``min_ms``), so that a
    prediction is ranked against the same statistic; ``median_ms`` is always there too. A
    statistic the reference set lacks falls back to its medians.
    """
    from .latency.dataset import LATENCY_COLUMNS, load_records, record_graph, select_records

    path = Path(path) if path is not None else latency_dir() / DEV_LATENCY_SET
    if not path.exists():
        return pd.DataFrame()
    if platform_key is None:
        keys = sorted({r.get("platform_key") for r in load_records(path)})
        platform_key = keys[0] if keys else None
    records, ms = select_records(path, platform_key=platform_key)
    known = column in LATENCY_COLUMNS and all(column in r for r in records)
    chosen = np.array([float(r[column]) for r in records]) if known else ms
    frame = pd.DataFrame({"family": [r.get("family") for r in records],
                          "description": [r.get("description") for r in records],
                          "median_ms": ms, "latency_ms": chosen,
                          "platform_key": [r.get("platform_key") for r in records]})
    if graphs:
        frame["graph"] = [record_graph(r) for r in records]
    return frame


def heldout_predictions_file(checkpoint: str | os.PathLike) -> Path:
    """Where a latency checkpoint's predictions of its held-out networks are kept (beside it)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".heldout.json")


def write_heldout_predictions(checkpoint: str | os.PathLike, reference: str | os.PathLike, column: str,
                              rows: Sequence[int], predictions: Sequence[float]) -> Path:
    out = heldout_predictions_file(checkpoint)
    out.write_text(json.dumps({"checkpoint_sha256": _sha256(Path(checkpoint)), "reference": Path(reference).name,
                               "column": column, "rows": [int(i) for i in rows],
                               "predictions_ms": [float(x) for x in predictions],
                               "made_by": f"python scripts/precompute_latency_heldout.py {Path(checkpoint).name}"}))
    return out


def heldout_predictions(checkpoint: str | os.PathLike, reference: str | os.PathLike, column: str,
                        rows: Sequence[int]) -> np.ndarray | None:
    """The stored predictions of ``rows`` when they were made by this very checkpoint file (its
    SHA-256) for the same reference set, statistic and rows; else None (the caller predicts)."""
    path = heldout_predictions_file(checkpoint)
    try:
        d = json.loads(path.read_text())
        ok = (d["checkpoint_sha256"] == _sha256(Path(checkpoint)) and d["reference"] == Path(reference).name
              and d["column"] == column and [int(i) for i in d["rows"]] == [int(i) for i in rows])
        pred = np.asarray(d["predictions_ms"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pred if ok and pred.shape == (len(rows),) and np.all(np.isfinite(pred)) else None


# ------------------------------------------------------------------ latency database
def open_latency_db():
    from .latency.db import LatencyDB

    path = latency_db_path()
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    return LatencyDB(path)


def measure_and_store(onnx_bytes: bytes, graph: ArchGraph, family: str | None = None,
                      description: str | None = None, repeats: int = 30) -> dict:
    """Time the model here (onnxruntime, 1 thread, batch 1) and store it in the latency DB."""
    from .latency.measure import measure_onnx

    m = measure_onnx(onnx_bytes, threads=1, warmup=5, repeats=repeats)
    db = open_latency_db()
    try:
        h = db.add_graph(graph, family=family, description=description)
        rid = db.add_measurement(h, m.platform_key, m, source="measured", note="measured from the app")
    finally:
        db.close()
    return {"id": rid, "graph_hash": h, "platform_key": m.platform_key, "median_ms": m.median_ms,
            "min_ms": m.min_ms, "iqr_ms": m.iqr_ms, "repeats": m.repeats, "measured_at": m.measured_at}


def stored_latency(graph: ArchGraph) -> pd.DataFrame:
    """Every stored latency of this graph (all platforms, newest first); empty when none/no DB."""
    path = latency_db_path()
    if isinstance(path, Path) and not path.exists():
        return pd.DataFrame()
    db = open_latency_db()
    try:
        df = db.list_measurements()
    finally:
        db.close()
    return df[df["graph_hash"] == graph.stable_hash()].reset_index(drop=True)


def latency_db_contents() -> tuple[pd.DataFrame, dict]:
    path = latency_db_path()
    if isinstance(path, Path) and not path.exists():
        return pd.DataFrame(), {"path": str(path), "graphs": 0, "measurements": 0}
    db = open_latency_db()
    try:
        return db.list_measurements(), db.stats()
    finally:
        db.close()


# ------------------------------------------------------------------ device latency (published)
def nb201_device_table() -> pd.DataFrame:
    """Latency (ms) of all 15,625 NB201 cells on the 27 HELP settings and the 4 nn-Meter devices."""
    from .data.latency_sets import NB201_DEVICES, nb201_device_latency

    df = pd.DataFrame({"index": np.arange(nb201.N_ARCHS),
                       "arch_str": [nb201.to_arch_str(c) for c in nb201.enumerate_all()]})
    for d in NB201_DEVICES:
        df[d] = nb201_device_latency(d)
    return df


def device_descriptions() -> dict[str, str]:
    from .data.latency_sets import DEVICE_DESCRIPTIONS

    return dict(DEVICE_DESCRIPTIONS)


def cell_on_devices(index: int, table: pd.DataFrame) -> pd.DataFrame:
    """The cell's latency on every device, with its percentile there (100 = slowest)."""
    desc = device_descriptions()
    rows = []
    for d in desc:
        col = table[d].to_numpy()
        v = float(col[index])
        known = col[np.isfinite(col)]
        rows.append({"device": d, "description": desc[d], "latency ms": v if np.isfinite(v) else None,
                     "percentile (faster than)": round(100.0 * float(np.mean(known > v)), 1) if np.isfinite(v) else None,
                     "median ms (all cells)": float(np.median(known)) if known.size else None})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ rankings
def ranking_frame(pred: np.ndarray, truth: np.ndarray, ids: Sequence[str], seen: np.ndarray | None = None) -> pd.DataFrame:
    """Per architecture: prediction, truth, their ranks (1 = best) and the rank error."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(truth) & np.isfinite(pred)
    df = pd.DataFrame({"arch": np.asarray(ids, dtype=object)[ok], "predicted": pred[ok], "truth": truth[ok]})
    df["predicted rank"] = ranks_descending(df["predicted"].to_numpy()).astype(int)
    df["true rank"] = ranks_descending(df["truth"].to_numpy()).astype(int)
    df["rank error"] = df["predicted rank"] - df["true rank"]
    if seen is not None:
        df["used in training"] = np.asarray(seen)[ok]
    return df


def kendall(pred, truth) -> float:
    from .metrics import kendall_tau

    return kendall_tau(pred, truth)


def baseline_names() -> list[str]:
    mod = optional("baselines")
    if mod is None or not hasattr(mod, "PREDICTORS"):
        return []
    return [n for n in mod.PREDICTORS if n != "narformer"]


def fit_baseline(name: str, predictor, labels: str | None = None, seed: int = 0) -> np.ndarray:
    """Fit baseline ``name`` on the checkpoint's own training split; predictions for all cells.

    ``labels`` replaces the checkpoint's label source (same cells, other measurements).
    """
    mod = optional("baselines")
    if mod is None:
        raise GraphError("baselines (narformer_core/baselines.py) are not available yet")
    task = predictor.task(labels, labels) if labels else predictor.task()
    b = mod.make_predictor(name)
    b.fit(task, predictor.meta["train_idx"], predictor.meta["val_idx"], seed=seed)
    return np.asarray(b.predict(task), dtype=np.float64)


# ------------------------------------------------------------------ netron
def netron_available() -> bool:
    return importlib.util.find_spec("netron") is not None


def serve_netron(name: str, data: bytes) -> str:
    """Serve ``data`` with Netron on 127.0.0.1 (a free port, a daemon thread); returns the URL."""
    import netron

    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "model.onnx"
    if not safe.endswith(".onnx"):
        safe += ".onnx"
    host, port = netron.serve(safe, bytearray(data), address=("127.0.0.1", 0), browse=False)
    return f"http://{host}:{port}"


@lru_cache(maxsize=1)
def netron_version() -> str:
    try:
        import netron

        return netron.__version__
    except ImportError:
        return ""
