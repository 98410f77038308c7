"""The training protocol (METHOD.md sections 5-6), one loop from top to bottom.

A run lives in one folder:
  config.json     the TrainConfig (and model config) it was started with
  metrics.jsonl   one JSON line per evaluated epoch: step, epoch, losses, val tau raw/EMA, lr, wall_s
  latest.pt       everything needed to resume (weights, EMA, optimiser, RNG states, split)
  best.pt         raw weights with the best validation tau; best_ema.pt the same for the EMA weights
  status.json     state (running / finished / stopped / failed), epoch, pid, message
  summary.json    written at the end: the checkpoint selected on validation, and its figures
A file named STOP in the folder asks a running training to save and stop after the epoch.
All checkpoints hold only tensors and plain containers, so they load with weights_only=True.
Under torchrun the same loop runs data-parallel (distributed.py, docs/DISTRIBUTED.md); rank 0
writes every file above.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .augment import EquivalentSampler, TwinSampler, apply_permutation
from .metrics import kendall_tau
from .model import NARFormer, NARFormerConfig
from .targets import TargetMap
from .tasks import AccuracyTask, load_task, split
from .tokenizer import tokenize_cells

CKPT_FORMAT = "narformer-ckpt-1"


@dataclass
class TrainConfig:
    space: str = "nb201"
    labels: str | None = None        # train/validation label source (None: the space's default)
    test_labels: str | None = None   # for test figures logged with test_every (None: = labels)
    train_size: int = 781
    val_size: int = 200
    seed: int = 0                    # the split (which cells train / validate); also the run's seed by default
    # Seeds the weights, batch order, twins and dropout when set, so that runs on one split can
    # differ (members of an ensemble); None: the split seed, as before the option existed.
    init_seed: int | None = None
    epochs: int = 4000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1              # fraction of all steps spent warming up linearly
    ema_decay: float = 0.99          # per step
    lambda_rank: float = 0.1
    # "l1": the paper's term, L1 between prediction and label differences of a random pairing;
    # "logistic": every pair of the batch, log(1 + exp(-rank_scale * dpred * sign(dy))), which asks
    # only for the right order (what Kendall's tau scores) and learns faster at small budgets.
    rank_loss: str = "l1"
    rank_scale: float = 10.0
    lambda_cons: float = 0.5
    twin_grad: bool = True           # backpropagate through the augmented twin (the paper) or not
    # NB201 only: feed each training cell, every step, as a random functionally equivalent cell
    # (augment.EquivalentSampler); the twin is then a renumbered copy of that cell.
    equivalents: bool = False
    target: str = "fraction"         # label -> 0..1 target: "fraction" (paper) or "quantile" (targets.py)
    scheme: str = "nerf"
    eval_every: int = 1              # epochs between validation passes
    test_every: int = 0              # epochs between test-set tau logs (reporting only, never selection)
    save_every_s: float = 60.0       # seconds between latest.pt saves (also saved at the end / on stop)
    device: str = "auto"
    # Arithmetic of the forward and backward passes: "fp32", or "bf16" (autocast: matrix products
    # in bfloat16, weights, optimiser and losses in float32), or "auto" (bf16 where the hardware
    # computes it natively, see bf16_is_native). Validation always predicts in float32.
    precision: str = "fp32"
    threads: int = 0                 # torch intra-op threads (0: torch's default)
    data_dir: str | None = None
    model: dict = field(default_factory=dict)   # NARFormerConfig overrides

    def to_dict(self) -> dict:
        return asdict(self)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


PRECISIONS = ("fp32", "bf16", "auto")


def bf16_is_native(device: torch.device) -> bool:
    """True where bfloat16 matrix products run in hardware (AVX512-BF16 or AMX CPUs, recent GPUs).

    Elsewhere autocast to bfloat16 still works but is emulated, and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_is_native(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """The context the model runs under for a resolved precision ("fp32" or "bf16")."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices (and query tokens) only; none on biases and LayerNorm."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_norm = any(name.startswith(m) or f".{m}" in name for m in ("ln", "ln_")) or ".ln" in name
        (no_decay if p.ndim < 2 or is_norm else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction of steps, then linear decay to 0."""
    w = max(1, int(round(total * warmup)))
    if step < w:
        return (step + 1) / w
    return max(0.0, (total - step) / max(1, total - w))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    e, m = list(ema.parameters()), list(model.parameters())
    torch._foreach_mul_(e, decay)
    torch._foreach_add_(e, m, alpha=1.0 - decay)


def predict_cells(model: NARFormer, op_ids: np.ndarray, adj: np.ndarray, n_nodes: np.ndarray | None = None,
                  scheme: str = "nerf", batch: int = 1024, precision: str = "fp32") -> np.ndarray:
    """Tokenize and predict cells one chunk at a time (model units, CPU).

    The whole of NB201 tokenized at once is 108 MB of float32 that is written, read once and
    freed; chunks of ``batch`` cells stay small enough to be cheap to allocate and fill. This is
    the fast path for "every cell of a space" (scripts/bench_speed.py)."""
    op_ids, adj = np.asarray(op_ids), np.asarray(adj)
    out = []
    for i in range(0, len(op_ids), batch):
        tk = tokenize_cells(op_ids[i:i + batch], adj if adj.ndim == 2 else adj[i:i + batch],
                            None if n_nodes is None else np.asarray(n_nodes)[i:i + batch], scheme=scheme)
        mask = None if tk.mask.all() else torch.from_numpy(tk.mask)
        out.append(predict_tokens(model, torch.from_numpy(tk.depth), torch.from_numpy(tk.nodes), mask,
                                  batch=batch, precision=precision))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


@torch.no_grad()
def predict_tokens(model: NARFormer, depth: torch.Tensor, nodes: torch.Tensor, mask: torch.Tensor | None,
                   batch: int = 512, precision: str = "fp32") -> np.ndarray:
    """Predictions (model units) for pre-tokenized architectures, in chunks that stay in cache.

    ``precision`` "bf16" (or "auto" where bf16 is native) runs the matrix products in bfloat16:
    several times faster on such CPUs, with rankings that move a little (README, Speed)."""
    was = model.training
    model.eval()
    out = []
    prec = resolve_precision(precision, depth.device)
    with torch.inference_mode(), autocast(prec, depth.device):
        for i in range(0, depth.shape[0], batch):
            m = None if mask is None else mask[i:i + batch]
            out.append(model(depth[i:i + batch], nodes[i:i + batch], m).float().cpu())
    model.train(was)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def loss_terms(pred: torch.Tensor, pred_twin: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None,
               perm: torch.Tensor | None = None, rank_loss: str = "l1", rank_scale: float = 10.0):
    mse = F.mse_loss(pred, y)
    # perm: the pairing for the rank loss when the caller drew it (a data-parallel slice). It is
    # drawn even for the logistic loss so the generator stream does not depend on the loss kind.
    p = (torch.randperm(len(y), generator=gen, device="cpu") if perm is None else perm).to(y.device)
    if rank_loss == "logistic":
        rank = pairwise_logistic(pred, y, rank_scale)
    else:
        rank = F.l1_loss(pred - pred[p], y - y[p])
    cons = F.l1_loss(pred, pred_twin)
    return mse, rank, cons


def pairwise_logistic(pred: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean logistic loss over all pairs with different labels (0 when there are none)."""
    i, j = torch.triu_indices(len(y), len(y), 1, device=y.device)
    sign = torch.sign(y[i] - y[j])
    keep = sign != 0
    if not bool(keep.any()):
        return pred.sum() * 0.0
    return F.softplus(-scale * (pred[i] - pred[j])[keep] * sign[keep]).mean()


def read_log(path: Path) -> list[dict]:
    """metrics.jsonl rows. A process killed while appending can leave a torn last line: it is
    dropped (its epoch is redone on resume). A bad line anywhere else means a damaged log."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    rows = []
    for i, ln in enumerate(lines):
        try:
            rows.append(json.loads(ln))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path} line {i + 1} is not JSON ({ln[:60]!r}); the metrics log is damaged") from None
    return rows


class _Writer:
    """Appends metric lines; on resume, drops lines past the checkpoint so the log has no duplicates."""

    def __init__(self, path: Path, keep_through_step: int | None):
        self.path = path
        if keep_through_step is not None and path.exists():
            kept = [r for r in read_log(path) if r.get("step", 0) <= keep_through_step]
            # Replace, not rewrite in place: a kill between truncate and write would lose the log.
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, path)
        elif keep_through_step is None and path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _on_cpu(obj):
    """``obj`` with every tensor moved to the CPU: a checkpoint written by a GPU run must load on a
    machine without one (``torch.load(p, weights_only=True)`` with no map_location)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, _on_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(_on_cpu(obj), tmp)
    os.replace(tmp, path)


def write_status(run_dir: Path, state: str, **extra) -> None:
    d = {"state": state, "pid": os.getpid(), "updated": time.time(), **extra}
    tmp = run_dir / "status.json.tmp"
    tmp.write_text(json.dumps(d))
    os.replace(tmp, run_dir / "status.json")


def _tensors(task: AccuracyTask, idx: np.ndarray, scheme: str, device):
    tk = task.tokens(scheme)
    mask = torch.from_numpy(tk.mask[idx]).to(device)
    return (torch.from_numpy(tk.depth[idx]).to(device), torch.from_numpy(tk.nodes[idx]).to(device),
            None if bool(mask.all()) else mask)


def train(cfg: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = True, progress: bool = True,
          max_seconds: float | None = None, on_epoch=None, task: AccuracyTask | None = None,
          indices: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Train (or resume) one run. Returns the summary dict (also written to summary.json).

    ``task`` and ``indices`` (train, val) override what the config would load and draw; search
    and the arena use them to train on the architectures they have evaluated so far.
    """
    if cfg.rank_loss not in ("l1", "logistic"):
        raise ValueError(f"rank_loss must be 'l1' (the paper's) or 'logistic', got {cfg.rank_loss!r}")
    if cfg.equivalents and cfg.space != "nb201":
        raise ValueError(f"equivalent-cell copies exist for NB201 cells only, not {cfg.space} "
                         "(NB101 cells are already pruned to one form each)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dd = distributed.from_env()          # Dist() (one process) unless launched by torchrun
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif dd.enabled:
        # N ranks share the cores: without this each would start a full-size thread pool.
        torch.set_num_threads(distributed.threads_per_process(dd.world_size))
    device = pick_device(cfg.device)
    dd, device = distributed.init(dd, device)
    precision = resolve_precision(cfg.precision, device)
    task = task or load_task(cfg.space, cfg.labels, cfg.test_labels, cfg.data_dir)
    cfg.labels, cfg.test_labels = task.labels, task.test_labels
    if indices is None:
        train_idx, val_idx = split(task, cfg.train_size, cfg.val_size, cfg.seed)
    else:
        train_idx, val_idx = (np.sort(np.asarray(i, dtype=np.int64)) for i in indices)
    model_cfg = NARFormerConfig(**{"token_dim": 6 * 32, "depth_dim": 192, **cfg.model})

    run_seed = cfg.seed if cfg.init_seed is None else cfg.init_seed
    torch.manual_seed(run_seed)
    model = NARFormer(model_cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    rng = np.random.default_rng(run_seed)
    gen = torch.Generator().manual_seed(run_seed)

    start_epoch, step, wall = 0, 0, 0.0
    best = {"val_tau": -2.0, "epoch": -1}
    best_ema = {"val_tau": -2.0, "epoch": -1}
    latest = run_dir / "latest.pt"
    if resume and latest.exists():
        ck = torch.load(latest, map_location="cpu", weights_only=True)   # RNG states must stay on CPU
        check_compatible(ck, model_cfg)
        check_same_run(ck, cfg, train_idx, val_idx)
        model.load_state_dict(ck["state_dict"])
        ema.load_state_dict(ck["ema_state_dict"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, step, wall = ck["epoch"] + 1, ck["step"], ck["wall_s"]
        best, best_ema = ck["best"], ck["best_ema"]
        torch.set_rng_state(ck["rng"]["torch"])
        gen.set_state(ck["rng"]["gen"])
        rng.bit_generator.state = ck["rng"]["numpy"]
        if dd.enabled and dd.rank:
            ranks = ck.get("rng_ranks") or []
            if len(ranks) == dd.world_size:
                torch.set_rng_state(ranks[dd.rank])      # continue this rank's dropout stream
            else:                                        # resumed with another number of processes
                torch.manual_seed(distributed.rank_seed(run_seed, dd.rank, start_epoch))
        writer = _Writer(run_dir / "metrics.jsonl", keep_through_step=step) if dd.is_main else None
    else:
        if dd.enabled and dd.rank:
            torch.manual_seed(distributed.rank_seed(run_seed, dd.rank))   # own dropout masks; weights came first
        writer = _Writer(run_dir / "metrics.jsonl", keep_through_step=None) if dd.is_main else None
    if dd.enabled:
        # Seeds already make the replicas equal; copying rank 0's weights makes it a guarantee.
        distributed.broadcast_module(model, dd)
        distributed.broadcast_module(ema, dd)
    if dd.is_main:
        extra = {"distributed": {"world_size": dd.world_size, "backend": dd.backend}} if dd.enabled else {}
        extra["precision_used"] = precision      # what "auto" became on this machine
        (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "model": model_cfg.to_dict(), **extra},
                                                        indent=2))

    target = TargetMap(cfg.target, task.y[train_idx])
    y_all = torch.from_numpy(np.nan_to_num(target.forward(task.y)).astype(np.float32)).to(device)
    tr_depth, tr_nodes, tr_mask = _tensors(task, train_idx, cfg.scheme, device)
    va_depth, va_nodes, va_mask = _tensors(task, val_idx, cfg.scheme, device)
    twins = TwinSampler(task.adj, task.n_nodes)
    equivalents = EquivalentSampler(task, train_idx) if cfg.equivalents else None
    ops_tr = task.ops[train_idx]
    adj_tr = task.adj if task.adj.ndim == 2 else task.adj[train_idx]
    n_tr = task.n_nodes[train_idx]
    y_tr, y_va = y_all[train_idx], task.y[val_idx]
    test_ok = ~np.isnan(task.y_test)
    split_info = {"train": torch.from_numpy(train_idx), "val": torch.from_numpy(val_idx)}
    task_info = {"space": task.space, "labels": task.labels, "test_labels": task.test_labels,
                 "scheme": cfg.scheme}

    def state(kind: str, net: torch.nn.Module, extra: dict) -> dict:
        return {"format": CKPT_FORMAT, "kind": kind, "model_config": model_cfg.to_dict(),
                "train_config": cfg.to_dict(), "task": task_info, "split": split_info,
                "target": target.state(),
                "state_dict": net.state_dict(), **extra}

    def save_latest(epoch: int) -> None:
        extra = distributed.checkpoint_extra(model, ema, dd) if dd.enabled else {}   # collective
        if not dd.is_main:
            return
        _atomic_save({**state("latest", model, {}), "ema_state_dict": ema.state_dict(),
                      "optimizer": opt.state_dict(), "epoch": epoch, "step": step, "wall_s": wall,
                      "best": best, "best_ema": best_ema,
                      "rng": {"torch": torch.get_rng_state(), "gen": gen.get_state(),
                              "numpy": rng.bit_generator.state}, **extra}, latest)

    if dd.is_main:
        write_status(run_dir, "running", epoch=start_epoch, epochs=cfg.epochs)
    bar = None
    if progress and dd.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"train {cfg.space} n={cfg.train_size}",
                   unit="ep", dynamic_ncols=True)
    t0, last_save, session_start = time.perf_counter(), time.perf_counter(), time.perf_counter()
    epoch, stopped = start_epoch - 1, False
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            perm = rng.permutation(len(train_idx))
            sums = np.zeros(4)
            for b in range(steps_per_epoch):
                bi = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                # Drawn before the twins and for the whole global batch, like them (see below).
                ops_b = ops_tr[bi] if equivalents is None else equivalents.ops_for(bi, rng)
                # The twin: same architectures, intermediate nodes renumbered along another order.
                order = twins.permutations(train_idx[bi], rng)
                weight, pairs = 1.0, None
                if dd.enabled:
                    # Every rank drew the whole global batch's twins and pairing above (so all
                    # generators stay in step) and keeps its own slice. A rank left without
                    # samples computes one with weight 0 so it still joins the all-reduce.
                    lo, hi = distributed.shard_bounds(len(bi), dd.rank, dd.world_size)
                    pairs = distributed.local_pairs(torch.randperm(len(bi), generator=gen), lo, hi)
                    weight = (hi - lo) / len(bi)
                    if hi == lo:
                        lo, hi, pairs = 0, 1, torch.zeros(1, dtype=torch.int64)
                    bi, order, ops_b = bi[lo:hi], order[lo:hi], ops_b[lo:hi]
                adj_b = adj_tr if adj_tr.ndim == 2 else adj_tr[bi]
                ops_t, adj_t = apply_permutation(ops_b, adj_b, order)
                tw = tokenize_cells(ops_t, adj_t, n_tr[bi], scheme=cfg.scheme)
                tw_depth = torch.from_numpy(tw.depth).to(device)
                tw_nodes = torch.from_numpy(tw.nodes).to(device)
                tw_mask = None if tw.mask.all() else torch.from_numpy(tw.mask).to(device)
                bi_t = torch.from_numpy(bi).to(device)
                if equivalents is None:
                    d, n = tr_depth[bi_t], tr_nodes[bi_t]
                    m = None if tr_mask is None else tr_mask[bi_t]
                else:
                    eq = tokenize_cells(ops_b, adj_b, n_tr[bi], scheme=cfg.scheme)
                    d, n = torch.from_numpy(eq.depth).to(device), torch.from_numpy(eq.nodes).to(device)
                    m = None if eq.mask.all() else torch.from_numpy(eq.mask).to(device)
                with autocast(precision, device):
                    if cfg.twin_grad and tw_mask is None and m is None:
                        out = model(torch.cat([d, tw_depth]), torch.cat([n, tw_nodes]))
                        pred, pred_twin = out.chunk(2)
                    elif cfg.twin_grad:
                        pred, pred_twin = model(d, n, m), model(tw_depth, tw_nodes, tw_mask)
                    else:
                        pred = model(d, n, m)
                        with torch.no_grad():
                            pred_twin = model(tw_depth, tw_nodes, tw_mask)
                pred, pred_twin = pred.float(), pred_twin.float()      # losses in float32
                mse, rank, cons = loss_terms(pred, pred_twin, y_tr[bi_t], gen, pairs,
                                             cfg.rank_loss, cfg.rank_scale)
                loss = mse + cfg.lambda_rank * rank + cfg.lambda_cons * cons
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(step, total_steps, cfg.warmup)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if dd.enabled:
                    distributed.sum_gradients(model, weight, dd)   # the global batch's mean gradient
                opt.step()
                ema_update(ema, model, cfg.ema_decay)
                step += 1
                sums += [weight * loss.item(), weight * mse.item(), weight * rank.item(), weight * cons.item()]
            if dd.enabled:
                sums = distributed.sum_values(sums, dd)     # per-step global batch means, as one process logs

            now = time.perf_counter()
            wall += now - t0
            t0 = now
            last = epoch == cfg.epochs - 1
            if ((epoch + 1) % cfg.eval_every == 0 or last) and dd.is_main:
                p_raw = predict_tokens(model, va_depth, va_nodes, va_mask)
                p_ema = predict_tokens(ema, va_depth, va_nodes, va_mask)
                row = {"step": step, "epoch": epoch + 1, "loss": sums[0] / steps_per_epoch,
                       "mse": sums[1] / steps_per_epoch, "rank": sums[2] / steps_per_epoch,
                       "cons": sums[3] / steps_per_epoch, "val_tau": kendall_tau(p_raw, y_va),
                       "val_tau_ema": kendall_tau(p_ema, y_va), "lr": opt.param_groups[0]["lr"],
                       "wall_s": round(wall, 3)}
                if row["val_tau"] > best["val_tau"]:
                    best = {"val_tau": row["val_tau"], "epoch": epoch + 1}
                    _atomic_save(state("best", model, {"epoch": epoch + 1, "val_tau": row["val_tau"]}),
                                 run_dir / "best.pt")
                if row["val_tau_ema"] > best_ema["val_tau"]:
                    best_ema = {"val_tau": row["val_tau_ema"], "epoch": epoch + 1}
                    _atomic_save(state("best_ema", ema, {"epoch": epoch + 1, "val_tau": row["val_tau_ema"]}),
                                 run_dir / "best_ema.pt")
                if cfg.test_every and ((epoch + 1) % cfg.test_every == 0 or last):
                    # Reporting only: the test curve never feeds a choice.
                    t_eval = time.perf_counter()
                    row.update(test_taus(ema, task, cfg.scheme, device, test_ok, prefix="test_tau_ema"))
                    t0 += time.perf_counter() - t_eval     # keep test passes out of the wall clock
                writer.write(row)
                if bar:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", tau=f"{row['val_tau']:.3f}",
                                    ema=f"{row['val_tau_ema']:.3f}")
                if on_epoch:
                    on_epoch(row)
            if bar:
                bar.update(1)
            stop_file = run_dir / "STOP"
            out_of_time = max_seconds is not None and time.perf_counter() - session_start > max_seconds
            stop = stop_file.exists() or out_of_time
            save_due = time.perf_counter() - last_save > cfg.save_every_s and not last
            if dd.enabled:
                # Rank 0's view decides for all, so every rank leaves the loop after the same epoch.
                stop, save_due = distributed.broadcast_flags([stop, save_due], dd)
            if stop:
                if dd.is_main:
                    stop_file.unlink(missing_ok=True)
                save_latest(epoch)
                stopped = not last
                break
            if save_due:
                save_latest(epoch)
                last_save = time.perf_counter()
                if dd.is_main:
                    write_status(run_dir, "running", epoch=epoch + 1, epochs=cfg.epochs)
        else:
            pass
        save_latest(epoch)
    except BaseException as e:
        if dd.is_main:
            write_status(run_dir, "failed" if not isinstance(e, KeyboardInterrupt) else "stopped",
                         epoch=epoch + 1, epochs=cfg.epochs, message=f"{type(e).__name__}: {e}")
        distributed.shutdown(dd, synchronise=False)
        raise
    finally:
        if bar:
            bar.close()
    if stopped:
        if dd.is_main:
            write_status(run_dir, "stopped", epoch=epoch + 1, epochs=cfg.epochs)
        distributed.shutdown(dd)
        return {"state": "stopped", "epoch": epoch + 1}
    summary = None
    if dd.is_main:
        summary = select_on_validation(run_dir)
        summary.update({"state": "finished", "train_seconds": round(wall, 2), "epochs": cfg.epochs,
                        "steps": step, "n_train": len(train_idx), "n_val": len(val_idx)})
        if dd.enabled:
            summary["world_size"] = dd.world_size
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        write_status(run_dir, "finished", epoch=cfg.epochs, epochs=cfg.epochs)
    if dd.enabled:
        summary = distributed.broadcast_object(summary, dd)   # every rank returns the same summary
        distributed.shutdown(dd)
    return summary


