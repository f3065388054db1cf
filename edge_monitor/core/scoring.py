"""The scoring contract (DESIGN): KNN, DADS-KNN and domain-wise min over a memory bank.

One implementation for trainer and daemon alike, so what is evaluated is what runs.

- KNN: s(e) = mean of the k smallest d(e, b), d = 1 - cosine.
- DADS-KNN: target entries are densified with synthetic interpolations (`target-syn`); each
  neighbour's distance is divided by its local density (rho + eps) ** alpha.
- Domain-wise min: score against source and target entries separately, each divided by the
  median of its own leave-one-out scores, and take the minimum.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from edge_monitor.core.bank import Bank
from edge_monitor.core.embedders.base import l2_normalise
from edge_monitor.core.errors import BankError
from edge_monitor.core.neighbours import Backend, NeighbourIndex, choose_backend
from edge_monitor.core.scoring_config import ScoringConfig

log = logging.getLogger(__name__)

SOURCE, TARGET, TARGET_SYN = "source", "target", "target-syn"
DOMAINS = (SOURCE, TARGET, TARGET_SYN)
# Groups a bank is split into: the whole bank, and the two sides of domain-wise min.
GROUP_ALL, GROUP_SOURCE, GROUP_TARGET = "all", "source", "target"
_GROUP_DOMAINS = {
    GROUP_ALL: DOMAINS,
    GROUP_SOURCE: (SOURCE,),
    GROUP_TARGET: (TARGET, TARGET_SYN),
}


def synthesise_targets(
    embeddings: np.ndarray, domains: np.ndarray, config: ScoringConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw n_syn entries per target entry t: normalise(t + lambda (x - t)).

    x is one of t's m nearest other *target* entries, lambda ~ U(0, lambda_max): synthesis
    fills the gaps of the sparse target domain. Partners from the source domain would bridge
    the two domains and pull anomalies lying between them towards "normal". Returns the new
    vectors and, for each, the row of the target entry it came from.
    """
    target_rows = np.flatnonzero(domains == TARGET)
    if config.n_syn == 0 or target_rows.size < 2:
        return np.zeros((0, embeddings.shape[1]), np.float32), np.zeros(0, np.int64)
    index = NeighbourIndex(embeddings[target_rows])
    _, neighbours = index.search(embeddings[target_rows], config.m + 1)
    vectors, parents = [], []
    for row, candidates in zip(target_rows, target_rows[neighbours], strict=True):
        candidates = candidates[candidates != row][: config.m]
        picks = rng.choice(candidates, size=config.n_syn, replace=True)
        lambdas = rng.uniform(0.0, config.lambda_max, size=(config.n_syn, 1)).astype(np.float32)
        t = embeddings[row][None, :]
        vectors.append(l2_normalise(t + lambdas * (embeddings[picks] - t)))
        parents.append(np.full(config.n_syn, row, np.int64))
    return np.concatenate(vectors), np.concatenate(parents)


def local_densities(embeddings: np.ndarray, parents: np.ndarray, k_rho: int) -> np.ndarray:
    """rho(b): mean distance from each real entry to its k_rho nearest other real entries.

    Synthetic entries inherit their parent's density: they are derived from the real ones,
    and counting them as neighbours would make every sparse target look dense.
    """
    real = np.flatnonzero(parents < 0)
    rho = np.ones(len(embeddings), np.float32)
    if real.size >= 2:
        dist, rows = NeighbourIndex(embeddings[real]).search(embeddings[real], k_rho + 1)
        own = rows == np.arange(real.size)[:, None]
        # Drop the entry itself; if a duplicate displaced it, drop the farthest instead.
        own[~own.any(axis=1), -1] = True
        rho[real] = dist[~own].reshape(real.size, -1).mean(axis=1)
    synthetic = np.flatnonzero(parents >= 0)
    rho[synthetic] = rho[parents[synthetic]]
    return rho


