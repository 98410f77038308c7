"""Unmeasured zoo networks for pretraining NAR-Former, and the proxy latency it pretrains on.

A latency fit sees ~1,600 measured networks, and the transformer overfits them within 10-16
epochs. Timing a network costs about a second and a half of a quiet core per pass (and two
passes to get a steady label); drawing and converting one costs ~0.2 s. So: draw many networks
the measured set does not hold, give each a latency the project can compute without timing it
(the operator-cost sum fitted on the fit's own training networks, :mod:`.op_cost`), pretrain on
those, then fine-tune on the measured labels (``NARFormerLatency(pretrain=...)``).

A structure set is a gzip JSON-lines file in the data set's format without any latency fields::

    spec, spec_id, family, description, graph, graph_hash, n_nodes, static, schema, kind

Built by ``python -m narformer_core latency structure-set``; it appends as it goes and skips the
``spec_id`` values already in the file, so an interrupted build resumes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from ..graph import ArchGraph
from .dataset import DatasetError, _append, _open_for_append, _read_lines, read_complete_lines, structure_fields

KIND = "structure"


def structure_record(spec: Mapping, networks=None) -> tuple[dict, ArchGraph]:
    """Export and import one spec (no timing) -> (record, graph)."""
    from ..onnx_import import load_onnx

    if networks is None:
        from . import zoo as networks
    graph = load_onnx(networks.export_onnx(spec), max_bytes=None)
    return {**structure_fields(spec, graph, networks), "kind": KIND}, graph


def excluded_spec_ids(paths: Sequence[str | os.PathLike]) -> set[str]:
    """The spec_ids of the given data sets (measured networks a structure set must not repeat)."""
    out: set[str] = set()
    for p in paths:
        records, _ = _read_lines(Path(p))
        if not records and not Path(p).exists():
            raise DatasetError(f"no data set at {p} to exclude")
        out.update(r["spec_id"] for r in records if "spec_id" in r)
    return out


def build_structure_set(out: str | os.PathLike, n: int, *, seed: int, exclude: Sequence[str | os.PathLike] = (),
                        families: Sequence[str] | None = None, start: int = 0, stop: int | None = None,
                        progress: bool = True) -> dict:
    """Draw ``zoo.sample_specs(n', seed)`` until ``n`` specs outside ``exclude`` are found, and
    write those in ``[start, stop)`` of that list to ``out`` (two processes can build the two
    halves of one list into two files; ``cat`` joins them). Returns counts."""
    from . import zoo
    from .families import sampling_module, test_only

    families = tuple(families or zoo.FAMILIES)
    networks = sampling_module(families)     # the zoo's, or the training-only families' module
    if test_only(families):
        raise ValueError(f"{', '.join(families)}: outside-zoo families are the test of unseen families; "
                         "no structure set (pretraining) may hold them")
    banned = excluded_spec_ids(exclude)
    # sample_specs is prefix-stable: drawing more than n and dropping excluded ones keeps the
    # list the same whatever the exclusion set's size, as long as enough are drawn.
    draw = n + len(banned) + 10
    specs = [s for s in networks.sample_specs(draw, seed, families) if zoo.spec_id(s) not in banned][:n]
    if len(specs) < n:
        raise ValueError(f"only {len(specs)} new specs in {draw} draws")
    stop = n if stop is None else min(int(stop), n)
    todo_all = specs[int(start):stop]
    path = Path(out)
    present = {r["spec_id"] for r in _open_for_append(path)}
    todo = [s for s in todo_all if zoo.spec_id(s) not in present]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="structure set", unit="net", dynamic_ncols=True)
    for spec in todo:
        record, _ = structure_record(spec, networks)
        _append(path, record)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return {"out": str(path), "written": len(todo), "skipped_present": len(todo_all) - len(todo),
            "excluded_measured": len(banned), "range": [int(start), stop], "seed": seed}


def load_structures(path: str | os.PathLike, exclude_families: Sequence[str] = ()) -> list[ArchGraph]:
    """The graphs of a structure set (or of any data set file: its graphs, labels ignored),
    without those of ``exclude_families`` (a leave-one-family-out fold's held-out family)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no structure set at {path}")
    records = read_complete_lines(path)
    if not records:
        raise DatasetError(f"{path} holds no networks")
    seen, graphs = set(), []
    for i, r in enumerate(records):
        if "graph" not in r or "spec_id" not in r:
            raise DatasetError(f"{path} line {i + 1} is not a structure record: it lacks a graph or spec_id")
        if r["spec_id"] in seen or r.get("family") in exclude_families:   # (halves joined twice: once)
            continue
        seen.add(r["spec_id"])
        graphs.append(ArchGraph.from_dict(r["graph"]))
    return graphs