def test_taus(model, task: AccuracyTask, scheme: str, device, test_ok=None, prefix="test_tau") -> dict:
    tk = task.tokens(scheme)
    mask = None if tk.mask.all() else torch.from_numpy(tk.mask).to(device)
    p = predict_tokens(model, torch.from_numpy(tk.depth).to(device), torch.from_numpy(tk.nodes).to(device), mask)
    ok = ~np.isnan(task.y_test) if test_ok is None else test_ok
    return {prefix: kendall_tau(p[ok], task.y_test[ok])}


def select_on_validation(run_dir: Path) -> dict:
    """Pick among last / best / best-EMA by validation tau only (never by test figures)."""
    rows = read_log(run_dir / "metrics.jsonl")
    last = rows[-1]
    cands = {"last": last["val_tau"]}
    for kind in ("best", "best_ema"):
        p = run_dir / f"{kind}.pt"
        if p.exists():
            cands[kind] = torch.load(p, map_location="cpu", weights_only=True)["val_tau"]
    # Prefer a saved best checkpoint on ties: it is the same weights or better on validation.
    order = ["best_ema", "best", "last"]
    selected = max(order, key=lambda k: (cands.get(k, -2.0), -order.index(k)))
    return {"selected": selected, "val_tau": cands[selected], "candidates": cands}


