"""Architecture search in the NB201 space with the benchmark as the oracle (METHOD.md section 8).

An *evaluation* is one lookup of an architecture's accuracy in a label array (what training it
would have told us). The :class:`Oracle` counts every lookup, charges each distinct cell once and
refuses to go past the budget, so every algorithm is compared at the same number of evaluations:

- ``random``: cells drawn uniformly without replacement.
- ``evolution``: regularised evolution (Real et al. 2019): tournament selection of a parent,
  one-edge mutation (``spaces.nb201.mutate``), the oldest member dies.
- ``predictor``: predictor-guided evolution (NPENAS style): each round the best evaluated cells
  are mutated into many candidates, a predictor retrained on every evaluated cell ranks them and
  the top ``n_select`` (10) are evaluated.

The predictor only ever sees a copy of the task whose labels are NaN except where the oracle has
answered, so it cannot learn from a cell the search has not paid for.

Multi-objective: with a device and a latency budget, only cells whose latency (from the measured
table, or a ``latency_fn`` hook such as a latency predictor) is within the budget are candidates;
latency is assumed cheap and is not charged. Results carry the Pareto front of (latency,
accuracy) of the evaluated cells.

No algorithm's decisions depend on the budget, so the first ``b`` evaluations of a run with a
larger budget are exactly a run with budget ``b`` (tests check it): ``SearchResult.prefix``.
"""
from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Mapping, Sequence

import numpy as np

from .spaces import nb201

ALGORITHMS = ("random", "evolution", "predictor")
DEFAULT_REPORT_LABELS = ("nb201-test", "analog")
# progress(evaluations done, budget, best accuracy so far) after every charged evaluation
Progress = Callable[[int, int, float], None]


class BudgetExhausted(RuntimeError):
    """Raised by the oracle when a new evaluation would exceed the budget."""


@dataclass(frozen=True)
class Evaluation:
    n: int            # 1-based evaluation number
    index: int        # cell index in spaces.nb201.enumerate_all() order
    arch: str
    acc: float        # search label (%)
    best: float       # best search label so far (%)


def _better(a: float, b: float) -> bool:
    """a > b with NaN (a cell without a label) worst."""
    return not np.isnan(a) and (np.isnan(b) or a > b)


class Oracle:
    """Counted, capped accuracy lookups. Repeated lookups of a cell are free (and counted apart)."""

    def __init__(self, labels: np.ndarray, budget: int, progress: Progress | None = None,
                 on_evaluate: Callable[[int, float], None] | None = None):
        if int(budget) != budget or budget < 1:
            raise ValueError(f"the budget must be a positive whole number of evaluations, got {budget}")
        self.labels = np.asarray(labels, dtype=np.float64)
        self.budget = int(budget)
        self.progress, self.on_evaluate = progress, on_evaluate
        self.cache: dict[int, float] = {}    # insertion order = evaluation order
        self.history: list[Evaluation] = []
        self.lookups = 0                     # every call, repeats included
        self._best = np.nan

    @property
    def evaluations(self) -> int:
        return len(self.cache)

    @property
    def remaining(self) -> int:
        return self.budget - len(self.cache)

    def seen(self, index: int) -> bool:
        return int(index) in self.cache

    def __call__(self, index: int) -> float:
        index = int(index)
        self.lookups += 1
        if index in self.cache:
            return self.cache[index]
        if len(self.cache) >= self.budget:
            raise BudgetExhausted(f"the budget of {self.budget} evaluations is spent")
        acc = float(self.labels[index])
        self.cache[index] = acc
        if _better(acc, self._best):
            self._best = acc
        self.history.append(Evaluation(len(self.cache), index, nb201.to_arch_str(_cells()[index]), acc, self._best))
        if self.on_evaluate:
            self.on_evaluate(index, acc)
        if self.progress:
            self.progress(len(self.cache), self.budget, self._best)
        return acc


def _cells() -> tuple[tuple[str, ...], ...]:
    return nb201.enumerate_all()


