"""Carry a latency checkpoint over to the machine it runs on: a few networks timed here correct it.

A checkpoint predicts the milliseconds of the host its labels were timed on (its ``platform_key``).
Another CPU runs the same networks at another speed, and not at one ratio: session 18's Intel Xeon
(family 6 model 167) ran the zoo 1.19-1.43x slower than the AMD host of the labels of record,
depending on the family (assets/latency/README.md, session 18). So a calibration has two parts,
both fitted on the log ratio ``log(measured here / predicted)`` of K calibration networks:

- ``log_scale``: the median log ratio, one speed ratio between the two machines;
- a local correction: the calibration networks' residuals around that ratio, averaged with
  Gaussian weights in the space of the networks' standardized static features (log batch size,
  FLOPs, parameters, memory access), plus a pseudo-count of ``prior_weight`` networks at zero. A
  network like no calibration network gets the global ratio alone; one close to several gets their
  shared deviation. The kernel width is chosen by leave-one-out over the calibration networks.

Why these features and this form (session 18, chosen on a 106-network pilot, then scored on other
networks; assets/latency/README.md): corrections by the operator-cost sum's time share per
operator category, or per operator kind (a ridge regression), did worse than the ratio alone,
and the static features alone did better than static features with category shares.

A calibration is tied to one checkpoint file (its SHA-256) and one platform key: it is plain JSON,
never unpickled, and refuses to apply anywhere else.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..graph import ArchGraph

BANDWIDTHS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)   # in standard deviations of the features
PRIOR_WEIGHT = 1.0      # pseudo-networks at the global ratio (not tuned: one network's worth)
MIN_NETWORKS = 3
SCHEMA = 1


class CalibrationError(ValueError):
    """A calibration that cannot be fitted, read or applied here (the message says why)."""


def file_sha256(path: str | os.PathLike) -> str:
    """The file's SHA-256, remembered while its size and modification time stay the same: the app
    asks for a 15 MB checkpoint's on every rerun of a page (its calibration and stored predictions
    are keyed by it)."""
    st = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def calibration_features(graphs: Sequence[ArchGraph]) -> np.ndarray:
    """(N, 4) log1p of batch size, FLOPs, parameters and memory access (the predictors' own)."""
    from .predictors import static_log_features

    return static_log_features(graphs)


def _local(train_x: np.ndarray, train_r: np.ndarray, x: np.ndarray, bandwidth: float,
           prior_weight: float) -> np.ndarray:
    """Kernel-weighted mean of ``train_r`` at each row of ``x``, shrunk towards 0."""
    d2 = ((x[:, None, :] - train_x[None, :, :]) ** 2).sum(-1)
    w = np.exp(-d2 / (2.0 * bandwidth * bandwidth))
    return (w @ train_r) / (w.sum(1) + prior_weight)


@dataclass
class HostCalibration:
    """One checkpoint's correction for one platform; ``apply`` turns its predictions into ms here."""

    platform_key: str                 # where the calibration networks were timed
    checkpoint_sha256: str
    checkpoint_platform: str          # where the checkpoint's labels were timed
    log_scale: float
    bandwidth: float
    prior_weight: float
    feature_mean: list[float]
    feature_std: list[float]
    features: list[list[float]]       # raw calibration features, one row per network
    residuals: list[float]            # log(measured / predicted) - log_scale
    measured_ms: list[float]
    predicted_ms: list[float]
    names: list[str] = field(default_factory=list)
    graph_hashes: list[str] = field(default_factory=list)
    loo: dict = field(default_factory=dict)   # leave-one-out MAPE: uncorrected, ratio only, full
    fitted_at: str = ""
    checkpoint_name: str = ""
    schema: int = SCHEMA

    @property
    def n(self) -> int:
        return len(self.residuals)

    @property
    def speed_ratio(self) -> float:
        """How many times longer a network takes here than the checkpoint predicts, typically."""
        return float(math.exp(self.log_scale))

    def _z(self, feats: np.ndarray) -> np.ndarray:
        return (feats - np.asarray(self.feature_mean)) / np.asarray(self.feature_std)

    def log_correction(self, graphs: Sequence[ArchGraph]) -> np.ndarray:
        z = self._z(calibration_features(graphs))
        local = _local(self._z(np.asarray(self.features, dtype=float)), np.asarray(self.residuals), z,
                       self.bandwidth, self.prior_weight)
        return self.log_scale + local

    def apply(self, predicted_ms, graphs: Sequence[ArchGraph]) -> np.ndarray:
        """The checkpoint's predictions of ``graphs`` in milliseconds on this calibration's platform."""
        p = np.asarray(predicted_ms, dtype=float)
        if p.shape != (len(graphs),):
            raise CalibrationError(f"{p.shape} predictions for {len(graphs)} networks")
        return p * np.exp(self.log_correction(graphs))

    def check_applies(self, checkpoint_sha256: str, platform_key: str) -> None:
        if checkpoint_sha256 != self.checkpoint_sha256:
            raise CalibrationError("this calibration was fitted for another checkpoint file "
                                   f"(sha256 {self.checkpoint_sha256[:12]}, not {checkpoint_sha256[:12]})")
        if platform_key != self.platform_key:
            raise CalibrationError(f"this calibration was timed on {self.platform_key}, not on {platform_key}")

    # ------------------------------------------------------------------ storage (plain JSON)
    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)          # a reader never sees half a file
        return path

    @classmethod
    def from_dict(cls, d: Mapping) -> "HostCalibration":
        if not isinstance(d, Mapping) or d.get("schema") != SCHEMA:
            raise CalibrationError("not a latency calibration (schema 1) file")
        try:
            cal = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
            n = len(cal.residuals)
            feats = np.asarray(cal.features, dtype=float)
            ok = (n >= MIN_NETWORKS and feats.shape == (n, len(cal.feature_mean))
                  and len(cal.feature_std) == len(cal.feature_mean) and len(cal.measured_ms) == n
                  and len(cal.predicted_ms) == n and np.all(np.asarray(cal.feature_std, dtype=float) > 0)
                  and all(math.isfinite(float(v)) for v in (cal.log_scale, cal.bandwidth, cal.prior_weight))
                  and np.all(np.isfinite(feats)) and np.all(np.isfinite(np.asarray(cal.residuals, dtype=float)))
                  and cal.bandwidth > 0 and cal.prior_weight >= 0)
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"a damaged latency calibration file ({e})") from None
        if not ok:
            raise CalibrationError("a damaged latency calibration file (inconsistent or non-finite numbers)")
        return cal

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HostCalibration":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CalibrationError(f"cannot read the calibration {path}: {e}") from None
        return cls.from_dict(d)


