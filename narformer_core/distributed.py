"""Data-parallel training across processes started by torchrun (docs/DISTRIBUTED.md).

    torchrun --nproc_per_node=2 -m narformer_core train ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them (or with WORLD_SIZE=1) training is the
ordinary single-process loop and nothing here runs. With them, every rank draws the same epoch
permutation, twin orders and pair permutation (same seeds), keeps its own contiguous slice of each
global batch of ``batch_size`` architectures, and the gradients are summed across ranks weighted
by slice size, so one step uses the mean gradient of the whole global batch, as one process would.
Rank 0 alone validates and writes files; its STOP / time-limit / save decisions are broadcast so
every rank leaves the loop after the same epoch.

We all-reduce one flat gradient buffer ourselves instead of wrapping the model in
DistributedDataParallel: the model stays a plain NARFormer (checkpoint keys, the EMA copy and
prediction code are unchanged), and a rank whose slice is tiny can take part with weight 0.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. ``Dist()`` is the single-process case."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    owns_group: bool = False      # we initialised the process group, so we also tear it down
    device: str = "cpu"           # where collective buffers live (NCCL needs the GPU)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env(environ=None) -> Dist:
    """Read torchrun's variables; a clear ValueError when they contradict each other."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return Dist()
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (as torchrun sets them), got "
                         f"RANK={env.get('RANK')!r} WORLD_SIZE={env.get('WORLD_SIZE')!r} "
                         f"LOCAL_RANK={env.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent distributed settings: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}; "
                         "RANK must be in 0..WORLD_SIZE-1")
    return Dist(rank=rank, world_size=world, local_rank=local)


def threads_per_process(world_size: int, cores: int | None = None) -> int:
    """Intra-op threads per rank so that N ranks do not oversubscribe the cores they share."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:       # not on Linux
            cores = os.cpu_count() or 1
    return max(1, int(cores) // max(1, int(world_size)))


def init(d: Dist, device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group (gloo on CPU, NCCL on GPU); each rank gets its own GPU."""
    import torch.distributed as dist

    if not d.enabled:
        return d, device
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=d.rank, world_size=d.world_size)
        owns = True
    backend = dist.get_backend()
    if not d.is_main:
        # Only rank 0 speaks: the CLI prints the run summary after train() returns, once per process.
        sys.stdout = open(os.devnull, "w")
    comm = str(device) if backend == "nccl" else "cpu"
    return Dist(d.rank, d.world_size, d.local_rank, backend, owns, comm), device


# Set once this process has left a process group it joined (see exit_process).
_LEFT_GROUP = False


def exit_process(code: int) -> None:
    """End a torchrun worker that has left its process group without running interpreter teardown.

    Why: even after both ranks met at the barrier and destroyed the group, one of them was aborted
    at exit now and then ("terminate called without an active exception", exit -6: a gloo thread
    still joinable when C++ static objects are destroyed; 3 of 8 runs of the two-process test on a
    loaded 2-core VM, both ranks past destroy_process_group). Everything the run writes is written
    and closed by then, so the worker flushes its streams and leaves with its own exit code.
    Outside such a worker this returns and the caller exits normally.
    """
    if not _LEFT_GROUP:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(int(code or 0))


def shutdown(d: Dist, synchronise: bool = True) -> None:
    """Leave the process group. ``synchronise=False`` on the error path: the other ranks may be
    waiting in a collective this rank will never join, and a barrier there could hang."""
    import torch.distributed as dist

    if d.owns_group and dist.is_initialized():
        # Every rank reaches this point before any tears its connections down: without the
        # barrier a rank that destroyed its group first could close sockets that the other
        # rank's gloo threads still served, which aborted that process now and then
        # ("terminate called without an active exception", exit -6; 2 runs in 6 of the test).
        if synchronise:
            dist.barrier()
        dist.destroy_process_group()
        global _LEFT_GROUP
        _LEFT_GROUP = True


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous [lo, hi) slice of a batch of n for this rank; sizes differ by at most one."""
    return n * rank // world_size, n * (rank + 1) // world_size


def local_pairs(global_perm: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """A random pairing within this rank's slice, derived from the permutation every rank drew.

    One process pairs each sample with ``perm[i]`` across the whole batch; a rank sees only its
    slice, so it ranks the slice's entries of the shared permutation instead (still uniform).
    """
    return torch.argsort(global_perm[lo:hi])


@torch.no_grad()
def sum_gradients(model: torch.nn.Module, weight: float, d: Dist) -> None:
    """grad <- sum over ranks of weight_r * grad_r, in one all-reduce.

    With weight_r = (slice size) / (global batch), the result is the gradient of the mean loss
    over the global batch. A parameter without a gradient on every rank keeps None, as AdamW
    then skips it exactly as in one process.
    """
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    dev = params[0].device
    parts = [(p.grad.reshape(-1) * weight) if p.grad is not None else torch.zeros(p.numel(), device=dev)
             for p in params]
    has = torch.tensor([p.grad is not None for p in params], dtype=parts[0].dtype, device=dev)
    flat = torch.cat(parts + [has])
    dist.all_reduce(flat)
    off = 0
    for p in params:
        g = flat[off:off + p.numel()].view_as(p)
        off += p.numel()
        if p.grad is not None:
            p.grad.copy_(g)
        else:
            p.grad = g.clone()
    for p, present in zip(params, flat[off:].tolist()):
        if present == 0:
            p.grad = None


def sum_values(values: np.ndarray, d: Dist) -> np.ndarray:
    import torch.distributed as dist

    t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=d.device)
    dist.all_reduce(t)
    return t.cpu().numpy()


def broadcast_flags(flags: list[bool], d: Dist) -> list[bool]:
    """Rank 0's booleans, on every rank."""
    import torch.distributed as dist

    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=d.device)
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.tolist()]


def broadcast_object(obj, d: Dist):
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=torch.device(d.device))
    return box[0]


def gather_objects(obj, d: Dist) -> list:
    import torch.distributed as dist

    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, d: Dist) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    import torch.distributed as dist

    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def fingerprint(module: torch.nn.Module) -> list[float]:
    """A few float64 sums that differ when two copies of a model differ in any weight."""
    s, s2 = 0.0, 0.0
    for i, p in enumerate(module.parameters()):
        v = p.detach().double()
        s += float(v.sum())
        s2 += float((v * (i + 1)).abs().sum())
    return [s, s2]


def checkpoint_extra(model: torch.nn.Module, ema: torch.nn.Module, d: Dist) -> dict:
    """Collective (every rank calls it at the same point). What rank 0 adds to latest.pt.

    Each rank's torch RNG (dropout masks differ per rank) so a resume continues every rank's
    stream; and a check that the replicas still hold identical weights. Should they ever drift
    (they should not: same start, same summed gradients, same optimiser), rank 0's weights are
    copied to all ranks and a warning says so, rather than training diverging copies unnoticed.
    """
    got = gather_objects({"torch_rng": torch.get_rng_state(),
                          "fp": fingerprint(model) + fingerprint(ema)}, d)
    if any(g["fp"] != got[0]["fp"] for g in got):
        if d.is_main:
            print("warning: data-parallel replicas drifted apart; re-synchronised to rank 0's weights",
                  file=sys.stderr)
        broadcast_module(model, d)
        broadcast_module(ema, d)
    return {"distributed": {"world_size": d.world_size, "backend": d.backend},
            "rng_ranks": [g["torch_rng"] for g in got]}


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """A per-rank torch seed (only dropout uses torch's global RNG during training)."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(1)[0])