# ---------------------------------------------------------------------------- the (constrained) space
class Space:
    """NB201 cells, optionally restricted to a feasible set (e.g. under a latency budget)."""

    def __init__(self, feasible: np.ndarray | None = None):
        self.feasible = np.ones(nb201.N_ARCHS, bool) if feasible is None else np.asarray(feasible, bool)
        if self.feasible.shape != (nb201.N_ARCHS,):
            raise ValueError(f"a feasibility mask needs one entry per NB201 cell ({nb201.N_ARCHS})")
        self.size = int(self.feasible.sum())
        if self.size == 0:
            raise ValueError("no cell satisfies the constraint: relax the latency budget")

    def random_order(self, rng: np.random.Generator) -> np.ndarray:
        """Every feasible cell once, in random order (sampling without replacement)."""
        return rng.permutation(np.flatnonzero(self.feasible))

    def random_unseen(self, rng: np.random.Generator, oracle: Oracle) -> int | None:
        left = self.feasible.copy()
        left[list(oracle.cache)] = False
        pool = np.flatnonzero(left)
        return int(rng.choice(pool)) if pool.size else None

    def mutate(self, index: int, rng: np.random.Generator, tries: int = 50) -> int | None:
        """A feasible one-edge mutant of a cell (None if none found in ``tries`` draws)."""
        ops = _cells()[index]
        for _ in range(tries):
            child = nb201.index_of(nb201.mutate(ops, rng))
            if self.feasible[child]:
                return child
        return None

    def mutate_unseen(self, index: int, rng: np.random.Generator, oracle: Oracle, tries: int = 50) -> int | None:
        """A feasible, not yet evaluated mutant; else a random feasible unseen cell."""
        ops = _cells()[index]
        for _ in range(tries):
            child = nb201.index_of(nb201.mutate(ops, rng))
            if self.feasible[child] and not oracle.seen(child):
                return child
        return self.random_unseen(rng, oracle)


# ---------------------------------------------------------------------------- algorithms
def random_search(oracle: Oracle, space: Space, rng: np.random.Generator) -> None:
    for i in space.random_order(rng)[: oracle.remaining]:
        oracle(i)


def regularized_evolution(oracle: Oracle, space: Space, rng: np.random.Generator,
                          population_size: int = 20, sample_size: int = 5) -> None:
    if population_size < 2 or not 1 <= sample_size <= population_size:
        raise ValueError(f"evolution needs population >= 2 and 1 <= sample size <= population, "
                         f"got {population_size} and {sample_size}")
    pop: deque[tuple[int, float]] = deque()
    for i in space.random_order(rng)[:population_size]:
        if oracle.remaining == 0:
            return
        pop.append((int(i), oracle(i)))
    while oracle.remaining > 0:
        contenders = rng.choice(len(pop), size=min(sample_size, len(pop)), replace=False)
        parent = pop[int(contenders[0])]
        for c in contenders[1:]:
            if _better(pop[int(c)][1], parent[1]):
                parent = pop[int(c)]
        child = space.mutate_unseen(parent[0], rng, oracle)
        if child is None:   # the whole feasible space is evaluated
            return
        pop.append((child, oracle(child)))
        pop.popleft()   # aging: the oldest dies, not the worst


def narformer_guide_defaults() -> dict:
    """NAR-Former as a search guide trains from scratch every round on at most a few hundred
    cells, on a CPU: the fast preset's model and losses (cli.PRESETS["fast"]) for 100 epochs."""
    import copy

    from .cli import PRESETS

    return {"train_kwargs": {**copy.deepcopy(PRESETS["fast"]), "epochs": 100}}


def _guide_kwargs(predictor, predictor_kwargs: dict | None) -> dict | None:
    """The guide's constructor arguments: NAR-Former's defaults unless the caller gave its own."""
    if predictor == "narformer" and predictor_kwargs is None:
        return narformer_guide_defaults()
    return predictor_kwargs


