"""The scoring contract on constructed embeddings where the right answer is known."""

import numpy as np
import pytest

from edge_monitor.core.embedders.base import l2_normalise
from edge_monitor.core.errors import BankError, ConfigError
from edge_monitor.core.scoring import (
    TARGET_SYN,
    BankScorer,
    build_bank,
    local_densities,
    threshold_for_false_alarm_rate,
)
from edge_monitor.core.scoring_config import VARIANTS, ScoringConfig, variant

DIM = 16


def cluster(rng, centre_axis, n, spread):
    return l2_normalise(np.eye(DIM)[centre_axis] + rng.normal(size=(n, DIM)) * spread)


@pytest.fixture
def two_domains():
    """A dense source cluster and a sparse target cluster of 10 points, far apart."""
    rng = np.random.default_rng(1)
    src, tgt = cluster(rng, 0, 400, 0.03), cluster(rng, 1, 10, 0.1)
    emb = np.vstack([src, tgt])
    domains = ["source"] * 400 + ["target"] * 10
    ids = [f"clip{i}" for i in range(410)]
    return emb, domains, ids, rng


def test_knn_is_mean_of_k_smallest_cosine_distances(two_domains):
    emb, domains, ids, rng = two_domains
    bank = build_bank(emb, domains, ids, ScoringConfig(k=3))
    queries = cluster(rng, 2, 5, 0.2)
    expected = np.sort(1.0 - queries @ emb.T, axis=1)[:, :3].mean(axis=1)
    np.testing.assert_allclose(BankScorer(bank).score(queries), expected, atol=1e-5)


def test_alpha_zero_and_no_synthesis_equal_plain_knn(two_domains):
    emb, domains, ids, rng = two_domains
    plain = BankScorer(build_bank(emb, domains, ids, ScoringConfig(k=2)))
    dads0 = BankScorer(build_bank(emb, domains, ids, ScoringConfig(k=2, alpha=0.0, n_syn=0)))
    queries = cluster(rng, 3, 7, 0.3)
    np.testing.assert_allclose(plain.score(queries), dads0.score(queries))


def test_synthesis_draws_n_syn_unit_entries_per_target(two_domains):
    emb, domains, ids, _ = two_domains
    bank = build_bank(emb, domains, ids, ScoringConfig(alpha=1.0, n_syn=4))
    syn = bank.domains == TARGET_SYN
    assert syn.sum() == 40
    np.testing.assert_allclose(np.linalg.norm(bank.embeddings[syn], axis=1), 1.0, atol=1e-5)
    assert set(bank.parents[syn]) == set(range(400, 410))
    # Each synthetic entry lies between its parent and a neighbour: closer to the parent.
    parent_sim = np.sum(bank.embeddings[syn] * bank.embeddings[bank.parents[syn]], axis=1)
    assert np.all(parent_sim > 0.7)


def test_density_is_mean_distance_to_nearest_other_entries():
    rng = np.random.default_rng(0)
    emb = cluster(rng, 0, 50, 0.1)
    rho = local_densities(emb, np.full(50, -1), k_rho=3)
    dist = 1.0 - emb @ emb.T
    np.fill_diagonal(dist, np.inf)
    np.testing.assert_allclose(rho, np.sort(dist, axis=1)[:, :3].mean(axis=1), atol=1e-5)


def held_out(rng):
    return cluster(rng, 0, 30, 0.03), cluster(rng, 1, 30, 0.1)


@pytest.mark.parametrize(
    "dads_config", [ScoringConfig(alpha=1.0, k_rho=3), VARIANTS["dads"]], ids=["no-syn", "shipped"]
)
def test_dads_makes_sparse_target_points_score_like_dense_source_points(two_domains, dads_config):
    emb, domains, ids, rng = two_domains
    src_q, tgt_q = held_out(rng)
    knn = BankScorer(build_bank(emb, domains, ids, VARIANTS["knn"]))
    dads = BankScorer(build_bank(emb, domains, ids, dads_config))
    knn_ratio = np.median(knn.score(tgt_q)) / np.median(knn.score(src_q))
    dads_ratio = np.median(dads.score(tgt_q)) / np.median(dads.score(src_q))
    assert knn_ratio > 5.0  # plain KNN: target normals look anomalous
    assert 0.5 < dads_ratio < 2.0  # density-aware: both domains on one scale


def test_domain_wise_min_puts_both_domains_on_one_scale(two_domains):
    emb, domains, ids, rng = two_domains
    src_q, tgt_q = held_out(rng)
    for name in ("knn-dwmin", "dads-dwmin"):
        scorer = BankScorer(build_bank(emb, domains, ids, variant(name)))
        ratio = np.median(scorer.score(tgt_q)) / np.median(scorer.score(src_q))
        assert 0.4 < ratio < 2.5, name


