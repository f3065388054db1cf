"""DCASE submission CSVs: names, rows and values as the DCASE evaluator reads them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from edge_monitor.core.dcase_csv import write_anomaly_scores, write_decision_results


def test_writes_score_and_decision_files(tmp_path: Path) -> None:
    names = ["section_00_0000.wav", "section_00_0001.wav"]
    scores_path = write_anomaly_scores(tmp_path, "ToyCar", "00", names, [0.25, 1.5])
    decision_path = write_decision_results(tmp_path, "ToyCar", "00", names, [False, True])
    assert scores_path.name == "anomaly_score_ToyCar_section_00_test.csv"
    assert decision_path.name == "decision_result_ToyCar_section_00_test.csv"
    rows = list(csv.reader(scores_path.open()))
    assert rows == [[names[0], "0.25"], [names[1], "1.5"]]
    assert list(csv.reader(decision_path.open())) == [[names[0], "0"], [names[1], "1"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [scores_path.name, decision_path.name]
    )  # no temporary files left behind


def test_length_mismatch_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 file names but 1 values"):
        write_anomaly_scores(tmp_path, "fan", "01", ["a.wav", "b.wav"], [0.1])
