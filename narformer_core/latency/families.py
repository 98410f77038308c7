"""Which module builds a family's networks.

Three kinds of family, each in its own module with the same functions (``sample_specs``,
``spec_id``, ``describe``, ``export_onnx``, ...): the zoo's ten (``zoo``: the measured set and
its benchmarks), the outside-zoo test families (``outside_zoo``: never trained on), and the
training-only families (``extra_families``: measured networks that only ever train). Code that
rebuilds a network from a stored spec asks here, so a new kind of family is one line.
"""
from __future__ import annotations

from types import ModuleType
from typing import Mapping, Sequence

from . import extra_families, outside_zoo, zoo

_MODULES: tuple[ModuleType, ...] = (zoo, outside_zoo, extra_families)


def all_families() -> tuple[str, ...]:
    return tuple(f for m in _MODULES for f in m.FAMILIES)


def test_only(families: Sequence[str]) -> list[str]:
    """Those of ``families`` that are the test of unseen families (outside the zoo), sorted: they
    never train, so training sets (``--extra-train``, structure sets) refuse them."""
    return sorted(set(families) & set(outside_zoo.FAMILIES))


def network_module(family: str | Mapping) -> ModuleType:
    """The module that builds ``family`` (a name, or a spec holding one)."""
    name = family.get("family") if isinstance(family, Mapping) else family
    for m in _MODULES:
        if name in m.FAMILIES:
            return m
    raise ValueError(f"unknown network family {name!r}; known: {', '.join(all_families())}")


def sampling_module(families: Sequence[str]) -> ModuleType:
    """The one module whose ``sample_specs`` draws round robin over ``families``; families of two
    modules cannot share one draw (each module's sequence is seeded on its own)."""
    modules = {network_module(f) for f in families}
    if len(modules) != 1:
        kinds = sorted(f"{', '.join(x for x in families if network_module(x) is m)} ({m.__name__.rsplit('.', 1)[-1]})"
                       for m in modules)
        raise ValueError(f"families of different kinds cannot share one draw: {'; '.join(kinds)}")
    return modules.pop()
