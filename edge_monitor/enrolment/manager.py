"""Re-enrolment on site: teach a machine's detector its new normal sound without retraining.

An `Enrolment` collects one machine's audio (files, or the daemon's live capture through an
audio tap), cuts it into non-overlapping windows of the model's length, drops windows the
quality gate refuses, and embeds the rest with every model of the machine's detector. On
commit the new embeddings are appended as `target` entries to the original (non-synthetic)
entries of the *current* banks; synthesis, densities, leave-one-out scores and the threshold
are rebuilt with each bank's own scoring config (`edge_monitor.core.scoring.build_bank`); the new
versions are written beside the old ones (`BankStore`) and the new detector handed to the
swap callback, which replaces it between two windows.

`EnrolmentManager` is what the daemon (and the offline CLI) drive: one session at a time on
a device (a second is refused with `EnrolmentBusyError`, also across processes), start /
commit / cancel / rollback / status, the MQTT command handlers, and an audit log (JSONL,
fsynced) of who did what to which bank versions. A failure or cancel at any point leaves
the running detector and the bank pointer as they were.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_monitor.config.sections import DEFAULT_KEEP, PENDING_TIMEOUT_S, QualityGateConfig
from edge_monitor.core.audio_io import read_audio, resample
from edge_monitor.core.bank import Bank
from edge_monitor.core.detector import Detector
from edge_monitor.core.errors import BadInputError, EdgeMonitorError
from edge_monitor.core.preprocess import preprocess
from edge_monitor.core.scoring import TARGET, TARGET_SYN, build_bank
from edge_monitor.core.windowing import Windower
from edge_monitor.enrolment.bank_store import (
    BankStore,
    EnrolmentBusyError,
    StoreLock,
    detector_versions,
    rebank,
)
from edge_monitor.enrolment.quality_gate import QualityGate, QualityReport

log = logging.getLogger(__name__)

AUDIT_NAME = "enrolment-audit.jsonl"
MAX_SECONDS = 3600.0
CALLBACK_TIMEOUT_S = 30.0
# A file up to this many windows long is embedded whole (as the trainer embeds clips).
WHOLE_FILE_WINDOWS = 1.5

RECORDING, RECORDED, COMMITTING = "recording", "recorded", "committing"
DONE, CANCELLED, FAILED = "done", "cancelled", "failed"

__all__ = [
    "AuditLog",
    "Enrolment",
    "EnrolmentBusyError",
    "EnrolmentManager",
]


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class AuditLog:
    """Append-only JSONL record of enrolments and rollbacks; each line fsynced."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps({"at": _utc(), **record}, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def _wait(result: Any, what: str) -> Any:
    """Wait for a callback that answered with a future (the processing loop's submit)."""
    if isinstance(result, concurrent.futures.Future):
        try:
            return result.result(CALLBACK_TIMEOUT_S)
        except concurrent.futures.TimeoutError as exc:
            raise EdgeMonitorError(
                f"{what} did not finish within {CALLBACK_TIMEOUT_S:.0f} s; is the daemon stuck?"
            ) from exc
    return result


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
        self.started_at = _utc()
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
        """Add one file: whole when about one window long, else cut into windows."""
        path = Path(path)
        rate = self.detector.sample_rate_hz
        audio = read_audio(path, rate)
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
        """New banks: the current banks' original entries plus the enrolled target entries."""
        self.quality()
        with self._lock:
            ids = list(self._ids)
            vectors = {name: np.vstack(v) for name, v in self._vectors.items()}
        banks = {}
        for member in detector.members:
            old = member.bank
            keep = old.domains != TARGET_SYN
            info = dict(old.info)
            info["parent_version"] = old.version
            info["enrolled_at"] = self.started_at
            info["enrolled_entries"] = int(info.get("enrolled_entries", 0)) + len(ids)
            banks[member.name] = build_bank(
                np.vstack([old.embeddings[keep], vectors[member.name]]),
                [*old.domains[keep].tolist(), *[TARGET] * len(ids)],
                [*old.clip_ids[keep].tolist(), *ids],
                old.config,
                info,
            )
        return banks

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


