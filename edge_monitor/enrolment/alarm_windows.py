"""The windows that made each alarm, kept by event id so staff can say "this alarm was normal".

While an alarm is open the processing loop records the embeddings of the windows that
scored above the alarm line (`edge_monitor.pipeline.alarm_recorder`), one file per alarm:

    <state_dir>/alarm-windows/<machine>/<event id>.npz

holding, per model of the detector, the embeddings (float32, one row per window), each
window's id and start time in the source's audio, what the enrolment quality gate found
wrong with it (or nothing), and the model and bank versions that scored it. Windows never
overlap (as in learning and enrolment, a bank's leave-one-out scores must not see
overlapping neighbours) and an alarm keeps at most `MAX_WINDOWS`; each machine keeps the
files of its newest `MAX_ALARMS` alarms. Files are written atomically (no pickles), so a
crash leaves the previous version of a file or none.

`enrolment.feedback` reads them back to add an alarm's windows to the machine's bank.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_monitor.core.atomic import atomic_write_bytes
from edge_monitor.core.errors import BadInputError, EdgeMonitorError
from edge_monitor.mqtt.topics import check_event_id

log = logging.getLogger(__name__)

ALARMS_DIR = "alarm-windows"
SUFFIX = ".npz"
FORMAT_VERSION = 1
MAX_WINDOWS = 32  # at 10 s windows: the first 5 min 20 s of an alarm
MAX_ALARMS = 200  # per machine
_META = "meta"
_EMBEDDINGS = "embeddings/"


class AlarmWindowsError(EdgeMonitorError):
    """A stored alarm's windows cannot be read (corrupt or foreign file)."""


@dataclass
class AlarmWindows:
    """The windows of one alarm: per model, one embedding row per window."""

    machine: str
    event_id: str
    model_version: str
    bank_version: str
    window_s: float
    embeddings: dict[str, list[np.ndarray]] = field(default_factory=dict)
    window_ids: list[str] = field(default_factory=list)
    start_s: list[float] = field(default_factory=list)  # in the source's audio time
    problems: list[str | None] = field(default_factory=list)  # the quality gate's verdict

    def __len__(self) -> int:
        return len(self.window_ids)

    @property
    def full(self) -> bool:
        return len(self) >= MAX_WINDOWS

    def add(self, window_id: str, start_s: float, embeddings: dict[str, np.ndarray],
            problem: str | None) -> None:
        for name, vector in embeddings.items():
            self.embeddings.setdefault(name, []).append(np.asarray(vector, dtype=np.float32))
        self.window_ids.append(window_id)
        self.start_s.append(float(start_s))
        self.problems.append(problem)

    def matrix(self, model: str) -> np.ndarray:
        return np.vstack(self.embeddings[model])

    def meta(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "machine": self.machine, "event_id": self.event_id,
            "model_version": self.model_version, "bank_version": self.bank_version,
            "window_s": self.window_s, "models": sorted(self.embeddings),
            "window_ids": self.window_ids, "start_s": self.start_s, "problems": self.problems,
        }


def machine_dir(state_dir: str | Path, machine: str) -> Path:
    return Path(state_dir) / ALARMS_DIR / machine


def path_of(state_dir: str | Path, machine: str, event_id: str) -> Path:
    return machine_dir(state_dir, machine) / f"{check_event_id(event_id)}{SUFFIX}"


def save(state_dir: str | Path, record: AlarmWindows) -> Path:
    """Write (or rewrite) the record atomically; a new alarm's first write drops the files
    beyond the newest MAX_ALARMS."""
    arrays = {_META: np.frombuffer(json.dumps(record.meta()).encode(), dtype=np.uint8)}
    for name in record.embeddings:
        arrays[_EMBEDDINGS + name] = record.matrix(name)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = path_of(state_dir, record.machine, record.event_id)
    first = not path.exists()
    atomic_write_bytes(path, buffer.getvalue())
    if first:
        _prune(path.parent, keep=path)
    return path


def load(state_dir: str | Path, machine: str, event_id: str) -> AlarmWindows:
    """The stored windows of one alarm; BadInputError when there are none."""
    path = path_of(state_dir, machine, event_id)
    if not path.is_file():
        raise BadInputError(
            f"machine {machine}: no stored windows for alarm {event_id}: it is not an alarm "
            f"of this machine, or older than the newest {MAX_ALARMS} kept; check the machine "
            "and the event_id"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data[_META]).decode("utf-8"))
            matrices = {name: data[_EMBEDDINGS + name] for name in meta["models"]}
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format {meta.get('format_version')}, not {FORMAT_VERSION}")
        record = AlarmWindows(meta["machine"], meta["event_id"], meta["model_version"],
                              meta["bank_version"], float(meta["window_s"]))
        n = len(meta["window_ids"])
        if any(m.ndim != 2 or m.shape[0] != n for m in matrices.values()):
            raise ValueError(f"embeddings do not have one row for each of the {n} windows")
        record.embeddings = {name: list(m.astype(np.float32)) for name, m in matrices.items()}
        record.window_ids = [str(w) for w in meta["window_ids"]]
        record.start_s = [float(s) for s in meta["start_s"]]
        record.problems = [None if p is None else str(p) for p in meta["problems"]]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        raise AlarmWindowsError(
            f"{path}: unreadable stored alarm windows ({exc}); that alarm cannot be marked "
            "normal, delete the file"
        ) from exc
    return record


def _prune(directory: Path, keep: Path) -> None:
    files = sorted(directory.glob(f"*{SUFFIX}"), key=lambda p: (p.stat().st_mtime, p.name))
    for old in files[:max(0, len(files) - MAX_ALARMS)]:
        if old != keep:
            old.unlink(missing_ok=True)
            log.debug("dropped the stored windows of an old alarm: %s", old)
