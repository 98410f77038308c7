"""NAS-Bench-101 cell space (minimal; pruning, hashing, sampling and mutation are added next).

A cell is an upper-triangular 0/1 adjacency matrix over at most 7 nodes and one op per node:
input first, output last, the rest from OPS.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..graph import ArchGraph, GraphError, Node

OPS = ("conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3")
# Token op ids of METHOD.md section 2.
OP_IDS = {"input": 0, "conv1x1-bn-relu": 1, "conv3x3-bn-relu": 2, "maxpool3x3": 3, "output": 4}
MAX_NODES = 7
MAX_EDGES = 9


def to_graph(matrix: Sequence[Sequence[int]] | np.ndarray, ops: Sequence[str]) -> ArchGraph:
    m = np.asarray(matrix)
    n = m.shape[0]
    nodes = [Node(ops[i], tuple(int(j) for j in np.nonzero(m[:, i])[0])) for i in range(n)]
    return ArchGraph(nodes, space="nb101")
