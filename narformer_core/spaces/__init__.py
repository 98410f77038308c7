"""Search spaces. Each module converts its own format into the one ArchGraph."""
from __future__ import annotations


def cell_op_ids(space: str) -> dict[str, int]:
    """Token op ids of a cell space (METHOD.md section 2)."""
    if space == "nb201":
        from . import nb201
        return nb201.OP_IDS
    if space == "nb101":
        from . import nb101
        return nb101.OP_IDS
    raise ValueError(f"no cell op ids for space {space!r}; cell spaces are nb201 and nb101")