def predictor_guided_evolution(oracle: Oracle, space: Space, rng: np.random.Generator, task,
                               predictor: str | Callable = "gbdt", predictor_kwargs: dict | None = None,
                               n_init: int = 10, n_parents: int = 10, n_mutations: int = 20, n_select: int = 10,
                               val_fraction: float | None = None, seed: int = 0, on_round=None) -> None:
    """NPENAS-style search. ``task`` is the masked view made by :func:`run_search`.

    ``predictor`` is a registry name of ``baselines.PREDICTORS`` or a factory returning a fresh
    predictor; it is retrained from scratch each round on every evaluated cell (a share
    ``val_fraction`` held out for checkpoint selection; NAR-Former needs it, default 0.2 for it).
    """
    from .baselines import make_predictor

    if min(n_init, n_parents, n_mutations, n_select) < 1:
        raise ValueError("n_init, n_parents, n_mutations and n_select must all be at least 1")
    name = predictor if isinstance(predictor, str) else getattr(predictor, "__name__", "custom")
    predictor_kwargs = _guide_kwargs(predictor, predictor_kwargs)
    factory = (lambda: make_predictor(predictor, **(predictor_kwargs or {}))) if isinstance(predictor, str) else predictor
    if val_fraction is None:
        val_fraction = 0.2 if name == "narformer" else 0.0
    for i in space.random_order(rng)[:n_init]:
        if oracle.remaining == 0:
            return
        oracle(i)
    rnd = 0
    while oracle.remaining > 0:
        done = np.fromiter(oracle.cache, dtype=np.int64)
        accs = np.fromiter(oracle.cache.values(), dtype=np.float64)
        # candidates: mutants of the best evaluated cells, new and feasible, in a fixed order
        order = np.argsort(-np.nan_to_num(accs, nan=-np.inf), kind="stable")
        cands: dict[int, None] = {}
        for p in done[order[:n_parents]]:
            for _ in range(n_mutations):
                c = space.mutate(int(p), rng)
                if c is not None and not oracle.seen(c):
                    cands[c] = None
        if not cands:   # every mutant is known: widen with random unseen cells
            for _ in range(n_parents * n_mutations):
                c = space.random_unseen(rng, oracle)
                if c is None:
                    break
                cands[c] = None
            if not cands:
                return
        cands_arr = np.fromiter(cands, dtype=np.int64)
        labelled = done[~np.isnan(accs)]
        if len(labelled) >= 2:
            tr, va = labelled, None
            if val_fraction > 0 and len(labelled) >= 10:
                perm = np.random.default_rng([seed, rnd]).permutation(labelled)
                k = max(2, int(round(len(perm) * val_fraction)))
                tr, va = np.sort(perm[k:]), np.sort(perm[:k])
            model = factory().fit(task, tr, va, seed=seed * 1000 + rnd)
            scores = np.asarray(model.predict(task, cands_arr), dtype=np.float64)
        else:
            scores = rng.random(len(cands_arr))
        picks = cands_arr[np.argsort(-scores, kind="stable")[:n_select]]
        for c in picks:
            if oracle.remaining == 0:
                break
            oracle(c)
        if on_round:
            on_round(rnd, oracle.evaluations)
        rnd += 1


# ---------------------------------------------------------------------------- latency objective
@dataclass
class LatencyObjective:
    device: str
    budget_ms: float | None      # None: no constraint, latency is only reported (Pareto front)
    latency: np.ndarray          # ms per cell in enumeration order, NaN = unknown
    source: str = "measured table"

    @property
    def feasible(self) -> np.ndarray:
        ok = np.isfinite(self.latency)
        return ok & (self.latency <= self.budget_ms) if self.budget_ms is not None else np.ones_like(ok)

    def to_dict(self) -> dict:
        known = self.latency[np.isfinite(self.latency)]
        return {"device": self.device, "budget_ms": self.budget_ms, "source": self.source,
                "n_feasible": int(self.feasible.sum()), "n_known": int(known.size),
                "min_ms": float(known.min()) if known.size else None,
                "median_ms": float(np.median(known)) if known.size else None}