class BankScorer:
    """Scores embeddings against one bank; search indexes are built once per group."""

    def __init__(self, bank: Bank, backend: Backend = "auto") -> None:
        self.bank = bank
        self.config = bank.config
        self._backend = backend
        self._rows = {
            group: np.flatnonzero(np.isin(bank.domains, domains))
            for group, domains in _GROUP_DOMAINS.items()
        }
        self._indexes: dict[str, NeighbourIndex] = {}
        self._weights = (bank.densities.astype(np.float64) + self.config.eps) ** self.config.alpha
        # a bank still being built has neither medians nor leave-one-out scores yet
        if self.config.domain_norm and (bank.group_medians or bank.loo_scores.size):
            self._weights = self._weights * self._domain_medians()
        children: dict[int, list[int]] = {}
        for row in np.flatnonzero(bank.parents >= 0):
            children.setdefault(int(bank.parents[row]), []).append(int(row))
        self._children = children
        self._timeline: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if bank.overlap_s > 0:
            real = np.flatnonzero((bank.parents < 0) & (bank.recordings != ""))
            for recording in np.unique(bank.recordings[real]):
                rows = real[bank.recordings[real] == recording]
                order = np.argsort(bank.start_s[rows], kind="stable")
                self._timeline[str(recording)] = (bank.start_s[rows][order], rows[order])

    def _domain_medians(self) -> np.ndarray:
        """Per row, the leave-one-out median of its domain's group (target-syn counts as target)."""
        medians = np.ones(len(self.bank.domains))
        for group in (GROUP_SOURCE, GROUP_TARGET):
            rows = self._rows[group]
            if rows.size == 0:
                continue
            median = self.bank.group_medians.get(group)
            if median is None:
                raise BankError(
                    f"bank {self.bank.version or '(unsaved)'}: no leave-one-out median for "
                    f"group {group!r}; rebuild the bank with domain_norm enabled"
                )
            medians[rows] = median
        return medians

    def _index(self, group: str) -> NeighbourIndex:
        if group not in self._indexes:
            vectors = self.bank.embeddings[self._rows[group]]
            backend = choose_backend(len(vectors)) if self._backend == "auto" else self._backend
            self._indexes[group] = NeighbourIndex(vectors, backend)
        return self._indexes[group]

    def has_group(self, group: str) -> bool:
        return self._rows[group].size > 0

    def _overlapping(self, row: int) -> np.ndarray:
        """Real rows of the same recording whose windows overlap this row's window in time."""
        timeline = self._timeline.get(str(self.bank.recordings[row]))
        if timeline is None:
            return np.asarray([row])
        starts, rows = timeline
        t, gap = self.bank.start_s[row], self.bank.overlap_s
        lo, hi = np.searchsorted(starts, [t - gap, t + gap], side="right")
        return np.union1d(rows[max(lo - 1, 0) : hi], [row])

    def excluded_rows(self, rows: Sequence[int]) -> list[np.ndarray]:
        """For leave-one-out: each row, the windows overlapping it, and their synthetic offspring.

        Overlapping windows of one recording share most of their audio: left in, they would
        make every leave-one-out score (and so the threshold) far too small.
        """
        out = []
        for row in rows:
            family = self._overlapping(int(row))
            offspring = [c for f in family for c in self._children.get(int(f), [])]
            out.append(np.concatenate([family, np.asarray(offspring, dtype=np.int64)]))
        return out

    def group_scores(
        self, group: str, queries: np.ndarray, exclude: list[np.ndarray] | None = None
    ) -> np.ndarray:
        """Raw (un-normalised) scores against one group; NaN where no neighbour is left."""
        queries = np.atleast_2d(queries)
        if not self.has_group(group):
            return np.full(len(queries), np.nan)
        k = self.config.k
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        dist, local = self._index(group).search(queries, k + extra)
        rows = self._rows[group][local]
        dist = dist.astype(np.float64)
        if exclude:
            for i, banned in enumerate(exclude):
                dist[i, np.isin(rows[i], banned)] = np.inf
            order = np.argsort(dist, axis=1, kind="stable")[:, :k]
            dist = np.take_along_axis(dist, order, axis=1)
            rows = np.take_along_axis(rows, order, axis=1)
        ratio = dist / self._weights[rows]
        valid = np.isfinite(ratio)
        count = valid.sum(axis=1)
        total = np.where(valid, ratio, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def score(self, queries: np.ndarray, exclude: list[np.ndarray] | None = None) -> np.ndarray:
        """Anomaly scores (higher = more anomalous) for unit-normalised query embeddings."""
        if not self.config.domain_wise_min:
            return self.group_scores(GROUP_ALL, queries, exclude)
        parts = []
        for group in (GROUP_SOURCE, GROUP_TARGET):
            if self.has_group(group):
                median = self.bank.group_medians.get(group)
                if median is None:
                    raise BankError(
                        f"bank {self.bank.version or '(unsaved)'}: no leave-one-out median for "
                        f"group {group!r}; rebuild the bank with domain_wise_min enabled"
                    )
                parts.append(self.group_scores(group, queries, exclude) / median)
        return np.fmin.reduce(np.vstack(parts), axis=0)

    def loo_scores(self, rows: np.ndarray, group: str | None = None) -> np.ndarray:
        """Leave-one-out scores of bank rows (each scored without itself and its offspring)."""
        queries = self.bank.embeddings[rows]
        exclude = self.excluded_rows(rows)
        if group is None:
            return self.score(queries, exclude)
        return self.group_scores(group, queries, exclude)


def _sample_rows(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if rows.size <= limit:
        return rows
    return np.sort(rng.choice(rows, size=limit, replace=False))


def build_bank(
    embeddings: np.ndarray,
    domains: Sequence[str],
    clip_ids: Sequence[str],
    config: ScoringConfig,
    info: dict | None = None,
    recordings: Sequence[str] | None = None,
    start_s: Sequence[float] | None = None,
    overlap_s: float = 0.0,
) -> Bank:
    """Build a scoring-ready bank: synthesis, densities, leave-one-out medians and scores.

    Windows cut from one continuous recording name it in `recordings` with their start time
    in `start_s`; entries of one recording less than `overlap_s` apart are left out together
    in leave-one-out scoring. Independent clips need neither.
    """
    emb = l2_normalise(np.asarray(embeddings, dtype=np.float32))
    doms = np.asarray(domains, dtype=str)
    ids = np.asarray(clip_ids, dtype=str)
    if emb.ndim != 2 or len(emb) == 0:
        raise BankError("cannot build a bank from no embeddings; give at least one normal clip")
    if len(doms) != len(emb) or len(ids) != len(emb):
        raise BankError(
            f"bank arrays disagree: {len(emb)} embeddings, {len(doms)} domains, {len(ids)} ids"
        )
    recs = np.asarray(recordings if recordings is not None else [""] * len(emb), dtype=str)
    starts = np.asarray(start_s if start_s is not None else np.zeros(len(emb)), dtype=np.float64)
    if len(recs) != len(emb) or len(starts) != len(emb):
        raise BankError(
            f"bank arrays disagree: {len(emb)} embeddings, {len(recs)} recordings, "
            f"{len(starts)} start times"
        )
    bad = sorted(set(doms) - {SOURCE, TARGET})
    if bad:
        raise BankError(f"bank domains {bad} are invalid; use {SOURCE!r} or {TARGET!r}")
    rng = np.random.default_rng(config.seed)
    syn, syn_parents = synthesise_targets(emb, doms, config, rng)
    counters: dict[int, int] = {}
    syn_ids = []
    for parent in syn_parents:
        counters[int(parent)] = counters.get(int(parent), -1) + 1
        syn_ids.append(f"{ids[parent]}#syn{counters[int(parent)]}")
    all_emb = np.concatenate([emb, syn]) if len(syn) else emb
    all_parents = np.concatenate([np.full(len(emb), -1, np.int64), syn_parents])
    bank = Bank(
        embeddings=all_emb,
        domains=np.concatenate([doms, np.full(len(syn), TARGET_SYN)]).astype(str),
        clip_ids=np.concatenate([ids, np.asarray(syn_ids, dtype=str)]).astype(str),
        parents=all_parents,
        recordings=np.concatenate([recs, recs[syn_parents]]).astype(str),
        start_s=np.concatenate([starts, starts[syn_parents]]),
        overlap_s=float(overlap_s),
        densities=local_densities(all_emb, all_parents, config.k_rho),
        loo_scores=np.zeros(0, np.float32),
        loo_rows=np.zeros(0, np.int64),
        config=config,
        info=dict(info or {}),
    )
    scorer = BankScorer(bank)
    originals = np.arange(len(emb))
    if config.domain_wise_min or config.domain_norm:
        for group in (GROUP_SOURCE, GROUP_TARGET):
            rows = originals[np.isin(doms, _GROUP_DOMAINS[group])]
            if rows.size == 0:
                continue
            loo = scorer.loo_scores(_sample_rows(rows, config.loo_max, rng), group)
            median = float(np.nanmedian(loo)) if np.isfinite(loo).any() else float("nan")
            if not np.isfinite(median) or median <= 0:
                log.warning("group %s has too few entries for a leave-one-out median", group)
                median = 1.0
            bank.group_medians[group] = median
        if config.domain_norm:  # the medians weight every distance from here on
            scorer = BankScorer(bank)
    loo_rows = _sample_rows(originals, config.loo_max, rng)
    loo = scorer.loo_scores(loo_rows)
    keep = np.isfinite(loo)
    bank.loo_rows, bank.loo_scores = loo_rows[keep], loo[keep].astype(np.float32)
    bank.version = bank.content_version()
    return bank


def threshold_for_false_alarm_rate(loo_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The score a normal window exceeds with probability `false_alarm_rate` (from LOO scores)."""
    scores = np.asarray(loo_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise BankError("the bank has no leave-one-out scores; rebuild it with more entries")
    if not 0.0 < false_alarm_rate < 1.0:
        raise BankError(f"false_alarm_rate {false_alarm_rate!r} must lie in (0, 1)")
    return float(np.quantile(scores, 1.0 - false_alarm_rate))
