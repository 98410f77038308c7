"""Training NAR-Former with the latency head (METHOD.md sections 4 and 6, latency variant).

One loop for two inputs: whole networks (480-value node tokens of different lengths, static
features into the head) and NB201 cells (192-value tokens, no static features). It reuses the
accuracy protocol's pieces from ``train.py``: AdamW with weight decay off for biases and
LayerNorm, linear warm-up then linear decay, EMA of the weights per step. It differs where
latency differs:

* The target is ``log(ms)`` standardised on the training set (``target="log"``), or the raw
  ms scaled by the training mean (``"ms"``, the paper's choice), or the log-latency residual over
  a given per-network offset (``"residual"``, e.g. a FLOPs regression). Why a log: latencies span
  two orders of magnitude; an MSE on ms is dominated by the slowest networks while MAPE weighs
  every network alike, and an error in log space is a relative error.
* Selection on validation MAPE (raw and EMA weights, every ``eval_every`` epochs): the
  figure that is reported, never a test figure.
* Batches of similar length: networks run from 20 to 300 operators, so batches are cut from
  length-sorted chunks of a random permutation, which keeps padding small and order random.
* No consistency twin: renumbering the operators of a 200-node network changes its
  tokens, but the paper's augmentation is defined on cells; left out for networks (documented).

Also here: the per-device NB201 cell latency benchmark (item 4 of issue 3), run per device
and appended to a JSON-lines results file so it can be resumed and split across sessions.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import acc_within, kendall_tau, mape
from ..model import NARFormer, NARFormerConfig
from ..train import autocast, ema_update, lr_factor, param_groups, resolve_precision

TARGETS = ("log", "ms", "residual")


@dataclass
class LatencyTrainConfig:
    epochs: int = 200
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.1              # fraction of all steps
    ema_decay: float = 0.99          # per step
    target: str = "log"
    lambda_rank: float = 0.0         # the paper's pairwise rank loss, on the target scale
    # "mse" (the paper's), or "l1": on a log target |error| is the relative error that MAPE
    # averages, and it leans less on the few networks whose labels a slow session spoiled.
    loss: str = "mse"
    eval_every: int = 1
    seed: int = 0
    threads: int = 1                 # torch intra-op threads (0: leave as is); see set_threads
    device: str = "cpu"
    max_seconds: float | None = None  # stop early (selection still on validation) after this long
    head_init: str = "kaiming"       # "kaiming": re-initialise the latency MLP (see init_latency_head); "model": keep
    # Augmentation: this many extra copies of every training network, each renumbered in another
    # random topological order (NARFormerLatency.fit). Positions and sources in the tokens change,
    # the computation and its latency do not: the model is shown that numbering carries no cost.
    twins: int = 0
    # "fp32" or "bf16" (autocast of the matrix products; the head stays float32, see model.py), or
    # "auto": bf16 where the CPU has native bf16 arithmetic (train.resolve_precision).
    precision: str = "fp32"
    # Batches are cut from length-sorted runs of this many batches (length_batches): 8 keeps
    # padding small, but then a batch holds networks of one size, often of one family; 1 draws
    # every batch at random (sorted inside only), at the cost of more padding.
    length_chunk: int = 8
    # Unknown-operator training: in each training batch every operator type of a network (but its
    # input) is shown, with this probability, under the op-type code of "unknown" instead of its
    # own, in all of that network's nodes of the type. Why: an ONNX file from outside the training
    # families brings operator types the model never saw (a ConvNeXt's LayerNormalization and Erf,
    # a ShuffleNet's Transpose); their own codes then reach the encoder as inputs it has no
    # experience of. A model trained this way has learned what "some operator with these shapes,
    # attributes and costs" means, and NARFormerLatency shows it unseen types under that code.
    op_dropout: float = 0.0
    # With NARFormerLatency(pretrain=STRUCTURE_SET): epochs over the unmeasured networks (proxy
    # latency, latency/pretrain.py) before the ``epochs`` on the measured ones. Unused otherwise.
    pretrain_epochs: int = 8
    model: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"unknown latency target {self.target!r}; use one of {TARGETS}")
        if self.loss not in ("mse", "l1"):
            raise ValueError(f"unknown latency loss {self.loss!r}; use mse or l1")
        if int(self.length_chunk) < 1:
            raise ValueError(f"length_chunk must be at least 1, got {self.length_chunk}")
        if not 0.0 <= float(self.op_dropout) < 1.0:
            raise ValueError(f"op_dropout is a probability below 1, got {self.op_dropout}")
        if int(self.pretrain_epochs) < 1:
            raise ValueError(f"pretrain_epochs must be at least 1, got {self.pretrain_epochs}")

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ targets
class LatencyTarget:
    """ms <-> the number the model regresses; its state is a plain dict (checkpoint friendly)."""

    def __init__(self, kind: str, mu: float = 0.0, sd: float = 1.0):
        if kind not in TARGETS:
            raise ValueError(f"unknown latency target {kind!r}; use one of {TARGETS}")
        self.kind, self.mu, self.sd = kind, float(mu), float(sd)

    @classmethod
    def fit(cls, kind: str, ms: np.ndarray, offset: np.ndarray | None = None) -> "LatencyTarget":
        ms = np.asarray(ms, dtype=np.float64)
        if np.any(~np.isfinite(ms)) or np.any(ms <= 0):
            raise ValueError("latencies must be positive and finite")
        if kind == "ms":
            return cls(kind, 0.0, float(np.mean(ms)))
        z = np.log(ms) - (0.0 if offset is None else np.asarray(offset, dtype=np.float64))
        return cls(kind, float(z.mean()), float(max(z.std(), 1e-6)))

    def forward(self, ms: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
        ms = np.asarray(ms, dtype=np.float64)
        if self.kind == "ms":
            return ms / self.sd
        z = np.log(ms) - (0.0 if offset is None else np.asarray(offset, dtype=np.float64))
        return (z - self.mu) / self.sd

    def inverse(self, raw: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if self.kind == "ms":
            # A regression on ms can go negative for tiny networks; latency cannot.
            return np.maximum(raw * self.sd, 1e-6)
        z = raw * self.sd + self.mu + (0.0 if offset is None else np.asarray(offset, dtype=np.float64))
        return np.exp(np.clip(z, -30.0, 30.0))

    def state(self) -> dict:
        return {"kind": self.kind, "mu": self.mu, "sd": self.sd}

    @classmethod
    def from_state(cls, d: dict) -> "LatencyTarget":
        return cls(d["kind"], d["mu"], d["sd"])


# ------------------------------------------------------------------ token sets
class TokenSet:
    """Token sequences of many architectures, stored compactly, batched on demand.

    ``depth`` (N, D) float32; node tokens either one padded array (N, T, W) with ``lengths``, or
    a list of (T_i, W) arrays (kept as float16 in one flat buffer: sin/cos values need no more,
    and 2,000 networks of up to 300 tokens would otherwise take a gigabyte); ``static`` (N, S);
    ``edges``: None, or per item a (2, E) array of (source token, consumer token) pairs, from
    which a batch builds the relation matrices of graph-aware attention (model.RELATIONS);
    ``op_ids``: None, or per item the op-type id of each token (-1 for the end token), and
    ``unknown_code`` the op-type slot's code of "unknown" in the tokens' scheme: what
    unknown-operator training (``LatencyTrainConfig.op_dropout``, :class:`OpDropout`) needs.
    """

    def __init__(self, depth: np.ndarray, nodes, static: np.ndarray | None = None,
                 lengths: np.ndarray | None = None, edges: Sequence[np.ndarray] | None = None,
                 op_ids: Sequence[np.ndarray] | None = None, unknown_code: np.ndarray | None = None):
        self.depth = np.asarray(depth, dtype=np.float32)
        n = len(self.depth)
        if isinstance(nodes, np.ndarray) and nodes.ndim == 3:
            self.padded = nodes
            self.lengths = np.full(n, nodes.shape[1]) if lengths is None else np.asarray(lengths)
            self.flat = self.offsets = None
            self.width = nodes.shape[2]
        else:
            seqs = list(nodes)
            if len(seqs) != n:
                raise ValueError(f"{len(seqs)} token sequences for {n} depth codes")
            self.lengths = np.array([len(s) for s in seqs], dtype=np.int64)
            self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
            self.flat = np.concatenate(seqs).astype(np.float16) if seqs else np.zeros((0, 0), np.float16)
            self.padded = None
            self.width = self.flat.shape[1] if seqs else 0
        self.static = None if static is None else np.asarray(static, dtype=np.float32)
        if edges is not None and len(edges) != n:
            raise ValueError(f"{len(edges)} edge lists for {n} token sequences")
        self.edges = None if edges is None else [np.asarray(e, dtype=np.int64).reshape(2, -1) for e in edges]
        self.op_ids = None
        if op_ids is not None:
            if self.flat is None:
                raise ValueError("op ids go with token sequences of different lengths (a list), not a padded array")
            ids = [np.asarray(o, dtype=np.int64).ravel() for o in op_ids]
            if len(ids) != n or any(len(o) != k for o, k in zip(ids, self.lengths)):
                raise ValueError("op_ids needs one id per token of every sequence")
            self.op_ids = ids
        self.unknown_code = None if unknown_code is None else np.asarray(unknown_code, dtype=np.float32).ravel()

    def __len__(self) -> int:
        return len(self.depth)

    def batch(self, idx: np.ndarray, device, drop: "OpDropout | None" = None) -> tuple:
        """(depth, nodes, mask, static, relations) of the items ``idx``; ``drop`` (training only)
        shows some operator types of each network under the "unknown" code."""
        idx = np.asarray(idx)
        depth = torch.from_numpy(self.depth[idx]).to(device)
        static = None if self.static is None else torch.from_numpy(self.static[idx]).to(device)
        lens = self.lengths[idx]
        if self.padded is not None:
            T = int(lens.max())
            nodes = torch.from_numpy(np.ascontiguousarray(self.padded[idx, :T])).to(device)
        else:
            T = int(lens.max())
            arr = np.zeros((len(idx), T, self.width), dtype=np.float32)
            for b, i in enumerate(idx):
                arr[b, : lens[b]] = self.flat[self.offsets[i]: self.offsets[i + 1]]
                if drop is not None:
                    drop.apply(arr[b, : lens[b]], self.op_ids[i])
            nodes = torch.from_numpy(arr).to(device)
        mask = None
        if (lens < T).any():
            mask = torch.from_numpy(np.arange(T)[None, :] < lens[:, None]).to(device)
        return depth, nodes, mask, static, self._relations(idx, lens, T, device)

    def _relations(self, idx, lens, T: int, device):
        """(B, T, T) uint8 relation of query token i to key token j (model.RELATIONS), or None."""
        if self.edges is None:
            return None
        rel = np.zeros((len(idx), T, T), dtype=np.uint8)
        for b, i in enumerate(idx):
            src, dst = self.edges[i]
            rel[b, dst, src] = 1                     # j = src feeds the query i = dst
            rel[b, src, dst] = 2                     # j = dst consumes the query i = src
            diag = np.arange(lens[b])
            rel[b, diag, diag] = 3
        return torch.from_numpy(rel).to(device)


class OpDropout:
    """Unknown-operator training for one fit: per network, each operator type but the input is
    recoded as "unknown" with probability ``p`` (all its nodes together, as an unseen type would be)."""

    def __init__(self, p: float, code: np.ndarray, rng: np.random.Generator, keep: Sequence[int] = ()):
        self.p, self.code, self.rng = float(p), np.asarray(code, dtype=np.float32), rng
        self.keep = np.asarray(sorted(set(keep) | {-1}), dtype=np.int64)   # -1: the end token

    def apply(self, tokens: np.ndarray, ids: np.ndarray) -> None:
        types = np.setdiff1d(np.unique(ids), self.keep)
        hit = types[self.rng.random(len(types)) < self.p]
        if len(hit):
            tokens[np.isin(ids, hit), : len(self.code)] = self.code


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   chunk: int = 8) -> list[np.ndarray]:
    """A random epoch of batches whose members have similar lengths (little padding)."""
    perm = rng.permutation(len(lengths))
    out = []
    size = batch_size * chunk
    for c in range(0, len(perm), size):
        part = perm[c:c + size]
        part = part[np.argsort(lengths[part], kind="stable")]
        out += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


@torch.no_grad()
def predict_raw(model: NARFormer, data: TokenSet, device="cpu", batch: int = 128) -> np.ndarray:
    """Model outputs (target units) for every item, in length-sorted chunks."""
    was = model.training
    model.eval()
    order = np.argsort(data.lengths, kind="stable")
    out = np.zeros(len(data), dtype=np.float64)
    with torch.inference_mode():
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            d, n, m, s, r = data.batch(idx, device)
            out[idx] = model(d, n, m, s, r).double().cpu().numpy()
    model.train(was)
    return out


def init_latency_head(model: NARFormer) -> None:
    """He initialisation for the latency head's MLP (the transformer keeps its N(0, 0.02)).

    Why: model.py draws every Linear from N(0, 0.02), right for the LayerNorm-ed transformer
    but not for a 5-layer ReLU MLP without normalisation, where each layer then scales its input
    by about 0.02 * sqrt(width) (0.3 at width 256): the head starts out blind to the static
    features and the pooled token, and the fits measured here stayed at the FLOPs-regression
    level. The last layer stays small so training starts near the mean target.
    """
    layers = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    for m in layers[:-1]:
        torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        torch.nn.init.zeros_(m.bias)


def init_cost_readout(model: NARFormer, target: "LatencyTarget", lengths: np.ndarray) -> None:
    """Scale of the summed per-operator costs, and a start near the mean latency.

    The costs are summed in ms (their log-sum-exp is log ms); the model's output is in target
    units, so it needs the target's mu and sd. The last bias starts every operator at
    exp(mean log ms) / typical length, so that the untrained sum is about the mean latency.
    """
    if target.kind == "ms":
        raise ValueError("the token+lse readout sums costs in log space: use the log or residual target")
    model.cost_mu.fill_(target.mu)
    model.cost_sd.fill_(target.sd)
    last = model.node_cost[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, target.mu - float(np.log(np.mean(lengths))))


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_token_model(model_cfg: NARFormerConfig, train: TokenSet, y_train_ms: np.ndarray,
                      val: TokenSet, y_val_ms: np.ndarray, cfg: LatencyTrainConfig, *,
                      offset_train: np.ndarray | None = None, offset_val: np.ndarray | None = None,
                      progress: bool = False, desc: str = "latency", target: "LatencyTarget | None" = None,
                      init_state: dict | None = None) -> tuple[NARFormer, LatencyTarget, dict]:
    """Train and return (the model selected on validation MAPE, its target map, a summary).

    ``target``: the target map to use instead of one fitted on ``y_train_ms`` (pretraining on
    proxy latencies uses the measured networks' map, so the head's scale carries over).
    ``init_state``: start from these weights (a pretrained model) instead of a fresh init.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if target is None:
        target = LatencyTarget.fit(cfg.target, y_train_ms, offset_train if cfg.target == "residual" else None)
    elif target.kind != cfg.target:
        raise ValueError(f"the given target map is {target.kind!r}, the config's target {cfg.target!r}")
    off_tr = offset_train if cfg.target == "residual" else None
    off_va = offset_val if cfg.target == "residual" else None
    if cfg.target == "residual" and (off_tr is None or off_va is None):
        raise ValueError("the residual target needs offsets for the training and validation items")
    y_tr = torch.from_numpy(target.forward(y_train_ms, off_tr).astype(np.float32)).to(device)

    torch.manual_seed(cfg.seed)
    model = NARFormer(model_cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    else:
        if cfg.head_init == "kaiming":
            init_latency_head(model)
        if model_cfg.readout == "token+lse":
            init_cost_readout(model, target, train.lengths)
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    drop = None
    if cfg.op_dropout > 0:
        if train.op_ids is None or train.unknown_code is None:
            raise ValueError("op_dropout needs the training tokens' op ids and unknown code (TokenSet)")
        from ..network_tokenizer import INPUT_ID
        # Its own stream: the batches drawn from ``rng`` stay those of a fit without it.
        drop = OpDropout(cfg.op_dropout, train.unknown_code, np.random.default_rng(cfg.seed + 104729),
                         keep=(INPUT_ID,))
    steps_per_epoch = len(length_batches(train.lengths, cfg.batch_size, np.random.default_rng(0)))
    total = steps_per_epoch * cfg.epochs
    best = {"mape": math.inf, "epoch": 0, "which": None, "state": None}
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs, desc=desc, unit="ep", dynamic_ncols=True, leave=False)
    t0, step = time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum = 0.0
        for bi in length_batches(train.lengths, cfg.batch_size, rng, chunk=int(cfg.length_chunk)):
            d, n, m, s, r = train.batch(bi, device, drop)
            with autocast(precision, device):
                pred = model(d, n, m, s, r)
            y = y_tr[torch.from_numpy(bi).to(device)]
            loss = F.l1_loss(pred, y) if cfg.loss == "l1" else F.mse_loss(pred, y)
            if cfg.lambda_rank and len(bi) > 1:
                p = torch.randperm(len(bi), generator=gen).to(device)
                loss = loss + cfg.lambda_rank * F.l1_loss(pred - pred[p], y - y[p])
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(step, total, cfg.warmup)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(ema, model, cfg.ema_decay)
            step += 1
            loss_sum += loss.item()
        last = epoch == cfg.epochs - 1
        out_of_time = cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds
        if (epoch + 1) % cfg.eval_every == 0 or last or out_of_time:
            row = {"epoch": epoch + 1, "loss": loss_sum / max(1, steps_per_epoch)}
            for which, net in (("raw", model), ("ema", ema)):
                # Validation in float32 (predict_raw), as the fitted predictor will predict.
                ms = target.inverse(predict_raw(net, val, device), off_va)
                row[f"val_mape_{which}"] = mape(ms, y_val_ms)
                if row[f"val_mape_{which}"] < best["mape"]:
                    best = {"mape": row[f"val_mape_{which}"], "epoch": epoch + 1, "which": which,
                            "state": {k: v.detach().clone() for k, v in net.state_dict().items()}}
            history.append(row)
            if bar:
                bar.set_postfix(loss=f"{row['loss']:.4f}", val=f"{row['val_mape_raw']:.2f}%",
                                ema=f"{row['val_mape_ema']:.2f}%")
        if bar:
            bar.update(1)
        if out_of_time:
            break
    if bar:
        bar.close()
    model.load_state_dict(best["state"])
    model.eval()
    summary = {"selected": best["which"], "selected_epoch": best["epoch"], "val_mape": best["mape"],
               "epochs_run": epoch + 1, "steps": step, "precision": precision,
               "train_seconds": round(time.perf_counter() - t0, 1),
               "history": history}
    return model, target, summary


