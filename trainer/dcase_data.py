"""Read a DCASE Task 2 data set tree into structured clips, parsing every file name once.

Layout (DCASE 2021-2024 development and evaluation sets):

    ROOT/<machine>/train/section_<ss>_<source|target>_train_normal_<idx>[_<attrs>].(wav|flac)
    ROOT/<machine>/test/section_<ss>_<source|target>_test_<normal|anomaly>_<idx>[_<attrs>].(...)
    ROOT/<machine>/test/section_<ss>_<idx>.(wav|flac)         unlabelled evaluation clips
    ROOT/<machine>/test/section_<ss>_test_<idx>.(wav|flac)    (also unlabelled)
    ROOT/<machine>/attributes_<ss>.csv   file_name, then attribute name/value column pairs

ROOT may also be a single machine directory (one holding train/ and test/). Attributes come
from the name's `<name>_<value>` pairs and are overridden by the attributes CSV when present.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge_monitor.core.errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
AUDIO_SUFFIXES = (".wav", ".flac")
LABELLED_PATTERN = (
    "section_<ss>_<source|target>_<train|test>_<normal|anomaly>_<idx>[_<attributes>].(wav|flac)"
)
UNLABELLED_PATTERN = "section_<ss>_<idx>.(wav|flac) or section_<ss>_test_<idx>.(wav|flac)"
_LABELLED = re.compile(
    r"section_(?P<section>\d{2})_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<index>\d+)(?:_(?P<attrs>[^.]+))?\.(?:wav|flac)",
    re.IGNORECASE,
)
_UNLABELLED = re.compile(
    r"section_(?P<section>\d{2})(?:_test)?_(?P<index>\d+)\.(?:wav|flac)", re.IGNORECASE
)
_ATTRIBUTES_CSV = re.compile(r"attributes_(?P<section>\d{2})\.csv")
# The key used when a name's attribute part is not name/value pairs (e.g. "noAttribute").
RAW_ATTRIBUTES_KEY = "attributes"


@dataclass(frozen=True)
class Clip:
    """One audio file of a DCASE tree; domain and label are None for unlabelled eval clips."""

    path: Path
    machine: str
    section: str  # two digits, e.g. "00"
    split: str  # train | test
    domain: str | None  # source | target | None
    label: str | None  # normal | anomaly | None
    index: int
    attributes: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def file_name(self) -> str:
        return self.path.name

    @property
    def clip_id(self) -> str:
        """Unique within a data set: machine/split/file name."""
        return f"{self.machine}/{self.split}/{self.path.name}"

    @property
    def is_anomaly(self) -> bool | None:
        return None if self.label is None else self.label == "anomaly"


def _name_attributes(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    tokens = raw.split("_")
    if len(tokens) % 2:
        return {RAW_ATTRIBUTES_KEY: raw}
    return dict(zip(tokens[::2], tokens[1::2], strict=True))


def parse_clip_name(path: Path, machine: str, split: str) -> Clip:
    """Turn one file name into a Clip; a name that fits no DCASE pattern raises DatasetError."""
    name = path.name
    match = _LABELLED.fullmatch(name)
    if match:
        if match["split"].lower() != split:
            raise DatasetError(
                f"{path}: the name says split {match['split']!r} but the file lies in {split}/; "
                f"move it to {match['split'].lower()}/ or rename it"
            )
        if split == "train" and match["label"].lower() != "normal":
            raise DatasetError(
                f"{path}: training clips must be normal; move anomalous clips to test/"
            )
        return Clip(
            path=path,
            machine=machine,
            section=match["section"],
            split=split,
            domain=match["domain"].lower(),
            label=match["label"].lower(),
            index=int(match["index"]),
            attributes=_name_attributes(match["attrs"]),
        )
    match = _UNLABELLED.fullmatch(name)
    if match and split == "test":
        return Clip(path, machine, match["section"], split, None, None, int(match["index"]))
    if match:
        raise DatasetError(
            f"{path}: an unlabelled name in train/; training clips need domain and label: "
            f"rename it to {LABELLED_PATTERN}"
        )
    raise DatasetError(
        f"{path}: file name does not follow the DCASE layout; expected {LABELLED_PATTERN}"
        + (f" or, unlabelled, {UNLABELLED_PATTERN}" if split == "test" else "")
    )


def read_attributes_csv(path: Path) -> dict[str, dict[str, str]]:
    """Map file name (base name) to its attributes from one `attributes_<ss>.csv`."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: unreadable attributes file ({exc})") from exc
    if not rows or not rows[0] or rows[0][0].strip() != "file_name":
        raise DatasetError(
            f"{path}: first column of the header must be 'file_name' followed by attribute "
            "name/value column pairs (file_name,d1p,d1v,...)"
        )
    table: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        pairs = [cell.strip() for cell in row[1:]]
        while pairs and not pairs[-1]:
            pairs.pop()
        if len(pairs) % 2:
            raise DatasetError(
                f"{path}:{line}: attributes must come in name,value pairs; found {pairs}"
            )
        attributes = {k: v for k, v in zip(pairs[::2], pairs[1::2], strict=True) if k}
        table[Path(row[0].strip()).name] = attributes
    return table


def _machine_dirs(root: Path) -> list[Path]:
    if any((root / split).is_dir() for split in SPLITS):
        return [root]
    return sorted(
        d for d in root.iterdir()
        if d.is_dir() and any((d / split).is_dir() for split in SPLITS)
    )


def _audio_files(directory: Path) -> Iterable[Path]:
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() in AUDIO_SUFFIXES:
            yield path
        else:
            log.debug("skipping %s: not an audio file", path)


def read_machine(directory: Path) -> list[Clip]:
    """Every clip of one machine directory, with attributes merged from its CSVs."""
    machine = directory.name
    attributes: dict[str, dict[str, str]] = {}
    for csv_path in sorted(directory.glob("attributes_*.csv")):
        if _ATTRIBUTES_CSV.fullmatch(csv_path.name):
            attributes.update(read_attributes_csv(csv_path))
    clips = []
    for split in SPLITS:
        if (directory / split).is_dir():
            for path in _audio_files(directory / split):
                clip = parse_clip_name(path, machine, split)
                extra = attributes.get(path.name)
                if extra:
                    clip = dataclasses.replace(clip, attributes={**clip.attributes, **extra})
                clips.append(clip)
    return clips


def read_dataset(root: str | Path) -> list[Clip]:
    """Every clip under a DCASE root (or one machine directory), sorted by machine and path."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data set directory not found; check --data")
    machines = _machine_dirs(root)
    if not machines:
        raise DatasetError(
            f"{root}: no machine directories found; expected {root}/<machine>/train and "
            f"{root}/<machine>/test (or {root}/train and {root}/test for a single machine)"
        )
    clips = [clip for directory in machines for clip in read_machine(directory)]
    if not clips:
        raise DatasetError(
            f"{root}: no .wav or .flac clips under {', '.join(str(m) for m in machines)}"
        )
    log.info(
        "read %d clips of %d machine(s) under %s", len(clips), len(machines), root
    )
    return clips