def latency_objective(device: str, budget_ms: float | None = None, data_dir=None,
                      latency_fn: Callable[[str], np.ndarray] | None = None) -> LatencyObjective:
    """Latency of every NB201 cell on ``device``: the measured table unless ``latency_fn`` is given.

    ``latency_fn(device) -> (15625,) ms`` is the hook for a latency predictor.
    """
    from .data.latency_sets import NB201_DEVICES, nb201_device_latency

    if latency_fn is None and device not in NB201_DEVICES:
        raise ValueError(f"unknown NB201 latency device {device!r}; known: {', '.join(NB201_DEVICES)}")
    if budget_ms is not None and not (np.isfinite(budget_ms) and budget_ms > 0):
        raise ValueError(f"the latency budget must be a positive number of ms, got {budget_ms}")
    lat = nb201_device_latency(device, data_dir) if latency_fn is None else np.asarray(latency_fn(device), float)
    if lat.shape != (nb201.N_ARCHS,):
        raise ValueError(f"latency_fn must return one latency per NB201 cell ({nb201.N_ARCHS}), got {lat.shape}")
    obj = LatencyObjective(device, None if budget_ms is None else float(budget_ms), lat,
                           "measured table" if latency_fn is None else getattr(latency_fn, "__name__", "latency_fn"))
    if budget_ms is not None and not obj.feasible.any():
        known = lat[np.isfinite(lat)]
        raise ValueError(f"no NB201 cell runs within {budget_ms} ms on {device} "
                         f"(the fastest known takes {known.min():.4g} ms)")
    return obj


