"""One machine's detector: preprocess a window, embed it with each model, score, fuse.

A single-model detector returns the bank score unchanged, so the edge scores exactly what
`edge-trainer eval` measured. An ensemble standardises each model's score with statistics of
its own bank's leave-one-out scores (no test labels needed, so the edge can recompute them
after enrolment) and adds them with the ensemble weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_monitor.core.bank import Bank
from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.errors import BankError, ConfigError
from edge_monitor.core.preprocess import PreprocessConfig, preprocess
from edge_monitor.core.scoring import BankScorer, threshold_for_false_alarm_rate


@dataclass(frozen=True)
class ScoreNorm:
    """Affine standardisation of one model's score: (s - loc) / scale."""

    loc: float = 0.0
    scale: float = 1.0

    @classmethod
    def from_loo(cls, loo_scores: np.ndarray) -> ScoreNorm:
        scores = np.asarray(loo_scores, dtype=np.float64)
        scores = scores[np.isfinite(scores)]
        if scores.size < 2:
            raise BankError("too few leave-one-out scores to standardise a model's score")
        return cls(float(scores.mean()), float(max(scores.std(), 1e-9)))

    def apply(self, scores: np.ndarray | float) -> np.ndarray | float:
        return (scores - self.loc) / self.scale


@dataclass
class Member:
    """One model of a detector: its embedder, its bank and how its score is weighted."""

    name: str
    embedder: Embedder
    bank: Bank
    weight: float = 1.0
    norm: ScoreNorm = field(default_factory=ScoreNorm)
    scorer: BankScorer = field(init=False)

    def __post_init__(self) -> None:
        if self.bank.dim != self.embedder.dim:
            raise BankError(
                f"model {self.name!r}: bank dimension {self.bank.dim} != embedding dimension "
                f"{self.embedder.dim}; build the bank with this model"
            )
        self.scorer = BankScorer(self.bank)


@dataclass(frozen=True)
class Detection:
    """The outcome of scoring one window."""

    score: float
    embeddings: dict[str, np.ndarray]  # each member's embedding of the conditioned window


def fuse(members: list[Member], raw: dict[str, np.ndarray]) -> np.ndarray:
    """Weighted sum of standardised member scores; one member passes through unchanged."""
    if len(members) == 1:
        return np.asarray(raw[members[0].name], dtype=np.float64)
    return sum(m.weight * np.asarray(m.norm.apply(raw[m.name])) for m in members)


def fused_loo_scores(members: list[Member]) -> np.ndarray:
    """Leave-one-out scores of the fused detector, over clips every member's bank scored."""
    per_member = []
    for m in members:
        ids = m.bank.clip_ids[m.bank.loo_rows]
        per_member.append(dict(zip(ids.tolist(), m.bank.loo_scores.tolist(), strict=True)))
    common = sorted(set.intersection(*(set(d) for d in per_member)))
    if not common:
        raise BankError("the members' banks share no clip ids; build them from the same clips")
    pairs = zip(members, per_member, strict=True)
    raw = {m.name: np.array([d[c] for c in common]) for m, d in pairs}
    return fuse(members, raw)


class Detector:
    """Scores windows of one machine; the threshold comes from normal data only."""

    def __init__(
        self,
        machine: str,
        members: list[Member],
        false_alarm_rate: float,
        preprocess_config: PreprocessConfig | None = None,
        model_version: str = "builtin",
        threshold: float | None = None,
    ) -> None:
        if not members:
            raise ConfigError(f"machine {machine!r}: a detector needs at least one model")
        rates = {m.embedder.sample_rate_hz for m in members}
        windows = {m.embedder.window_s for m in members}
        if len(rates) > 1 or len(windows) > 1:
            raise ConfigError(
                f"machine {machine!r}: models disagree on sample rate {sorted(rates)} or window "
                f"{sorted(windows)}; an ensemble needs one input format"
            )
        self.machine = machine
        self.members = members
        self.false_alarm_rate = false_alarm_rate
        self.preprocess_config = preprocess_config or PreprocessConfig()
        self.model_version = model_version
        self.sample_rate_hz = rates.pop()
        self.window_s = windows.pop()
        self.threshold = (
            threshold
            if threshold is not None
            else threshold_for_false_alarm_rate(fused_loo_scores(members), false_alarm_rate)
        )

    @property
    def bank_version(self) -> str:
        return "+".join(m.bank.version for m in self.members)

    def embed(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        """Each member's embedding of one mono window at `sample_rate_hz`, conditioned first."""
        conditioned = preprocess(audio, self.sample_rate_hz, self.preprocess_config)
        return {m.name: m.embedder.embed(conditioned.audio) for m in self.members}

    def score(self, audio: np.ndarray) -> Detection:
        """Score one mono window at `sample_rate_hz`."""
        vectors = self.embed(audio)
        raw = {m.name: m.scorer.score(vectors[m.name][None, :]) for m in self.members}
        return Detection(score=float(fuse(self.members, raw)[0]), embeddings=vectors)

    def with_banks(self, banks: dict[str, Bank], threshold: float | None = None) -> Detector:
        """A new detector with some members' banks replaced (enrolment, rollback).

        Without an explicit threshold it is recomputed from the new banks' LOO scores.
        """
        members = [
            Member(m.name, m.embedder, banks.get(m.name, m.bank), m.weight, m.norm)
            for m in self.members
        ]
        return Detector(
            self.machine,
            members,
            self.false_alarm_rate,
            self.preprocess_config,
            self.model_version,
            threshold,
        )
