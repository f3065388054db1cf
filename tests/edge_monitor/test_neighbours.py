"""Every search backend returns the same nearest neighbours (HNSW up to a small recall loss)."""

import numpy as np
import pytest

from edge_monitor.core.embedders.base import l2_normalise
from edge_monitor.core.neighbours import NeighbourIndex, choose_backend


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return l2_normalise(rng.normal(size=(2000, 24))), l2_normalise(rng.normal(size=(40, 24)))


def test_backends_agree_with_brute_force(data):
    bank, queries = data
    truth = np.argsort(1.0 - queries @ bank.T, axis=1)[:, :5]
    for backend in ("matmul", "exact"):
        dist, rows = NeighbourIndex(bank, backend=backend).search(queries, 5)
        np.testing.assert_array_equal(rows, truth)
        np.testing.assert_allclose(dist, 1.0 - np.sum(queries[:, None] * bank[rows], -1), atol=1e-5)
    _, rows = NeighbourIndex(bank, backend="hnsw").search(queries, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(rows, truth, strict=True)])
    assert recall > 0.95


def test_k_larger_than_bank_is_capped_and_single_query_works(data):
    bank, queries = data
    index = NeighbourIndex(bank[:3])
    dist, rows = index.search(queries[0], 10)
    assert rows.shape == (1, 3) and sorted(rows[0]) == [0, 1, 2]
    assert np.all(np.diff(dist[0]) >= 0)


def test_backend_choice_grows_with_size():
    assert choose_backend(500) == "matmul"
    assert choose_backend(10_000_000) == "hnsw"