def _mape(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - truth) / truth) * 100)


def _choose_bandwidth(z: np.ndarray, r_log: np.ndarray, prior_weight: float) -> tuple[float, dict]:
    """Leave-one-out over the calibration networks: each one's ratio predicted from the others'."""
    n = len(r_log)
    errors = {}
    for h in BANDWIDTHS:
        err = []
        for i in range(n):
            rest = np.arange(n) != i
            c = float(np.median(r_log[rest]))
            corr = c + _local(z[rest], r_log[rest] - c, z[i:i + 1], h, prior_weight)[0]
            err.append(abs(math.exp(corr - r_log[i]) - 1.0))
        errors[h] = float(np.mean(err) * 100)
    best = min(errors, key=lambda h: (errors[h], -h))   # ties: the smoother correction
    return best, errors


def fit_host_calibration(graphs: Sequence[ArchGraph], measured_ms, predicted_ms, *, platform_key: str,
                         checkpoint_sha256: str, checkpoint_platform: str, names: Sequence[str] = (),
                         checkpoint_name: str = "", prior_weight: float = PRIOR_WEIGHT) -> HostCalibration:
    """Fit the correction from networks timed here (``measured_ms``) and the checkpoint's predictions."""
    m = np.asarray(measured_ms, dtype=float)
    p = np.asarray(predicted_ms, dtype=float)
    if len(graphs) < MIN_NETWORKS:
        raise CalibrationError(f"a calibration needs at least {MIN_NETWORKS} timed networks, got {len(graphs)}")
    if m.shape != (len(graphs),) or p.shape != (len(graphs),):
        raise CalibrationError(f"{m.shape} measurements and {p.shape} predictions for {len(graphs)} networks")
    if not (np.all(np.isfinite(m)) and np.all(m > 0) and np.all(np.isfinite(p)) and np.all(p > 0)):
        raise CalibrationError("measured and predicted latencies must be positive, finite milliseconds")
    feats = calibration_features(graphs)
    mean = feats.mean(0)
    # A feature the calibration networks share (e.g. batch size 1) gets unit scale: it then
    # separates nothing among them, and a network that differs in it is far from all of them.
    std = np.where(feats.std(0) > 1e-9, feats.std(0), 1.0)
    z = (feats - mean) / std
    r_log = np.log(m / p)
    scale = float(np.median(r_log))
    bandwidth, loo_by_h = _choose_bandwidth(z, r_log, prior_weight)
    n = len(r_log)
    ratio_only = [abs(math.exp(float(np.median(np.delete(r_log, i))) - r_log[i]) - 1.0) for i in range(n)]
    return HostCalibration(
        platform_key=platform_key, checkpoint_sha256=checkpoint_sha256, checkpoint_platform=checkpoint_platform,
        log_scale=scale, bandwidth=float(bandwidth), prior_weight=float(prior_weight),
        feature_mean=mean.tolist(), feature_std=std.tolist(), features=feats.tolist(),
        residuals=(r_log - scale).tolist(), measured_ms=m.tolist(), predicted_ms=p.tolist(),
        names=[str(s) for s in names], graph_hashes=[g.stable_hash() for g in graphs],
        loo={"uncorrected_mape": round(_mape(p, m), 3),
             "ratio_only_mape": round(float(np.mean(ratio_only) * 100), 3),
             "calibrated_mape": round(loo_by_h[bandwidth], 3),
             "by_bandwidth": {str(h): round(v, 3) for h, v in loo_by_h.items()}},
        fitted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), checkpoint_name=checkpoint_name)


