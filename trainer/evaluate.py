"""DCASE evaluation of scoring variants on precomputed embeddings.

One bank per machine section is built from its training clips (source and target domains)
with `edge_monitor.core.scoring.build_bank`, the section's test clips are scored by `BankScorer`,
and the DCASE metrics and files follow. Scoring, thresholds and metrics are the runtime's own
code, so what is measured here is what the daemon runs.

Embedding is kept apart (`trainer.embed_cache`): fine-tuned embedders, fused ensembles and
ACP call `evaluate_embeddings` directly with their own vectors.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.dcase_csv import write_anomaly_scores, write_decision_results
from edge_monitor.core.embedders.base import l2_normalise
from edge_monitor.core.errors import DatasetError
from edge_monitor.core.metrics import SectionMetrics, overall_metrics, section_metrics
from edge_monitor.core.scoring import BankScorer, build_bank, threshold_for_false_alarm_rate
from edge_monitor.core.scoring_config import ScoringConfig
from trainer.dcase_data import Clip

log = logging.getLogger(__name__)

DEFAULT_FALSE_ALARM_RATE = 0.1
RESULTS_NAME = "results.csv"
RESULTS_COLUMNS = ("variant", "machine", "section", "auc_source", "auc_target", "pauc", "hmean")
OVERALL = "overall"


@dataclass
class SectionScores:
    """One variant's scores on one machine section's test clips."""

    variant: str
    machine: str
    section: str
    clips: list[Clip]
    scores: np.ndarray
    threshold: float
    loo_scores: np.ndarray  # the bank's leave-one-out scores the threshold came from
    metrics: SectionMetrics | None  # None when no test clip carries a label

    @property
    def decisions(self) -> np.ndarray:
        return self.scores > self.threshold


@dataclass(frozen=True)
class ResultRow:
    variant: str
    machine: str
    section: str
    metrics: SectionMetrics


@dataclass
class EvaluationResult:
    """Every variant's scores on every section, and the DCASE figures derived from them."""

    sections: list[SectionScores]

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(s.variant for s in self.sections))

    def rows(self) -> list[ResultRow]:
        """Per-section rows of labelled sections, then one overall row per variant."""
        rows: list[ResultRow] = []
        for variant in self.variants:
            labelled = [
                s for s in self.sections if s.variant == variant and s.metrics is not None
            ]
            rows += [ResultRow(variant, s.machine, s.section, s.metrics) for s in labelled]
            if labelled:
                overall = overall_metrics(s.metrics for s in labelled)
                rows.append(ResultRow(variant, OVERALL, "", overall))
        return rows

    def overall(self, variant: str) -> SectionMetrics:
        for row in self.rows():
            if row.variant == variant and row.machine == OVERALL:
                return row.metrics
        raise KeyError(f"no labelled test clips were scored with variant {variant!r}")


def _group(clips: Sequence[Clip]) -> dict[tuple[str, str], np.ndarray]:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, clip in enumerate(clips):
        groups.setdefault((clip.machine, clip.section), []).append(i)
    return {key: np.asarray(rows) for key, rows in groups.items()}


def _check_embeddings(clips: Sequence[Clip], embeddings: np.ndarray, what: str) -> np.ndarray:
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(clips):
        raise ValueError(f"{what}: {len(clips)} clips but embeddings of shape {emb.shape}")
    return l2_normalise(emb)


def _metrics(clips: Sequence[Clip], scores: np.ndarray) -> SectionMetrics | None:
    labelled = np.asarray([c.label is not None for c in clips])
    if not labelled.any():
        return None
    chosen = [c for c, keep in zip(clips, labelled, strict=True) if keep]
    return section_metrics(
        scores[labelled],
        [c.is_anomaly for c in chosen],
        [c.domain for c in chosen],
    )


def evaluate_embeddings(
    train_clips: Sequence[Clip],
    train_embeddings: np.ndarray,
    test_clips: Sequence[Clip],
    test_embeddings: np.ndarray,
    variants: Mapping[str, ScoringConfig],
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    bank_info: Mapping[str, object] | None = None,
) -> EvaluationResult:
    """Score every test clip with every variant, one bank per machine section.

    Embeddings are rows aligned with the clips (normalised here). A test section with no
    training clips raises DatasetError: it has no normal reference to score against.
    """
    train = _check_embeddings(train_clips, train_embeddings, "training set")
    test = _check_embeddings(test_clips, test_embeddings, "test set")
    train_groups = _group(train_clips)
    sections: list[SectionScores] = []
    for (machine, section), test_rows in sorted(_group(test_clips).items()):
        if (machine, section) not in train_groups:
            raise DatasetError(
                f"{machine} section {section}: test clips but no training clips; add "
                f"{machine}/train/section_{section}_*_train_normal_* files"
            )
        rows = train_groups[(machine, section)]
        bank_clips = [train_clips[i] for i in rows]
        section_clips = [test_clips[i] for i in test_rows]
        for name, config in variants.items():
            bank = build_bank(
                train[rows],
                [c.domain for c in bank_clips],
                [c.clip_id for c in bank_clips],
                config,
                info={**(bank_info or {}), "machine": machine, "section": section},
            )
            scores = BankScorer(bank).score(test[test_rows]).astype(np.float64)
            threshold = threshold_for_false_alarm_rate(bank.loo_scores, false_alarm_rate)
            result = SectionScores(
                variant=name,
                machine=machine,
                section=section,
                clips=section_clips,
                scores=scores,
                threshold=threshold,
                loo_scores=bank.loo_scores.astype(np.float64),
                metrics=_metrics(section_clips, scores),
            )
            sections.append(result)
            log.debug("%s %s/%s: %s", name, machine, section, result.metrics)
    if not sections:
        raise DatasetError("no test clips to evaluate; the data set has no test/ clips")
    return EvaluationResult(sections)


def _fmt(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.6f}"


def write_results(result: EvaluationResult, out_dir: str | Path) -> list[Path]:
    """DCASE CSVs per variant and section, and `results.csv`; returns the paths written."""
    out = Path(out_dir)
    written = []
    for s in result.sections:
        names = [c.file_name for c in s.clips]
        where = out / s.variant
        written.append(write_anomaly_scores(where, s.machine, s.section, names, s.scores))
        written.append(write_decision_results(where, s.machine, s.section, names, s.decisions))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RESULTS_COLUMNS)
    for row in result.rows():
        m = row.metrics
        writer.writerow(
            [row.variant, row.machine, row.section, *(_fmt(v) for v in m.values()), _fmt(m.hmean)]
        )
    atomic_write_text(out / RESULTS_NAME, buffer.getvalue())
    written.append(out / RESULTS_NAME)
    return written


def format_table(result: EvaluationResult) -> str:
    """A fixed-width table: variant x machine x AUC(source), AUC(target), pAUC, hmean (%)."""
    header = ("variant", "machine", "section", "AUC(src)", "AUC(tgt)", "pAUC", "hmean")
    lines = []
    for row in result.rows():
        m = row.metrics
        values = [*m.values(), m.hmean]
        cells = [f"{100 * v:.2f}" if math.isfinite(v) else "-" for v in values]
        lines.append((row.variant, row.machine, row.section or "-", *cells))
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        left = [str(c).ljust(w) for c, w in zip(cells[:3], widths[:3], strict=True)]
        right = [str(c).rjust(w) for c, w in zip(cells[3:], widths[3:], strict=True)]
        return "  ".join(left + right)

    rule = "-" * len(render(header))
    return "\n".join([render(header), rule, *(render(r) for r in lines)])