# Settings that may change when a run is resumed; everything else must match the checkpoint.
RESUMABLE_CHANGES = {"save_every_s", "eval_every", "test_every", "device", "threads", "data_dir"}


def check_same_run(ck: dict, cfg: TrainConfig, train_idx, val_idx) -> None:
    """Resuming with another split, schedule or loss would silently splice two runs together."""
    old, new = ck["train_config"], cfg.to_dict()
    # A setting added after the checkpoint was written counts as its default (the old behaviour).
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    diff = {k: (old.get(k, defaults.get(k)), v) for k, v in new.items()
            if k not in RESUMABLE_CHANGES and old.get(k, defaults.get(k)) != v}
    if diff:
        raise ValueError(f"this run folder was started with other settings {diff} (folder, requested); "
                         "use a new folder or start fresh")
    if not (np.array_equal(ck["split"]["train"].numpy(), train_idx)
            and np.array_equal(ck["split"]["val"].numpy(), val_idx)):
        raise ValueError("this run folder was trained on another split; use a new folder or start fresh")


def check_compatible(ck: dict, model_cfg: NARFormerConfig) -> None:
    if ck.get("format") != CKPT_FORMAT:
        raise ValueError(f"not a NAR-Former checkpoint (format {ck.get('format')!r}, expected {CKPT_FORMAT!r})")
    if ck["model_config"] != model_cfg.to_dict():
        diff = {k: (ck["model_config"].get(k), v) for k, v in model_cfg.to_dict().items()
                if ck["model_config"].get(k) != v}
        raise ValueError(f"the checkpoint was trained with a different model config: {diff} (checkpoint, requested)")