def test_domain_norm_divides_each_distance_by_its_domains_median(two_domains):
    emb, domains, ids, rng = two_domains
    src_q, tgt_q = held_out(rng)
    bank = build_bank(emb, domains, ids, variant("knn-dnorm"))
    scorer = BankScorer(bank)
    plain = build_bank(emb, domains, ids, VARIANTS["knn"])
    queries = np.vstack([src_q, tgt_q])
    nearest = np.argmax(queries @ emb.T, axis=1)
    median = np.where(nearest < 400, bank.group_medians["source"], bank.group_medians["target"])
    np.testing.assert_allclose(
        scorer.score(queries), BankScorer(plain).score(queries) / median, rtol=1e-5
    )
    ratio = np.median(scorer.score(tgt_q)) / np.median(scorer.score(src_q))
    assert 0.4 < ratio < 2.5
    # the threshold's leave-one-out scores are on the same normalised scale
    assert 0.3 < np.median(bank.loo_scores) < 3.0


def test_a_domain_norm_bank_without_its_medians_is_refused(two_domains):
    emb, domains, ids, _ = two_domains
    bank = build_bank(emb, domains, ids, variant("dads-dnorm"))
    bank.group_medians.pop("target")
    with pytest.raises(BankError, match=r"no leave-one-out median.*'target'"):
        BankScorer(bank)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_outlier_scores_above_every_normal(two_domains, name):
    emb, domains, ids, rng = two_domains
    src_q, tgt_q = held_out(rng)
    scorer = BankScorer(build_bank(emb, domains, ids, variant(name)))
    outlier = l2_normalise(np.eye(DIM)[7] + np.eye(DIM)[0] * 0.2)[None, :]
    assert scorer.score(outlier)[0] > max(scorer.score(src_q).max(), scorer.score(tgt_q).max())


def test_leave_one_out_excludes_the_entry_and_its_synthetic_offspring(two_domains):
    emb, domains, ids, _ = two_domains
    bank = build_bank(emb, domains, ids, ScoringConfig(alpha=1.0, n_syn=5))
    scorer = BankScorer(bank)
    loo = scorer.loo_scores(np.array([405]))
    with_self = scorer.score(bank.embeddings[[405]])
    assert with_self[0] < 1e-3  # the entry itself is in the bank
    assert loo[0] > 10 * max(with_self[0], 1e-6)


def test_synthetic_partners_are_other_targets_and_densities_come_from_real_entries(two_domains):
    emb, domains, ids, _ = two_domains
    bank = build_bank(emb, domains, ids, VARIANTS["dads"])
    syn = np.flatnonzero(bank.domains == TARGET_SYN)
    # Every synthetic entry stays in the target cluster (axis 1), never bridges to source.
    assert np.all(bank.embeddings[syn, 1] > bank.embeddings[syn, 0])
    np.testing.assert_array_equal(bank.densities[syn], bank.densities[bank.parents[syn]])
    plain = build_bank(emb, domains, ids, ScoringConfig(alpha=1.0, k_rho=5))
    np.testing.assert_allclose(bank.densities[:410], plain.densities, rtol=1e-6)


def test_overlapping_windows_of_one_recording_leave_out_together():
    """Windows hopping 1 s over a 10 s window share 90% of their audio: LOO must skip them."""
    rng = np.random.default_rng(5)
    # A slowly drifting stationary sound: consecutive windows are near-duplicates.
    steps = l2_normalise(np.cumsum(rng.normal(scale=0.01, size=(200, DIM)), axis=0) + 1.0)
    starts = np.arange(200.0)
    common = dict(domains=["source"] * 200, clip_ids=[f"w{i}" for i in range(200)])
    naive = build_bank(steps, config=ScoringConfig(), **common)
    aware = build_bank(
        steps, config=ScoringConfig(), recordings=["mic"] * 200, start_s=starts, overlap_s=10.0,
        **common,
    )
    scorer = BankScorer(aware)
    excluded = scorer.excluded_rows([100])[0]
    np.testing.assert_array_equal(np.sort(excluded), np.arange(90, 111))
    assert np.median(aware.loo_scores) > 3 * np.median(naive.loo_scores)


def test_threshold_matches_false_alarm_rate(two_domains):
    emb, domains, ids, _ = two_domains
    bank = build_bank(emb, domains, ids, VARIANTS["knn"])
    thr = threshold_for_false_alarm_rate(bank.loo_scores, 0.1)
    assert np.mean(bank.loo_scores > thr) == pytest.approx(0.1, abs=0.02)
    with pytest.raises(BankError, match="false_alarm_rate"):
        threshold_for_false_alarm_rate(bank.loo_scores, 1.5)


def test_bad_config_and_inputs_are_rejected_with_the_key():
    with pytest.raises(ConfigError, match=r"scoring\.k"):
        ScoringConfig(k=0)
    with pytest.raises(ConfigError, match="unknown key"):
        ScoringConfig.from_dict({"kk": 1})
    with pytest.raises(ConfigError, match="unknown scoring variant"):
        variant("nope")
    with pytest.raises(BankError, match="domains"):
        build_bank(np.ones((2, 4)), ["source", "weird"], ["a", "b"], ScoringConfig())
