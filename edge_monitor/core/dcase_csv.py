"""DCASE Task 2 submission files, so our results can be compared with any DCASE system.

Per machine section, two header-less CSVs, one row per test clip:

    anomaly_score_<machine>_section_<ss>_test.csv    file name, anomaly score
    decision_result_<machine>_section_<ss>_test.csv  file name, 0 (normal) or 1 (anomaly)

Both are written atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_monitor.core.atomic import atomic_write_text


def anomaly_score_name(machine: str, section: str) -> str:
    return f"anomaly_score_{machine}_section_{section}_test.csv"


def decision_result_name(machine: str, section: str) -> str:
    return f"decision_result_{machine}_section_{section}_test.csv"


def _write_rows(path: Path, file_names: Sequence[str], values: Sequence[object]) -> Path:
    if len(file_names) != len(values):
        raise ValueError(f"{path.name}: {len(file_names)} file names but {len(values)} values")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(zip(file_names, values, strict=True))
    atomic_write_text(path, buffer.getvalue())
    return path


def write_anomaly_scores(
    directory: str | Path,
    machine: str,
    section: str,
    file_names: Sequence[str],
    scores: Sequence[float] | np.ndarray,
) -> Path:
    """Write `anomaly_score_<machine>_section_<ss>_test.csv` (file name, score) into directory."""
    values = [repr(float(s)) for s in np.asarray(scores, dtype=np.float64)]
    return _write_rows(Path(directory) / anomaly_score_name(machine, section), file_names, values)


def write_decision_results(
    directory: str | Path,
    machine: str,
    section: str,
    file_names: Sequence[str],
    decisions: Sequence[bool] | np.ndarray,
) -> Path:
    """Write `decision_result_<machine>_section_<ss>_test.csv` (file name, 0/1) into directory."""
    values = [int(bool(d)) for d in np.asarray(decisions)]
    return _write_rows(
        Path(directory) / decision_result_name(machine, section), file_names, values
    )
