"""The DCASE tree reader on generated trees: names parsed once, bad names rejected clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_monitor.core.errors import DatasetError
from trainer.dcase_data import Clip, parse_clip_name, read_attributes_csv, read_dataset

RATE_HZ = 16000


def _write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = 0.1 * np.sin(np.linspace(0, 200, RATE_HZ // 10)).astype(np.float32)
    sf.write(path, audio, RATE_HZ, format="FLAC" if path.suffix == ".flac" else "WAV")
    return path


def _tree(root: Path) -> None:
    fan = root / "fan"
    _write(fan / "train" / "section_00_source_train_normal_0000_car_A1_spd_28V.flac")
    _write(fan / "train" / "section_00_target_train_normal_0001_noAttribute.wav")
    _write(fan / "test" / "section_00_source_test_anomaly_0002_car_A1_spd_31V.flac")
    _write(fan / "test" / "section_00_target_test_normal_0003.wav")
    (fan / "attributes_00.csv").write_text(
        "file_name,d1p,d1v,d2p,d2v\n"
        "fan/train/section_00_source_train_normal_0000_car_A1_spd_28V.flac,car,A1,spd,28V\n"
        "fan/test/section_00_target_test_normal_0003.wav,mic,2,,\n"
    )
    (fan / "README.txt").write_text("not audio, ignored\n")
    valve = root / "valve"
    _write(valve / "train" / "section_01_source_train_normal_0000_v1pat_A.wav")
    _write(valve / "test" / "section_01_0000.wav")
    _write(valve / "test" / "section_01_test_0001.flac")


def test_reads_a_generated_tree(tmp_path: Path) -> None:
    _tree(tmp_path)
    clips = read_dataset(tmp_path)
    by_name = {c.file_name: c for c in clips}
    assert len(clips) == 7
    first = by_name["section_00_source_train_normal_0000_car_A1_spd_28V.flac"]
    assert (first.machine, first.section, first.split, first.domain, first.label, first.index) == (
        "fan", "00", "train", "source", "normal", 0
    )
    assert first.attributes == {"car": "A1", "spd": "28V"}
    assert first.clip_id == "fan/train/section_00_source_train_normal_0000_car_A1_spd_28V.flac"
    odd = by_name["section_00_target_train_normal_0001_noAttribute.wav"]
    assert odd.attributes == {"attributes": "noAttribute"}
    anomaly = by_name["section_00_source_test_anomaly_0002_car_A1_spd_31V.flac"]
    assert anomaly.is_anomaly is True and anomaly.split == "test"
    assert by_name["section_00_target_test_normal_0003.wav"].attributes == {"mic": "2"}
    unlabelled = by_name["section_01_0000.wav"]
    assert (unlabelled.machine, unlabelled.section, unlabelled.domain, unlabelled.label) == (
        "valve", "01", None, None
    )
    assert unlabelled.is_anomaly is None
    assert by_name["section_01_test_0001.flac"].index == 1


def test_a_single_machine_directory_is_a_root(tmp_path: Path) -> None:
    _tree(tmp_path)
    clips = read_dataset(tmp_path / "fan")
    assert {c.machine for c in clips} == {"fan"} and len(clips) == 4


@pytest.mark.parametrize(
    ("split", "name", "message"),
    [
        ("train", "section_0_source_train_normal_0000.wav", "expected section_<ss>_"),
        ("train", "recording_0001.wav", "does not follow the DCASE layout"),
        ("test", "section_00_source_test_broken_0001.flac", "unlabelled, section_<ss>_<idx>"),
        ("test", "section_00_source_train_normal_0001.wav", "lies in test/"),
        ("train", "section_00_source_train_anomaly_0001.wav", "must be normal"),
        ("train", "section_00_0001.wav", "unlabelled name in train/"),
    ],
)
def test_malformed_names_are_rejected_clearly(
    tmp_path: Path, split: str, name: str, message: str
) -> None:
    _write(tmp_path / "pump" / split / name)
    with pytest.raises(DatasetError, match=message) as info:
        read_dataset(tmp_path)
    assert name in str(info.value)


def test_parse_is_pure_and_needs_no_file(tmp_path: Path) -> None:
    clip = parse_clip_name(
        tmp_path / "section_02_target_test_anomaly_0042_a_b.wav", "gearbox", "test"
    )
    assert clip == Clip(tmp_path / "section_02_target_test_anomaly_0042_a_b.wav", "gearbox",
                        "02", "test", "target", "anomaly", 42, {"a": "b"})


def test_missing_root_and_empty_trees(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no machine directories"):
        read_dataset(tmp_path)
    (tmp_path / "fan" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no \.wav or \.flac clips"):
        read_dataset(tmp_path)


def test_bad_attributes_csv(tmp_path: Path) -> None:
    bad_header = tmp_path / "attributes_00.csv"
    bad_header.write_text("name,d1p,d1v\nx.wav,a,b\n")
    with pytest.raises(DatasetError, match="file_name"):
        read_attributes_csv(bad_header)
    odd = tmp_path / "attributes_01.csv"
    odd.write_text("file_name,d1p,d1v\nx.wav,a,b,c\n")
    with pytest.raises(DatasetError, match=r"attributes_01.csv:2: .*pairs"):
        read_attributes_csv(odd)
