"""k-nearest-neighbour search over unit vectors (distance = 1 - cosine), fast at every size.

`tools/bench_bank_search.py` on real ToyCar embeddings (dim 256, 2-core VM, BLAS single-
threaded as in the daemon; docs/benchmarks.md): a blocked matrix product is exact, needs no
build and is fastest for batches up to ~20k entries (0.27 ms/query) with 2 ms for a single
query; at 100k it costs 14 ms a single query against 0.6 ms for an HNSW graph, whose build
(~90 s at 100k) is paid once when the bank is saved and restored with it. usearch's exact
scan never won. Cross-over: matmul up to 50k entries, HNSW above.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from usearch.index import Index, MetricKind
from usearch.index import search as usearch_scan

log = logging.getLogger(__name__)

Backend = Literal["auto", "matmul", "exact", "hnsw"]
BACKENDS = ("auto", "matmul", "exact", "hnsw")
MATMUL_MAX_ENTRIES = 50_000
# Largest query-by-entry block of similarities held in memory at once (floats).
MATMUL_BLOCK_FLOATS = 8_000_000


def choose_backend(n_entries: int) -> str:
    """The fastest exact-enough backend for a bank of this size."""
    return "matmul" if n_entries <= MATMUL_MAX_ENTRIES else "hnsw"


def build_usearch_index(vectors: np.ndarray) -> Index:
    """A cosine HNSW index whose key i is row i of `vectors`."""
    index = Index(ndim=int(vectors.shape[1]), metric="cos", dtype="f32")
    if vectors.shape[0]:
        index.add(np.arange(vectors.shape[0], dtype=np.int64), vectors)
    return index


class NeighbourIndex:
    """Search the k nearest rows of a fixed matrix of unit vectors."""

    def __init__(self, vectors: np.ndarray, backend: Backend = "auto") -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.backend = choose_backend(len(self.vectors)) if backend == "auto" else backend
        self._index = build_usearch_index(self.vectors) if self.backend == "hnsw" else None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances and row indices of the k nearest entries, nearest first, shape (Q, k).

        k is capped at the number of entries.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(int(k), len(self))
        if k <= 0 or q.shape[0] == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        if self.backend == "matmul":
            return self._matmul(q, k)
        if self.backend == "exact":
            matches = usearch_scan(self.vectors, q, k, MetricKind.Cos, exact=True)
        else:
            assert self._index is not None
            matches = self._index.search(q, k)
        rows = np.asarray(matches.keys, dtype=np.int64).reshape(q.shape[0], -1)[:, :k]
        dists = np.asarray(matches.distances, dtype=np.float32).reshape(q.shape[0], -1)[:, :k]
        return np.maximum(dists, 0.0), rows

    def _matmul(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        block = max(1, MATMUL_BLOCK_FLOATS // n)
        out_d = np.empty((q.shape[0], k), np.float32)
        out_i = np.empty((q.shape[0], k), np.int64)
        for start in range(0, q.shape[0], block):
            dist = 1.0 - q[start : start + block] @ self.vectors.T
            part = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < n else np.tile(
                np.arange(n), (dist.shape[0], 1)
            )
            part_d = np.take_along_axis(dist, part, axis=1)
            order = np.argsort(part_d, axis=1, kind="stable")
            out_i[start : start + block] = np.take_along_axis(part, order, axis=1)
            out_d[start : start + block] = np.maximum(np.take_along_axis(part_d, order, axis=1), 0)
        return out_d, out_i
