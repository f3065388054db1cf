"""One enrolment session: collect a machine's new normal sound, gate it, embed it, build banks.

An `Enrolment` collects one machine's audio (files, or the daemon's live capture through an
audio tap), cuts it into non-overlapping windows of the model's length, drops windows the
quality gate refuses, and embeds the rest with every model of the machine's detector. Its
`build_banks` appends the new embeddings as `target` entries to the original
(non-synthetic) entries of the *current* banks; synthesis, densities, leave-one-out scores
and the threshold are rebuilt with each bank's own scoring config
(`edge_monitor.core.scoring.build_bank`). `EnrolmentManager` (enrolment.manager) drives
sessions and stores the result.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_monitor.config.sections import QualityGateConfig
from edge_monitor.core.audio_io import decode_audio, resample
from edge_monitor.core.bank import Bank
from edge_monitor.core.detector import Detector
from edge_monitor.core.embedders.base import l2_normalise
from edge_monitor.core.errors import BadInputError, EdgeMonitorError
from edge_monitor.core.preprocess import preprocess
from edge_monitor.core.scoring import TARGET, TARGET_SYN, build_bank
from edge_monitor.core.windowing import Windower
from edge_monitor.enrolment.audit import utc_stamp
from edge_monitor.enrolment.bank_store import BankStore, detector_versions, install_banks
from edge_monitor.enrolment.quality_gate import QualityGate, QualityReport

log = logging.getLogger(__name__)

MAX_SECONDS = 3600.0
CALLBACK_TIMEOUT_S = 30.0
# Cosine distance under which two windows are one sound: float rounding of equal audio,
# far below the distance between any two windows of a real recording.
DUPLICATE_DISTANCE = 1e-6
# A file up to this many windows long is embedded whole (as the trainer embeds clips).
WHOLE_FILE_WINDOWS = 1.5

RECORDING, RECORDED, COMMITTING = "recording", "recorded", "committing"
DONE, CANCELLED, FAILED = "done", "cancelled", "failed"


def duplicate_rows(old: np.ndarray, new: np.ndarray,
                   distance: float = DUPLICATE_DISTANCE) -> np.ndarray:
    """Mask of the rows of `new` within cosine `distance` of a row of `old` or of an earlier
    row of `new` that is kept (so one of several equal rows stays)."""
    unit = l2_normalise(np.asarray(new, dtype=np.float64))
    duplicate = np.zeros(len(unit), dtype=bool)
    if len(old):
        known = l2_normalise(np.asarray(old, dtype=np.float64))
        duplicate |= (unit @ known.T).max(axis=1) >= 1.0 - distance
    similar = unit @ unit.T >= 1.0 - distance
    for i in range(1, len(unit)):
        if not duplicate[i]:
            duplicate[i] = bool(np.any(similar[i, :i] & ~duplicate[:i]))
    return duplicate


def wait_for(result: Any, what: str) -> Any:
    """Wait for a callback that answered with a future (the processing loop's submit)."""
    if isinstance(result, concurrent.futures.Future):
        try:
            return result.result(CALLBACK_TIMEOUT_S)
        except concurrent.futures.TimeoutError as exc:
            raise EdgeMonitorError(
                f"{what} did not finish within {CALLBACK_TIMEOUT_S:.0f} s; is the daemon stuck?"
            ) from exc
    return result


def extended_banks(detector: Detector, vectors: Mapping[str, np.ndarray], ids: list[str],
                   stamp: Mapping[str, Any]) -> dict[str, Bank]:
    """Each member's bank with `vectors[member]` (one row per id) added as `target` entries.

    The current bank's original entries are kept (with their recordings and start times),
    its synthetic ones dropped; synthesis, densities, leave-one-out scores and so the
    threshold are rebuilt with the bank's own scoring config. Enrolment and "this alarm was
    normal" feedback both build their new versions here; `stamp` joins the bank's info.
    """
    banks = {}
    for member in detector.members:
        old = member.bank
        keep = old.domains != TARGET_SYN
        info = {**old.info, **stamp, "parent_version": old.version}
        info["enrolled_entries"] = int(old.info.get("enrolled_entries", 0)) + len(ids)
        banks[member.name] = build_bank(
            np.vstack([old.embeddings[keep], vectors[member.name]]),
            [*old.domains[keep].tolist(), *[TARGET] * len(ids)],
            [*old.clip_ids[keep].tolist(), *ids],
            old.config,
            info,
            recordings=[*old.recordings[keep].tolist(), *[""] * len(ids)],
            start_s=[*old.start_s[keep].tolist(), *[0.0] * len(ids)],
            overlap_s=old.overlap_s,
        )
    return banks


class Enrolment:
    """One machine's enrolment session: collect windows, gate, embed; then build new banks.

    `feed` is an audio tap (called on the processing thread with the machine's captured
    audio); `add_file` takes files. Thread-safe for one feeder and any number of readers.
    """

    def __init__(
        self,
        machine: str,
        detector: Detector,
        requester: str,
        seconds: float | None = None,
        gate: QualityGateConfig | None = None,
        on_recorded: Callable[[Enrolment], None] | None = None,
    ) -> None:
        if seconds is not None and not 0 < seconds <= MAX_SECONDS:
            raise BadInputError(
                f"seconds = {seconds}: give more than 0 and at most {MAX_SECONDS:g} seconds"
            )
        self.machine = machine
        self.detector = detector
        self.requester = requester
        self.seconds = seconds
        self.started_at = utc_stamp()
        self.started_mono = time.monotonic()
        self.recorded_mono: float | None = None
        self.stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.state = RECORDING
        self.error: str | None = None
        self.files: list[str] = []
        self.gate = QualityGate(gate)
        self.target_windows = (
            max(1, math.ceil(seconds / detector.window_s - 1e-9)) if seconds else None
        )
        self.cancel_requested = threading.Event()
        self._on_recorded = on_recorded
        self._vectors: dict[str, list[np.ndarray]] = {m.name: [] for m in detector.members}
        self._ids: list[str] = []
        self._windower: Windower | None = None
        self.duplicates = 0  # windows dropped at commit as duplicates
        self._lock = threading.Lock()

    # Collecting ------------------------------------------------------------------------

    @property
    def windows(self) -> int:
        return self.gate.report.windows

    @property
    def progress(self) -> float:
        if not self.target_windows:
            return 1.0 if self.state != RECORDING else 0.0
        return min(1.0, self.windows / self.target_windows)

    def feed(self, audio: np.ndarray, sample_rate_hz: int, start_frame: int) -> None:
        """Audio tap: the machine's mono audio at the source rate, in the source's timeline."""
        if self.state != RECORDING or self.cancel_requested.is_set():
            return
        if self._windower is None or self._windower.sample_rate_hz != sample_rate_hz:
            w = self.detector.window_s
            self._windower = Windower(sample_rate_hz, w, w)
        for window in self._windower.push(audio, start_frame):
            self._add_window(window.audio, sample_rate_hz,
                             f"enrol-{self.stamp}-{window.start_frame}")
            if self.target_windows and self.windows >= self.target_windows:
                self._recorded()
                return

    def add_file(self, path: str | Path) -> None:
        """Add one file: whole when about one window long, else cut into windows. Windows
        are judged at the file's own rate, as live audio at the capture's."""
        path = Path(path)
        audio, rate = decode_audio(path)
        window = round(self.detector.window_s * rate)
        pieces = (
            [audio] if len(audio) <= WHOLE_FILE_WINDOWS * window
            else [audio[i:i + window] for i in range(0, len(audio) - window + 1, window)]
        )
        for k, piece in enumerate(pieces):
            self._add_window(piece, rate, f"enrol-{self.stamp}/{path.name}#{k}")
        self.files.append(str(path))

    def add_files(self, paths: Iterable[str | Path]) -> None:
        for path in paths:
            if self.cancel_requested.is_set():
                raise EdgeMonitorError(f"machine {self.machine}: enrolment cancelled")
            self.add_file(path)
        self._recorded()

    def _add_window(self, raw: np.ndarray, raw_rate: int, clip_id: str) -> None:
        d = self.detector
        audio = resample(raw, raw_rate, d.sample_rate_hz)
        conditioned = preprocess(audio, d.sample_rate_hz, d.preprocess_config)
        with self._lock:
            if not self.gate.observe(raw, raw_rate, conditioned):
                return
        vectors = {m.name: m.embedder.embed(conditioned.audio) for m in d.members}
        with self._lock:
            for name, vector in vectors.items():
                self._vectors[name].append(vector)
            self._ids.append(clip_id)

    def _recorded(self) -> None:
        with self._lock:
            if self.state != RECORDING:
                return
            self.state = RECORDED
            self.recorded_mono = time.monotonic()
        log.info("machine %s: enrolment recorded %d window(s) (%d usable)", self.machine,
                 self.windows, self.gate.report.accepted)
        if self._on_recorded is not None:
            self._on_recorded(self)

    def idle_s(self) -> float:
        """Seconds since the recording ended (or should have ended, when it is still on)."""
        if self.recorded_mono is not None:
            return time.monotonic() - self.recorded_mono
        return time.monotonic() - self.started_mono - (self.seconds or 0.0)

    # Building --------------------------------------------------------------------------

    def quality(self) -> QualityReport:
        """The gate's verdict on everything collected; raises QualityRejectedError."""
        with self._lock:
            return self.gate.verdict()

    def build_banks(self, detector: Detector) -> dict[str, Bank]:
        """New banks: the current banks' original entries plus the enrolled target entries,
        less the windows that duplicate an entry or one another (see `_drop_duplicates`)."""
        self.quality()
        with self._lock:
            ids = list(self._ids)
            vectors = {name: np.vstack(v) for name, v in self._vectors.items()}
        ids, vectors = self._drop_duplicates(detector, ids, vectors)
        return extended_banks(detector, vectors, ids,
                              {"enrolled_at": self.started_at, "enrolled_from": "recording"})

    def _drop_duplicates(
        self, detector: Detector, ids: list[str], vectors: dict[str, np.ndarray],
    ) -> tuple[list[str], dict[str, np.ndarray]]:
        """Windows at zero distance (in any model) from a bank entry or an earlier window are
        dropped, with a log line: the same recording enrolled twice would otherwise give
        leave-one-out scores of 0 and a threshold of 0 (every window an alarm). Too few new
        windows left is an error: nothing new to learn."""
        duplicate = np.zeros(len(ids), dtype=bool)
        for member in detector.members:
            old = member.bank.embeddings[member.bank.domains != TARGET_SYN]
            duplicate |= duplicate_rows(old, vectors[member.name])
        self.duplicates = int(duplicate.sum())
        if not self.duplicates:
            return ids, vectors
        kept = len(ids) - self.duplicates
        log.info("machine %s: dropped %d duplicate window(s) of %d (zero distance to the bank "
                 "or to another enrolled window)", self.machine, self.duplicates, len(ids))
        if kept < self.gate.config.min_windows:
            raise BadInputError(
                f"machine {self.machine}: {self.duplicates} of {len(ids)} enrolled windows "
                f"duplicate what the bank already holds or one another (the same recording "
                f"enrolled twice?), leaving {kept}, fewer than the {self.gate.config.min_windows}"
                " needed; nothing was changed: enrol a new recording"
            )
        ids = [i for i, dup in zip(ids, duplicate, strict=True) if not dup]
        return ids, {name: v[~duplicate] for name, v in vectors.items()}

    def summary(self) -> dict[str, Any]:
        report = self.gate.report.to_dict()
        return {
            "machine": self.machine,
            "state": self.state,
            "requester": self.requester,
            "started_at": self.started_at,
            "seconds_requested": self.seconds,
            "progress": round(self.progress, 3),
            "files": len(self.files),
            "quality": report,
            "error": self.error,
        }

    def audit_record(self, state: str, error: str | None, closed_by: str | None,
                     result: Mapping[str, Any] | None) -> dict[str, Any]:
        """The audit line of this session's end."""
        report = self.gate.report
        return {
            "event": "enrolment",
            "machine": self.machine,
            "who": self.requester,
            "closed_by": closed_by or self.requester,
            "started_at": self.started_at,
            "source": "files" if self.seconds is None else "live",
            "files": self.files,
            "clips": report.accepted,
            "windows_offered": report.windows,
            "seconds": round(report.accepted_seconds, 3),
            "dropped": dict(report.dropped),
            "old_versions": detector_versions(self.detector),
            "new_versions": (result or {}).get("new_versions"),
            "outcome": state,
            "error": error,
        }

    def commit(self, detector: Detector, store: BankStore, requester: str,
               swap: Callable[[Detector], Any]) -> dict[str, Any]:
        """Build the new banks against the running `detector`, store them and swap them in."""
        started = time.monotonic()
        if detector_versions(detector) != detector_versions(self.detector) or (
            detector.model_version != self.detector.model_version
        ):
            raise EdgeMonitorError(
                f"machine {self.machine}: the detector changed during the enrolment (reload?); "
                "nothing was changed: start the enrolment again"
            )
        store.ensure_seeded(detector)
        banks = self.build_banks(detector)
        if self.cancel_requested.is_set():
            raise EdgeMonitorError(f"machine {self.machine}: enrolment cancelled before commit")
        old = detector_versions(detector)
        report = self.quality()
        pointer, new_detector = install_banks(
            store, detector, banks, {"who": requester, "windows": report.accepted}, swap)
        log.info("machine %s: enrolment by %s committed: %s -> %s, threshold %.5f -> %.5f",
                 self.machine, requester, old, pointer["current"], detector.threshold,
                 new_detector.threshold)
        return {
            "machine": self.machine,
            "old_versions": old,
            "new_versions": pointer["current"],
            "threshold_old": detector.threshold,
            "threshold_new": new_detector.threshold,
            "windows": report.accepted - self.duplicates,
            "duplicates_dropped": self.duplicates,
            "seconds": round(report.accepted_seconds, 3),
            "quality": report.to_dict(),
            "build_s": round(time.monotonic() - started, 3),
        }