def pareto_front(latency: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Positions of the points no other point beats on both (lower latency, higher accuracy),
    sorted by latency. NaN points are ignored."""
    latency, acc = np.asarray(latency, float), np.asarray(acc, float)
    ok = np.flatnonzero(np.isfinite(latency) & np.isfinite(acc))
    order = ok[np.lexsort((-acc[ok], latency[ok]))]   # by latency, then best accuracy first
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return np.asarray(front, dtype=np.int64)


# ---------------------------------------------------------------------------- results
@dataclass
class SearchResult:
    algo: str
    budget: int
    seed: int
    labels: str
    history: list[Evaluation]
    best_index: int
    best_arch: str
    best_acc: float                    # search label of the best found
    test: dict[str, float]             # the best found on each reporting source
    regret: dict[str, float]           # best in the (feasible) space minus the best found, per source
    space_best: dict[str, dict]        # per source: the best feasible cell and its value
    lookups: int
    wall_s: float
    cpu_s: float
    options: dict = field(default_factory=dict)
    objective: dict | None = None
    pareto: list[dict] = field(default_factory=list)
    _ctx: dict = field(default_factory=dict, repr=False)

    @property
    def evaluations(self) -> int:
        return len(self.history)

    def best_curve(self) -> np.ndarray:
        return np.array([e.best for e in self.history])

    def prefix(self, n: int) -> "SearchResult":
        """The result this run had after its first ``n`` evaluations (= a run with budget ``n``)."""
        if not 1 <= n <= len(self.history):
            raise ValueError(f"a prefix needs 1..{len(self.history)} evaluations, got {n}")
        return _finish(self.algo, n, self.seed, self.history[:n], self._ctx, self.lookups, self.wall_s,
                       self.cpu_s, self.options)

    def to_dict(self, history: bool = True) -> dict:
        d = {"algo": self.algo, "budget": self.budget, "seed": self.seed, "labels": self.labels,
             "evaluations": self.evaluations, "lookups": self.lookups,
             "best": {"index": self.best_index, "arch": self.best_arch, "acc": _num(self.best_acc),
                      "test": {k: _num(v) for k, v in self.test.items()}},
             "regret": {k: _num(v) for k, v in self.regret.items()},
             "space_best": self.space_best, "wall_s": round(self.wall_s, 3), "cpu_s": round(self.cpu_s, 3),
             "options": self.options, "objective": self.objective, "pareto": self.pareto}
        if history:
            d["history"] = [dataclasses.asdict(e) | {"acc": _num(e.acc), "best": _num(e.best)} for e in self.history]
        return d


def _num(x) -> float | None:
    """JSON has no NaN: unknown values become null."""
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def _finish(algo, budget, seed, history, ctx, lookups, wall, cpu, options) -> SearchResult:
    idx = np.array([e.index for e in history], dtype=np.int64)
    accs = np.array([e.acc for e in history])
    best = int(idx[int(np.argmax(np.nan_to_num(accs, nan=-np.inf)))])
    feasible = ctx["feasible"]
    test, regret, space_best = {}, {}, {}
    for src, y in ctx["sources"].items():
        known = feasible & np.isfinite(y)
        top = int(np.flatnonzero(known)[np.argmax(y[known])])
        space_best[src] = {"index": top, "arch": nb201.to_arch_str(_cells()[top]), "acc": _num(y[top])}
        if src != ctx["labels"]:
            test[src] = float(y[best])
        regret[src] = float(y[top] - y[best])
    pareto: list[dict] = []
    obj = ctx.get("objective")
    if obj is not None:
        lat = obj.latency[idx]
        for k in pareto_front(lat, accs):
            pareto.append({"index": int(idx[k]), "arch": history[k].arch, "latency_ms": _num(lat[k]),
                           "acc": _num(accs[k])})
    return SearchResult(algo, budget, seed, ctx["labels"], list(history), best, nb201.to_arch_str(_cells()[best]),
                        float(ctx["sources"][ctx["labels"]][best]), test, regret, space_best, lookups, wall, cpu,
                        options, None if obj is None else {**obj.to_dict(),
                                                           "best_latency_ms": _num(obj.latency[best])},
                        pareto, ctx)


@lru_cache(maxsize=1)
def _structure_task():
    """The NB201 space as a label-free task (ops and wiring only), shared by every search."""
    from .tasks import AccuracyTask

    cells = _cells()
    nan = np.full(len(cells), np.nan)
    return AccuracyTask("nb201", "none", "none", nb201.op_id_matrix(cells), nb201.adjacency(),
                        np.full(len(cells), 8), nan, nan, [nb201.to_arch_str(c) for c in cells])


def _label_array(name: str, y, data_dir) -> np.ndarray:
    from .data.nb201 import load_labels

    if isinstance(y, str):
        return load_labels(y, data_dir)
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (nb201.N_ARCHS,):
        raise ValueError(f"label array {name!r} needs one value per NB201 cell ({nb201.N_ARCHS}), got shape {y.shape}")
    return y


def run_search(algo: str = "evolution", budget: int = 100, seed: int = 0, labels: str | np.ndarray = "nb201-val",
               test_labels: Sequence[str] | Mapping[str, np.ndarray] = DEFAULT_REPORT_LABELS, device: str | None = None,
               latency_budget: float | None = None, predictor: str | Callable = "gbdt",
               predictor_kwargs: dict | None = None, progress: Progress | None = None, data_dir=None,
               latency_fn: Callable[[str], np.ndarray] | None = None, **options) -> SearchResult:
    """Run one search and report it against ``labels`` (searched) and each of ``test_labels``.

    Label sources are names of ``data.nb201.LABEL_SOURCES`` or arrays over the 15,625 cells
    (``labels`` as an array is reported as "custom"). ``options`` go to the algorithm
    (population_size, sample_size for evolution; n_init, n_parents, n_mutations, n_select,
    val_fraction, on_round for predictor).
    """
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown search algorithm {algo!r}; choose from {', '.join(ALGORITHMS)}")
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise ValueError(f"the budget must be a positive whole number of evaluations, got {budget}")
    if latency_budget is not None and device is None:
        raise ValueError("a latency budget needs a device to measure latency on")
    if algo == "predictor" and isinstance(predictor, str):
        from .baselines import PREDICTORS
        if predictor not in PREDICTORS:
            raise ValueError(f"unknown predictor {predictor!r}; known: {', '.join(PREDICTORS)}")
    obj = latency_objective(device, latency_budget, data_dir, latency_fn) if device is not None else None
    space = Space(None if obj is None else obj.feasible)
    if budget > space.size:
        raise ValueError(f"a budget of {budget} evaluations exceeds the {space.size} cells that can be searched")
    name = labels if isinstance(labels, str) else "custom"
    y = _label_array(name, labels, data_dir)
    tests = test_labels if isinstance(test_labels, Mapping) else {s: s for s in test_labels}
    sources = {name: y, **{s: _label_array(s, v, data_dir) for s, v in tests.items() if s != name}}
    oracle = Oracle(y, budget, progress)
    rng = np.random.default_rng(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    if algo == "random":
        _check_options(options, (), algo)
        random_search(oracle, space, rng)
    elif algo == "evolution":
        _check_options(options, ("population_size", "sample_size"), algo)
        regularized_evolution(oracle, space, rng, **options)
    else:
        _check_options(options, ("n_init", "n_parents", "n_mutations", "n_select", "val_fraction", "on_round"), algo)
        base = _structure_task()
        # The predictor's view: labels only where the oracle has answered. It shares the space's
        # arrays, so tokens and encodings are computed once per process, not per search.
        view = dataclasses.replace(base, labels=name, test_labels=name, y=np.full(len(base), np.nan),
                                   y_test=np.full(len(base), np.nan), _tokens=base._tokens)

        def reveal(i: int, acc: float) -> None:
            view.y[i] = acc

        oracle.on_evaluate = reveal
        predictor_kwargs = _guide_kwargs(predictor, predictor_kwargs)
        predictor_guided_evolution(oracle, space, rng, view, predictor, predictor_kwargs, seed=seed, **options)
        options = {"predictor": predictor if isinstance(predictor, str) else "custom",
                   "predictor_kwargs": predictor_kwargs or {},
                   **{k: v for k, v in options.items() if k != "on_round"}}
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ctx = {"labels": name, "sources": sources, "feasible": space.feasible, "objective": obj}
    return _finish(algo, budget, seed, oracle.history, ctx, oracle.lookups, wall, cpu, options)


def _check_options(options: dict, known: tuple[str, ...], algo: str) -> None:
    bad = sorted(set(options) - set(known))
    if bad:
        raise ValueError(f"{algo} search has no option {', '.join(bad)}; its options: {', '.join(known)}")


def space_pareto_front(device: str, labels: str = "nb201-val", data_dir=None,
                       latency_fn: Callable[[str], np.ndarray] | None = None) -> list[dict]:
    """The true (latency, accuracy) Pareto front of the whole space: what a search could find."""
    from .data.nb201 import load_labels

    lat = latency_objective(device, None, data_dir, latency_fn).latency
    y = load_labels(labels, data_dir)
    return [{"index": int(i), "arch": nb201.to_arch_str(_cells()[i]), "latency_ms": _num(lat[i]), "acc": _num(y[i])}
            for i in pareto_front(lat, y)]


def summarize(results: Sequence[SearchResult]) -> dict:
    """Mean, std, min, max over seeds of the best found's labels and regrets, per source."""
    out: dict = {"n_seeds": len(results)}
    keys = {"search": [r.best_acc for r in results]}
    for src in results[0].test:
        keys[f"test[{src}]"] = [r.test[src] for r in results]
    for src in results[0].regret:
        keys[f"regret[{src}]"] = [r.regret[src] for r in results]
    for k, v in keys.items():
        a = np.asarray(v, float)
        ok = a[np.isfinite(a)]
        out[k] = {"mean": _num(ok.mean()) if ok.size else None, "std": _num(ok.std()) if ok.size else None,
                  "min": _num(ok.min()) if ok.size else None, "max": _num(ok.max()) if ok.size else None,
                  "n_unknown": int(a.size - ok.size)}
    return out
