"""PNG figures of an evaluation: ROC curves per domain and score histograms per domain.

matplotlib is imported lazily with the Agg backend, so nothing needs a display.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_monitor.core.atomic import atomic_path
from edge_monitor.core.metrics import SOURCE, TARGET, auc, roc_curve
from trainer.evaluate import EvaluationResult, SectionScores

log = logging.getLogger(__name__)

DOMAINS = (SOURCE, TARGET)
HIST_BINS = 30


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _labels(s: SectionScores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labelled = np.asarray([c.label is not None for c in s.clips])
    anomaly = np.asarray([c.is_anomaly is True for c in s.clips])
    domains = np.asarray([c.domain or "" for c in s.clips])
    return labelled, anomaly, domains


def plot_roc(sections: Sequence[SectionScores], path: Path) -> Path | None:
    """ROC of every variant on one machine section: one panel per domain (DCASE's pairing).

    Returns None when the section has no labelled clips to draw.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(DOMAINS), figsize=(10, 4.5), squeeze=False)
    drawn = False
    for ax, domain in zip(axes[0], DOMAINS, strict=True):
        for s in sections:
            labelled, anomaly, domains = _labels(s)
            keep = labelled & (anomaly | (domains == domain))
            if anomaly[keep].all() or not anomaly[keep].any():
                continue
            fpr, tpr = roc_curve(anomaly[keep], s.scores[keep])
            area = auc(anomaly[keep], s.scores[keep])
            ax.plot(fpr, tpr, label=f"{s.variant} (AUC {100 * area:.1f})")
            drawn = True
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.axvline(0.1, color="grey", linestyle="--", linewidth=0.8)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate",
               title=f"{domain} normals vs all anomalies", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=8)
    first = sections[0]
    fig.suptitle(f"{first.machine} section {first.section}")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.86, wspace=0.25)
    try:
        return _save(fig, path) if drawn else None
    finally:
        plt.close(fig)


def plot_histograms(s: SectionScores, path: Path) -> Path:
    """Score histograms of normal and anomalous test clips per domain, with the threshold."""
    plt = _pyplot()
    labelled, anomaly, domains = _labels(s)
    fig, axes = plt.subplots(1, len(DOMAINS) + 1, figsize=(14, 4), squeeze=False)
    finite = s.scores[np.isfinite(s.scores)]
    pool = np.concatenate([finite, s.loo_scores[np.isfinite(s.loo_scores)]])
    bins = np.linspace(pool.min(), pool.max(), HIST_BINS + 1) if pool.size else HIST_BINS
    for ax, domain in zip(axes[0][: len(DOMAINS)], DOMAINS, strict=True):
        in_domain = labelled & (domains == domain)
        for is_anomaly, colour, label in ((False, "tab:blue", "normal"),
                                          (True, "tab:red", "anomaly")):
            values = s.scores[in_domain & (anomaly == is_anomaly)]
            ax.hist(values, bins=bins, alpha=0.55, color=colour, label=f"{label} ({values.size})")
        ax.set(title=f"{domain} test clips", xlabel="anomaly score", ylabel="clips")
    unlabelled = s.scores[~labelled]
    last = axes[0][-1]
    last.hist(s.loo_scores, bins=bins, alpha=0.55, color="tab:green",
              label=f"bank leave-one-out ({s.loo_scores.size})")
    if unlabelled.size:
        last.hist(unlabelled, bins=bins, alpha=0.55, color="tab:grey",
                  label=f"unlabelled test ({unlabelled.size})")
    last.set(title="bank (training) scores", xlabel="anomaly score", ylabel="clips")
    for ax in axes[0]:
        ax.axvline(s.threshold, color="black", linestyle="--", linewidth=1, label="threshold")
        ax.legend(fontsize=8)
    fig.suptitle(f"{s.variant}: {s.machine} section {s.section}")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.86, wspace=0.25)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_plots(result: EvaluationResult, out_dir: str | Path) -> list[Path]:
    """`<out>/plots/roc_<machine>_section_<ss>.png` and `<out>/<variant>/hist_....png`."""
    out = Path(out_dir)
    written: list[Path] = []
    by_section: dict[tuple[str, str], list[SectionScores]] = {}
    for s in result.sections:
        by_section.setdefault((s.machine, s.section), []).append(s)
        hist = out / s.variant / f"hist_{s.machine}_section_{s.section}.png"
        written.append(plot_histograms(s, hist))
    for (machine, section), group in by_section.items():
        roc = plot_roc(group, out / "plots" / f"roc_{machine}_section_{section}.png")
        if roc is None:
            log.info("%s section %s: no labelled clips, no ROC curve drawn", machine, section)
        else:
            written.append(roc)
    return written