# ------------------------------------------------------------------ NB201 cells on 31 devices
CELL_MODEL = {"token_dim": 192, "depth_dim": 192, "d_model": 64, "n_heads": 4, "ffn_dim": 256,
              "depths": (2, 1, 1, 1), "dropout": 0.0, "head": "latency", "static_dim": 0,
              "head_hidden": 128}
CELL_TRAIN = {"epochs": 60, "batch_size": 64, "lr": 1e-3, "target": "log", "eval_every": 2}
NB201_FRACTIONS = (0.05, 0.10)


def _config_id(model: dict, train: dict) -> str:
    blob = json.dumps({"model": model, "train": train}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def nb201_device_split(known: np.ndarray, fraction: float, seed: int, val_size: int = 200):
    """(train, val, test) indices among the cells with a known latency.

    The training share is a fraction of the known cells: all 15,625 for the 27 HELP settings,
    the 2,000 (accuracy >= 90%) measured by nn-Meter for its 4 devices. Validation is 200 cells
    (at most 10% of the known ones); every other known cell is the test set.
    """
    idx = np.flatnonzero(known)
    n_train = max(2, int(round(fraction * len(idx))))
    n_val = min(val_size, max(2, len(idx) // 10))
    if n_train + n_val >= len(idx):
        raise ValueError(f"{fraction:.0%} of {len(idx)} cells leaves nothing to test on")
    perm = np.random.default_rng(seed).permutation(idx)
    return (np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_val]),
            np.sort(perm[n_train + n_val:]))


def nb201_connected() -> np.ndarray:
    """(15,625,) bool: the cell's output is reachable from its input through ops other than ``none``.

    The other cells output constant zeros; some devices time them at a few microseconds (pixel3,
    raspi4: 1% of the cells under 0.08 ms against a median of 10-25 ms), which alone can dominate
    a MAPE. Results are reported over all cells and over the connected ones.
    """
    from ..spaces import nb201

    out = np.zeros(nb201.N_ARCHS, dtype=bool)
    for i, ops in enumerate(nb201.enumerate_all()):
        reach = {0}
        for (s, t), op in zip(nb201.EDGES, ops):     # EDGES are in topological order
            if op != "none" and s in reach:
                reach.add(t)
        out[i] = 3 in reach
    return out


def nb201_cell_tokens(scheme: str = "nerf") -> TokenSet:
    from ..spaces import nb201
    from ..tokenizer import tokenize_cells

    cells = nb201.enumerate_all()
    tk = tokenize_cells(nb201.op_id_matrix(cells), nb201.adjacency(), np.full(len(cells), 8), scheme=scheme)
    return TokenSet(tk.depth, tk.nodes, None, tk.mask.sum(1))


def nb201_device_run(device: str, fraction: float, *, seed: int = 0, model: dict | None = None,
                     train: dict | None = None, data_dir=None, tokens: TokenSet | None = None,
                     progress: bool = False) -> dict:
    """Train on ``fraction`` of one device's cells, test on the rest: MAPE, Acc(10%), tau."""
    from ..data.latency_sets import DEVICE_DESCRIPTIONS, nb201_device_latency

    model_d = {**CELL_MODEL, **(model or {})}
    train_d = {**CELL_TRAIN, **(train or {}), "seed": seed}
    y = nb201_device_latency(device, data_dir)
    known = np.isfinite(y) & (y > 0)
    tr, va, te = nb201_device_split(known, fraction, seed)
    tokens = tokens or nb201_cell_tokens()
    sub = lambda ix: TokenSet(tokens.depth[ix], tokens.padded[ix], None, tokens.lengths[ix])  # noqa: E731
    model_cfg = NARFormerConfig(**model_d)
    if model_cfg.uses_edges:
        raise ValueError("graph_bias and graph_ffn are for whole networks; the NB201 cell tokens carry no edge lists")
    cfg = LatencyTrainConfig(**train_d)
    net, target, summ = train_token_model(model_cfg, sub(tr), y[tr], sub(va), y[va], cfg,
                                          progress=progress, desc=f"{device} {fraction:.0%}")
    pred = target.inverse(predict_raw(net, sub(te)))
    conn = nb201_connected()[te]
    return {"device": device, "description": DEVICE_DESCRIPTIONS.get(device, device),
            "fraction": fraction, "seed": seed, "n_train": len(tr), "n_val": len(va), "n_test": len(te),
            "mape": round(mape(pred, y[te]), 4), "acc10": round(acc_within(pred, y[te]), 3),
            "kendall_tau": round(kendall_tau(pred, y[te]), 4),
            "n_test_connected": int(conn.sum()),
            "mape_connected": round(mape(pred[conn], y[te][conn]), 4),
            "acc10_connected": round(acc_within(pred[conn], y[te][conn]), 3),
            "kendall_tau_connected": round(kendall_tau(pred[conn], y[te][conn]), 4),
            "val_mape": round(summ["val_mape"], 4),
            "selected": summ["selected"], "selected_epoch": summ["selected_epoch"],
            "train_seconds": summ["train_seconds"], "config_id": _config_id(model_d, train_d),
            "model": model_d, "train": train_d}


def run_nb201_devices(devices: Sequence[str], fractions: Sequence[float] = NB201_FRACTIONS, *,
                      results: str | os.PathLike | None = None, seed: int = 0, model: dict | None = None,
                      train: dict | None = None, data_dir=None, progress: bool = True,
                      on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run (device, fraction) pairs, appending each result to ``results`` (JSON lines).

    Pairs already in the file with the same configuration id and seed are not run again, so
    the 62 trainings can be spread over several calls.
    """
    from ..data.latency_sets import NB201_DEVICES

    bad = [d for d in devices if d not in NB201_DEVICES]
    if bad:
        raise ValueError(f"unknown NB201 devices {bad}; known: {', '.join(NB201_DEVICES)}")
    model_d = {**CELL_MODEL, **(model or {})}
    train_d = {**CELL_TRAIN, **(train or {}), "seed": seed}
    cid = _config_id(model_d, train_d)
    done: dict[tuple, dict] = {}
    path = Path(results) if results else None
    if path and path.exists():
        for ln in path.read_text().splitlines():
            if ln.strip():
                r = json.loads(ln)
                if r.get("config_id") == cid and r.get("seed") == seed:
                    done[(r["device"], float(r["fraction"]))] = r
    tokens = nb201_cell_tokens()
    out = []
    todo = [(d, float(f)) for d in devices for f in fractions]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="nb201 devices", unit="run", dynamic_ncols=True)
    for d, f in todo:
        if (d, f) in done:
            out.append(done[(d, f)])
        else:
            r = nb201_device_run(d, f, seed=seed, model=model, train=train, data_dir=data_dir, tokens=tokens)
            out.append(r)
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a") as fh:
                    fh.write(json.dumps(r, default=list) + "\n")
            if on_result:
                on_result(r)
        if bar:
            bar.set_postfix_str(f"{d} {f:.0%}: MAPE {out[-1]['mape']:.2f}%")
            bar.update(1)
    if bar:
        bar.close()
    return out


def nb201_table(results: Sequence[dict]) -> dict:
    """Per device and fraction: MAPE, Acc(10%), tau; plus the median over devices per fraction."""
    keys = ("device", "fraction", "n_train", "n_test", "mape", "acc10", "kendall_tau", "mape_connected",
            "acc10_connected", "kendall_tau_connected")
    rows = [{k: r.get(k) for k in keys} for r in results]
    summary = {}
    for f in sorted({r["fraction"] for r in rows}):
        sel = [r for r in rows if r["fraction"] == f]
        help_sel = [r for r in sel if not r["device"] in ("cpu", "gpu", "gpu1", "vpu")]
        summary[f"{f:g}"] = {
            "devices": len(sel),
            "median_mape": round(float(np.median([r["mape"] for r in sel])), 3),
            "median_mape_help27": round(float(np.median([r["mape"] for r in help_sel])), 3) if help_sel else None,
            "median_acc10": round(float(np.median([r["acc10"] for r in sel])), 2),
            "median_tau": round(float(np.median([r["kendall_tau"] for r in sel])), 4),
            "median_mape_connected": round(float(np.median([r["mape_connected"] for r in sel])), 3),
            "median_mape_connected_help27": round(float(np.median([r["mape_connected"] for r in help_sel])), 3)
            if help_sel else None}
    return {"rows": rows, "summary": summary}


# ------------------------------------------------------------------ whole-network benchmark
def family_split(families: Sequence[str], seed: int = 0, test_fraction: float = 0.1):
    """In-domain split: within each family, ``test_fraction`` of its networks (at least one) go to test."""
    fam = np.asarray(families)
    rng = np.random.default_rng(seed)
    test = []
    for f in sorted(set(fam.tolist())):
        idx = np.flatnonzero(fam == f)
        k = max(1, int(round(test_fraction * len(idx)))) if len(idx) > 1 else 0
        test += rng.permutation(idx)[:k].tolist()
    test = np.sort(np.array(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(fam)), test)
    return train, test


def _scores(pred, truth, fam) -> dict:
    out = {}
    for f in sorted(set(fam.tolist())):
        m = fam == f
        out[f] = {"n": int(m.sum()), "mape": round(mape(pred[m], truth[m]), 3),
                  "acc10": round(acc_within(pred[m], truth[m]), 2)}
    return out


def latency_bench(graphs, y_ms, families, predictors: dict, *, seed: int = 0, lofo: bool = True,
                  lofo_families: Sequence[str] | None = None, progress: bool = True,
                  on_result: Callable[[dict], None] | None = None,
                  cache: str | os.PathLike | None = None, fingerprints: dict | None = None,
                  on_fitted: Callable[[dict, Any], None] | None = None,
                  extra: tuple[Sequence, Any, Sequence[str]] | None = None) -> dict:
    """In-domain (90/10 per family) and leave-one-family-out scores of several predictors.

    ``predictors`` maps a column name to a factory ``() -> LatencyPredictor`` (a fresh, unfitted
    predictor per training). Selection inside every fit uses a validation share of its own
    training networks only; the test networks (and, out of domain, the whole held-out family)
    are never seen before scoring. Returns {"in_domain": {name: {family: scores}}, "lofo": ...,
    "average": ..., "fits": [timings]}.

    ``cache``: a JSON-lines file every finished fit is appended to; a later call with the same
    data, seed and predictor ``fingerprints`` (name -> any string describing its options) takes
    those fits from it instead of training again, so a long benchmark can be stopped and resumed.

    ``on_fitted(fit, predictor)``: called after every fit that was trained (not taken from the
    cache), e.g. to keep the in-domain model, whose test networks it has never seen.

    ``extra``: (graphs, ms, families) of further measured networks that only ever train. The
    splits of ``graphs`` stay what they are without them: the same test networks, and the same
    validation networks (the share a predictor would hold out of its training networks, handed
    to it explicitly so that the extra ones never validate). Out of domain, the extra networks
    of the held-out family are left out with it.
    """
    y_ms = np.asarray(y_ms, dtype=np.float64)
    ident = [np.round(y_ms, 6).tolist(), list(map(str, families))]
    if extra is not None:
        x_graphs, x_ms, x_fam = extra
        x_ms, x_fam = np.asarray(x_ms, dtype=np.float64), np.asarray([str(f) for f in x_fam])
        if not (len(x_graphs) == len(x_ms) == len(x_fam)):
            raise ValueError("extra networks: graphs, latencies and families differ in length")
        ident.append([np.round(x_ms, 6).tolist(), x_fam.tolist()])
        extra = (x_graphs, x_ms, x_fam)
    data_id = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:12]
    fingerprints = fingerprints or {}
    done: dict = {}
    cache = Path(cache) if cache else None
    if cache and cache.exists():
        for ln in cache.read_text().splitlines():
            if ln.strip():
                c = json.loads(ln)
                done[(c["data"], c["seed"], c["setting"], c["held_out"], c["predictor"], c["fingerprint"])] = c
    fam = np.asarray([str(f) for f in families])
    res: dict = {"in_domain": {}, "lofo": {}, "fits": []}
    tr, te = family_split(fam, seed)
    plans = [("in_domain", None, tr, te)]
    if lofo:
        for f in (lofo_families or sorted(set(fam.tolist()))):
            plans.append(("lofo", f, np.flatnonzero(fam != f), np.flatnonzero(fam == f)))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(plans) * len(predictors), desc="latency bench", unit="fit", dynamic_ncols=True)
    for setting, held_out, a, b in plans:
        for name, factory in predictors.items():
            key = (data_id, seed, setting, held_out, name, str(fingerprints.get(name, "")))
            if key in done:
                sc, fit = done[key]["scores"], done[key]["fit"]
            else:
                t0 = time.perf_counter()
                p = factory()
                if held_out is not None and hasattr(p, "pretrain_exclude_families"):
                    # Unmeasured networks of the held-out family would show it to the model before
                    # its test: a pretraining set loses that family in the fold.
                    p.pretrain_exclude_families = {held_out}
                if extra is None:
                    p = p.fit([graphs[i] for i in a], y_ms[a], seed=seed)
                else:
                    p = _fit_with_extra(p, graphs, y_ms, a, extra=extra, held_out=held_out, seed=seed)
                pred = p.predict([graphs[i] for i in b])
                sc = _scores(pred, y_ms[b], fam[b])
                fit = {"setting": setting, "held_out": held_out, "predictor": name, "n_train": len(a),
                       "n_test": len(b), "seconds": round(time.perf_counter() - t0, 1),
                       "val_mape": getattr(p, "meta", {}).get("val_mape"),
                       "test_mape": round(mape(pred, y_ms[b]), 3), "test_acc10": round(acc_within(pred, y_ms[b]), 2)}
                if on_fitted:
                    on_fitted({**fit, "test_indices": [int(i) for i in b]}, p)
                if cache:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    with open(cache, "a") as fh:
                        fh.write(json.dumps({"data": key[0], "seed": seed, "setting": setting, "held_out": held_out,
                                             "predictor": name, "fingerprint": key[5], "scores": sc,
                                             "fit": fit}) + "\n")
            res[setting].setdefault(name, {}).update(sc)
            res["fits"].append(fit)
            if on_result:
                on_result(fit)
            if bar:
                bar.set_postfix_str(f"{setting} {held_out or ''} {name}: {fit['test_mape']:.2f}%")
                bar.update(1)
    if bar:
        bar.close()
    res["average"] = {}
    for setting in ("in_domain", "lofo"):
        for name, per in res[setting].items():
            res["average"].setdefault(setting, {})[name] = {
                "mape": round(float(np.mean([v["mape"] for v in per.values()])), 3),
                "acc10": round(float(np.mean([v["acc10"] for v in per.values()])), 2)}
    return res


def _fit_with_extra(p, graphs, y_ms, a, *, extra, held_out, seed):
    """Fit ``p`` on training networks ``a`` plus the extra ones; validation stays the share of
    ``a`` that ``p.fit`` would have held out of ``a`` alone (same seed, same order)."""
    from .predictors import _split_val

    x_graphs, x_ms, x_fam = extra
    keep = np.flatnonzero(x_fam != held_out) if held_out is not None else np.arange(len(x_fam))
    xg, xy = [x_graphs[i] for i in keep], x_ms[keep]
    if not getattr(p, "uses_validation", True):
        return p.fit([graphs[i] for i in a] + xg, np.concatenate([y_ms[a], xy]), seed=seed)
    fit, val = _split_val(len(a), seed)
    fit, val = np.asarray(a)[fit], np.asarray(a)[val]
    return p.fit([graphs[i] for i in fit] + xg, np.concatenate([y_ms[fit], xy]),
                 val=([graphs[i] for i in val], y_ms[val]), seed=seed)


def bench_table(res: dict) -> str:
    """The benchmark as one text table: a row per family, MAPE / Acc(10%) per predictor and setting."""
    names = list(res["in_domain"])
    settings = [s for s in ("in_domain", "lofo") if res.get(s)]
    fams = sorted({f for s in settings for per in res[s].values() for f in per})
    head = ["family"] + [f"{'ID' if s == 'in_domain' else 'LOFO'} {n}" for s in settings for n in names]
    rows = []
    for f in fams:
        row = [f]
        for s in settings:
            for n in names:
                v = res[s].get(n, {}).get(f)
                row.append("-" if v is None else f"{v['mape']:.2f}% / {v['acc10']:.0f}%")
        rows.append(row)
    row = ["average"]
    for s in settings:
        for n in names:
            v = res["average"][s][n]
            row.append(f"{v['mape']:.2f}% / {v['acc10']:.0f}%")
    rows.append(row)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    lines = ["MAPE / Acc(10%)  (ID: in-domain 90/10 split per family; LOFO: leave-one-family-out)",
             fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    return "\n".join(lines)