# ---------------------------------------------------------------------- where calibrations live
def calibration_dir() -> Path:
    """``$NARFORMER_CALIBRATION_DIR``, else ``assets/calibration`` (this machine's, not shipped)."""
    env = os.environ.get("NARFORMER_CALIBRATION_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "assets" / "calibration"


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


def calibration_path(checkpoint_sha256: str, platform_key: str, directory: str | os.PathLike | None = None) -> Path:
    d = Path(directory) if directory is not None else calibration_dir()
    return d / f"{_safe(platform_key)}--{checkpoint_sha256[:16]}.json"


def find_calibration(checkpoint: str | os.PathLike, platform_key: str,
                     directory: str | os.PathLike | None = None) -> HostCalibration | None:
    """This platform's calibration of ``checkpoint`` if one was fitted; None when there is none.

    A damaged file raises :class:`CalibrationError` (the caller says so rather than silently
    predicting in another machine's milliseconds).
    """
    sha = file_sha256(checkpoint)
    path = calibration_path(sha, platform_key, directory)
    if not path.exists():
        return None
    cal = HostCalibration.load(path)
    cal.check_applies(sha, platform_key)
    return cal


# ---------------------------------------------------------------------- timing the calibration set
def spread_over_families(families: Sequence[str], k: int, rng: np.random.Generator) -> list[int]:
    """Indices of ``k`` items, round robin over the families in random order within each family:
    every family gets a network before any family gets its second."""
    by_family: dict[str, list[int]] = {}
    for i, f in enumerate(families):
        by_family.setdefault(f, []).append(i)
    for members in by_family.values():
        rng.shuffle(members)
    chosen: list[int] = []
    order = sorted(by_family)
    while len(chosen) < int(k) and any(by_family.values()):
        for f in order:
            if by_family[f] and len(chosen) < int(k):
                chosen.append(by_family[f].pop())
    return chosen


def calibration_specs(dataset: str | os.PathLike, k: int, exclude_indices: Sequence[int] = (),
                      seed: int = 0) -> list[dict]:
    """K zoo networks of ``dataset`` to time here, spread evenly over its families.

    Networks listed in ``exclude_indices`` (the checkpoint's test split) are left out, so that
    scores on those networks stay scores on networks the calibration never saw.
    """
    from .dataset import load_records

    if int(k) < MIN_NETWORKS:
        raise CalibrationError(f"a calibration needs at least {MIN_NETWORKS} networks, got {k}")
    excluded = {int(i) for i in exclude_indices}
    records = [r for i, r in enumerate(load_records(dataset, require_graph=False)) if i not in excluded]
    picked = spread_over_families([str(r.get("family", "?")) for r in records], k, np.random.default_rng(seed))
    chosen = [records[i] for i in picked]
    return [r["spec"] for r in chosen]


def time_specs(specs: Sequence[dict], *, min_seconds: float = 0.6, warmup: int = 5, repeats: int = 30,
               progress: Callable[[int, int, str], None] | None = None) -> tuple[list[ArchGraph], np.ndarray, list]:
    """Build and time each spec here (one thread, batch 1): graphs, fastest-run ms, measurements.

    The fastest run, as the labels of record (their ``refnorm_ms`` is a drift-corrected fastest
    run); a calibration takes a minute or two, too short for the host's slow drift to matter.
    """
    from ..onnx_import import load_onnx
    from .families import network_module
    from .measure import measure_onnx

    graphs, fastest, measurements = [], [], []
    for i, spec in enumerate(specs):
        builder = network_module(spec)
        data = builder.export_onnx(spec)
        graphs.append(load_onnx(data, max_bytes=None))
        m = measure_onnx(data, threads=1, warmup=warmup, repeats=repeats, min_seconds=min_seconds)
        fastest.append(m.min_ms)
        measurements.append(m)
        if progress is not None:
            progress(i + 1, len(specs), builder.describe(spec))
    return graphs, np.asarray(fastest), measurements


# ---------------------------------------------------------------------- the whole step
def checkpoint_dataset(meta: Mapping, default: str | os.PathLike) -> Path:
    """The measured set a checkpoint was fitted on (its zoo networks are the calibration's pool)."""
    root = Path(__file__).resolve().parents[2]
    named = meta.get("dataset")
    for cand in ([Path(named), root / named] if named else []):
        if cand.is_file():
            return cand
    return Path(default)


def checkpoint_test_indices(meta: Mapping, dataset: Path) -> list[int]:
    # Indices into the checkpoint's own data set only: another file's rows are other networks.
    named = meta.get("dataset")
    if not named or Path(str(named)).name != dataset.name:
        return []
    return [int(i) for i in (meta.get("test_indices") or [])]


def calibrate_checkpoint(checkpoint: str | os.PathLike, *, networks: int = 20, seed: int = 0,
                         min_seconds: float = 0.6, default_dataset: str | os.PathLike,
                         directory: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                         progress: Callable[[int, int, str], None] | None = None, db=None
                         ) -> tuple[HostCalibration, Path, list]:
    """Time ``networks`` zoo networks here, fit and save this machine's calibration of ``checkpoint``.

    Returns the calibration, where it was written and the measurements; ``db`` (a LatencyDB) also
    stores the timings, so the database keeps what was measured.
    """
    from .predictors import load_predictor

    ckpt = Path(checkpoint)
    pred = load_predictor(ckpt)
    dataset = checkpoint_dataset(pred.meta, default_dataset)
    specs = calibration_specs(dataset, networks, exclude_indices=checkpoint_test_indices(pred.meta, dataset),
                              seed=seed)
    graphs, fastest, measurements = time_specs(specs, min_seconds=min_seconds, progress=progress)
    here = measurements[0].platform_key
    sha = file_sha256(ckpt)
    cal = fit_host_calibration(graphs, fastest, pred.predict(graphs), platform_key=here, checkpoint_sha256=sha,
                               checkpoint_platform=str(pred.meta.get("platform_key")),
                               names=[str(s.get("family", "?")) for s in specs], checkpoint_name=ckpt.name)
    path = cal.save(out if out is not None else calibration_path(sha, here, directory))
    if db is not None:
        for g, spec, m in zip(graphs, specs, measurements):
            h = db.add_graph(g, family=spec.get("family"), description="calibration network")
            db.add_measurement(h, m.platform_key, m, note="latency calibrate")
    return cal, path, measurements