class EnrolmentManager:
    """Drives enrolments for the daemon or the offline CLI; one session per device at a time.

    Callbacks (the daemon passes its processing loop's operations; any may return a future,
    which is waited for except on the processing thread):
    get_detector(machine) -> Detector | None (None: still learning);
    swap_detector(machine, detector); set_enrolling(machine, bool) (state `enrolling`);
    add_tap(machine, tap) / remove_tap(machine, tap) (live recording).
    """

    def __init__(
        self,
        state_dir: str | Path,
        get_detector: Callable[[str], Any],
        swap_detector: Callable[[str, Detector], Any],
        *,
        set_enrolling: Callable[[str, bool], Any] | None = None,
        add_tap: Callable[[str, Any], Any] | None = None,
        remove_tap: Callable[[str, Any], Any] | None = None,
        audit: AuditLog | None = None,
        gate: QualityGateConfig | None = None,
        keep: int = DEFAULT_KEEP,
        pending_timeout_s: float = PENDING_TIMEOUT_S,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.pending_timeout_s = pending_timeout_s
        self._get_detector = get_detector
        self._swap_detector = swap_detector
        self._set_enrolling = set_enrolling
        self._add_tap = add_tap
        self._remove_tap = remove_tap
        self.audit = audit or AuditLog(self.state_dir / AUDIT_NAME)
        self.gate = gate
        self.keep = keep
        self._store_lock = StoreLock(self.state_dir)
        self._mutex = threading.Lock()
        self._session: Enrolment | None = None
        self._last: dict[str, Any] | None = None

    def configure(self, gate: QualityGateConfig | None, keep: int,
                  pending_timeout_s: float) -> None:
        """New settings (a reload); a session already running keeps the gate it started with."""
        with self._mutex:
            self.gate = gate
            self.keep = keep
            self.pending_timeout_s = pending_timeout_s

    def store(self, machine: str) -> BankStore:
        return BankStore(self.state_dir, machine, self.keep)

    # Session lifecycle -----------------------------------------------------------------

    def start(self, machine: str, seconds: float, requester: str) -> dict[str, Any]:
        """Start recording `seconds` of the machine's live audio; returns the session status."""
        if self._add_tap is None:
            raise BadInputError(
                "live recording needs the running daemon's audio input; give files instead, "
                "or run `edge-monitor enroll` while `edge-monitor run` is up"
            )
        session = self._open(machine, requester, seconds)
        try:
            _wait(self._add_tap(machine, session), "adding the recording tap")
            if self._set_enrolling is not None:
                _wait(self._set_enrolling(machine, True), "switching to enrolling")
        except BaseException as exc:
            self._stop_recording(session, wait=False)
            self._finish(session, FAILED, f"could not start recording: {exc}")
            raise
        self.audit.append({"event": "enrol-start", "machine": machine, "who": requester,
                           "seconds": seconds,
                           "bank_versions": detector_versions(session.detector)})
        log.info("machine %s: enrolment started by %s (%.0f s)", machine, requester, seconds)
        return session.summary()

    def enrol_files(
        self, machine: str, paths: Iterable[str | Path], requester: str
    ) -> dict[str, Any]:
        """Enrol from files and commit at once; returns what commit returns."""
        paths = [Path(p) for p in paths]
        if not paths:
            raise BadInputError("no files given: name the WAV/FLAC files to enrol")
        session = self._open(machine, requester, None)
        try:
            session.add_files(paths)
        except BaseException as exc:
            self._finish(session, FAILED, str(exc))
            raise
        return self.commit(machine, requester)

    def commit(self, machine: str, requester: str) -> dict[str, Any]:
        """Build the new banks from the recording, store them and swap the detector in."""
        with self._mutex:
            session = self._require(machine)
            if session.state == RECORDING:
                raise BadInputError(
                    f"machine {machine}: still recording ({session.progress:.0%} of "
                    f"{session.seconds:g} s); commit when it is done, or cancel"
                )
            if session.state != RECORDED:
                raise BadInputError(f"machine {machine}: enrolment is {session.state}")
            session.state = COMMITTING
        try:
            result = self._commit(session, requester)
        except BaseException as exc:
            self._finish(session, CANCELLED if session.cancel_requested.is_set() else FAILED,
                         str(exc), requester)
            raise
        self._finish(session, DONE, None, requester, result)
        return result

    def cancel(self, machine: str, requester: str) -> dict[str, Any]:
        """Abandon the machine's enrolment; the running bank stays as it is."""
        with self._mutex:
            session = self._require(machine)
            session.cancel_requested.set()
            if session.state == COMMITTING:
                # The commit stops if it has not moved the bank pointer yet.
                return {"machine": machine, "cancel_requested": True, "state": COMMITTING}
        self._stop_recording(session, wait=True)
        self._finish(session, CANCELLED, "cancelled", requester)
        return {"machine": machine, "cancelled": True}

    def rollback(self, machine: str, requester: str) -> dict[str, Any]:
        """Serve the machine's previous bank version again (undo the last enrolment)."""
        self._expire_forgotten()
        with self._mutex:
            self._claim(f"rollback of {machine}")
        try:
            detector = self._detector(machine)
            store = self.store(machine)
            if not store.belongs_to(detector):
                raise BadInputError(
                    f"machine {machine}: no enrolment of the running model "
                    f"({detector.model_version}) to roll back"
                )
            old = detector_versions(detector)
            pointer = store.rollback({"who": requester})
            new_detector = rebank(detector, store.load(pointer["current"]))
            try:
                _wait(self._swap_detector(machine, new_detector), "swapping the detector")
            except BaseException:
                store.commit(store.load(old), {"who": requester, "reason": "swap failed"})
                raise
            result = {"machine": machine, "old_versions": old, "new_versions": pointer["current"],
                      "threshold": new_detector.threshold}
            self.audit.append({"event": "rollback", "machine": machine, "who": requester,
                               "old_versions": old, "new_versions": pointer["current"],
                               "outcome": "done"})
            log.info("machine %s: rolled back by %s: %s -> %s", machine, requester, old,
                     pointer["current"])
            return result
        except BaseException as exc:
            self.audit.append({"event": "rollback", "machine": machine, "who": requester,
                               "outcome": "failed", "error": str(exc)})
            raise
        finally:
            self._store_lock.release()

    def status(self) -> dict[str, Any]:
        with self._mutex:
            session = self._session
            return {
                "active": session.summary() if session else None,
                "last": self._last,
            }

    def close(self) -> None:
        """Cancel whatever runs (daemon shutdown); the running bank is left as it is."""
        session = self._session
        if session is not None and session.state in (RECORDING, RECORDED):
            self.cancel(session.machine, "shutdown")

    # Command dispatch (MQTT and the control socket) ------------------------------------

    def dispatch(self, name: str, args: Mapping[str, Any], requester: str) -> dict[str, Any]:
        machine = args.get("machine")
        if name == "enroll/status":
            return self.status()
        if not isinstance(machine, str) or not machine:
            raise BadInputError(f"{name} needs a machine name")
        if name == "enroll/start":
            return self.start(machine, float(args["seconds"]), requester)
        if name == "enroll/files":
            return self.enrol_files(machine, args["files"], requester)
        if name == "enroll/commit":
            return self.commit(machine, requester)
        if name == "enroll/cancel":
            return self.cancel(machine, requester)
        if name == "enroll/rollback":
            return self.rollback(machine, requester)
        raise BadInputError(f"unknown enrolment command {name!r}")

    def command_handlers(self) -> dict[str, Callable[[Any], Mapping[str, Any]]]:
        """Handlers for the MQTT router (`edge_monitor.mqtt.commands.Command` in, result out)."""
        def handler(name: str) -> Callable[[Any], Mapping[str, Any]]:
            return lambda command: self.dispatch(
                name, command.args, f"mqtt:{command.request_id}")
        names = ("enroll/start", "enroll/commit", "enroll/cancel", "enroll/rollback",
                 "enroll/status")
        return {name: handler(name) for name in names}

    # Internals -------------------------------------------------------------------------

    def _detector(self, machine: str) -> Detector:
        detector = _wait(self._get_detector(machine), "reading the running detector")
        if detector is None:
            raise BadInputError(
                f"machine {machine}: has no bank yet (it is still learning); enrol after "
                "learning has finished"
            )
        return detector

    def _expire_forgotten(self) -> None:
        session = self._session
        if session is not None and session.state in (RECORDING, RECORDED) and (
            session.idle_s() > self.pending_timeout_s
        ):
            self._stop_recording(session, wait=True)
            self._finish(session, CANCELLED,
                         f"discarded: not committed within {self.pending_timeout_s:g} s of the "
                         "end of its recording")

    def _claim(self, what: str) -> None:
        """Refuse `what` while a session runs, else take the store lock for it; the caller
        holds the mutex."""
        s = self._session
        if s is not None:
            raise EnrolmentBusyError(
                f"{what} refused: an enrolment of {s.machine} started by {s.requester} at "
                f"{s.started_at} is {s.state}; wait, commit or cancel it"
            )
        self._store_lock.acquire(what)

    def _open(self, machine: str, requester: str, seconds: float | None) -> Enrolment:
        self._expire_forgotten()
        with self._mutex:
            self._claim(f"enrolment of {machine}")
            try:
                detector = self._detector(machine)
                session = Enrolment(machine, detector, requester, seconds, self.gate,
                                    on_recorded=self._on_recorded)
            except BaseException:
                self._store_lock.release()
                raise
            self._session = session
            return session

    def _require(self, machine: str) -> Enrolment:
        session = self._session
        if session is None or session.machine != machine:
            running = f" (an enrolment of {session.machine} is running)" if session else ""
            raise BadInputError(f"no enrolment of {machine} is running{running}; start one")
        return session

    def _on_recorded(self, session: Enrolment) -> None:
        # On the processing thread for live recordings: never wait for its own queue.
        self._stop_recording(session, wait=False)

    def _stop_recording(self, session: Enrolment, wait: bool) -> None:
        if session.seconds is None:
            return
        for fn, args in ((self._remove_tap, (session.machine, session)),
                         (self._set_enrolling, (session.machine, False))):
            if fn is None:
                continue
            try:
                result = fn(*args)
                if wait:
                    _wait(result, "stopping the recording")
            except Exception:
                log.exception("machine %s: could not stop the enrolment recording",
                              session.machine)

    def _commit(self, session: Enrolment, requester: str) -> dict[str, Any]:
        machine = session.machine
        started = time.monotonic()
        detector = self._detector(machine)
        if detector_versions(detector) != detector_versions(session.detector) or (
            detector.model_version != session.detector.model_version
        ):
            raise EdgeMonitorError(
                f"machine {machine}: the detector changed during the enrolment (reload?); "
                "nothing was changed: start the enrolment again"
            )
        store = self.store(machine)
        store.ensure_seeded(detector)
        banks = session.build_banks(detector)
        new_detector = rebank(detector, banks)
        if session.cancel_requested.is_set():
            raise EdgeMonitorError(f"machine {machine}: enrolment cancelled before commit")
        old = detector_versions(detector)
        report = session.quality()
        pointer = store.commit(banks, {"who": requester, "windows": report.accepted})
        try:
            _wait(self._swap_detector(machine, new_detector), "swapping the detector")
        except BaseException:
            store.rollback({"who": requester, "reason": "swap failed"})
            raise
        result = {
            "machine": machine,
            "old_versions": old,
            "new_versions": pointer["current"],
            "threshold_old": detector.threshold,
            "threshold_new": new_detector.threshold,
            "windows": report.accepted,
            "seconds": round(report.accepted_seconds, 3),
            "quality": report.to_dict(),
            "build_s": round(time.monotonic() - started, 3),
        }
        log.info("machine %s: enrolment by %s committed: %s -> %s, threshold %.5f -> %.5f",
                 machine, requester, old, pointer["current"], detector.threshold,
                 new_detector.threshold)
        return result

    def _finish(
        self, session: Enrolment, state: str, error: str | None, requester: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        with self._mutex:
            if self._session is not session:
                return
            session.state = state
            session.error = error
            self._session = None
            self._store_lock.release()
            summary = session.summary()
            self._last = {**summary, **(result or {})}
        report = session.gate.report
        self.audit.append({
            "event": "enrolment",
            "machine": session.machine,
            "who": session.requester,
            "closed_by": requester or session.requester,
            "started_at": session.started_at,
            "source": "files" if session.seconds is None else "live",
            "files": session.files,
            "clips": report.accepted,
            "windows_offered": report.windows,
            "seconds": round(report.accepted_seconds, 3),
            "dropped": dict(report.dropped),
            "old_versions": detector_versions(session.detector),
            "new_versions": (result or {}).get("new_versions"),
            "outcome": state,
            "error": error,
        })
        if state != DONE:
            log.warning("machine %s: enrolment %s: %s; the running bank is unchanged",
                        session.machine, state, error)
