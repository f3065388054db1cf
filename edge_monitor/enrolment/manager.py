"""Enrolment as the daemon and the offline CLI drive it: one session per device at a time.

`EnrolmentManager`: start / commit / cancel / rollback / status of `Enrolment` sessions
(enrolment.session), and "this alarm was normal" feedback (enrolment.feedback); a second
session is refused with `EnrolmentBusyError`, also across processes. A commit writes the
new bank versions beside the old ones (`BankStore`) and hands the new detector to the swap
callback, which replaces it between two windows; every step goes to the audit log
(enrolment.audit). A failure or cancel at any point leaves the running detector and the
bank pointer as they were.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from edge_monitor.config.sections import DEFAULT_KEEP, PENDING_TIMEOUT_S, QualityGateConfig
from edge_monitor.core.detector import Detector
from edge_monitor.core.errors import BadInputError
from edge_monitor.enrolment import alarm_windows
from edge_monitor.enrolment.audit import AUDIT_NAME, AuditLog
from edge_monitor.enrolment.bank_store import (
    BankStore,
    EnrolmentBusyError,
    StoreLock,
    detector_versions,
    install_banks,
    restore_previous,
)
from edge_monitor.enrolment.feedback import feedback_banks
from edge_monitor.enrolment.hooks import LoopHooks
from edge_monitor.enrolment.session import (
    CANCELLED,
    COMMITTING,
    DONE,
    FAILED,
    RECORDED,
    RECORDING,
    Enrolment,
)
from edge_monitor.mqtt.topics import COMMAND_NAMES, check_event_id

log = logging.getLogger(__name__)

__all__ = ["EnrolmentManager"]


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
        self.hooks = LoopHooks(get_detector, swap_detector, set_enrolling, add_tap, remove_tap)
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
        session = self._open(machine, requester, seconds)
        try:
            self.hooks.start_recording(session)
        except BaseException as exc:
            self.hooks.stop_recording(session, wait=False)
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
            result = session.commit(self.hooks.detector(machine), self.store(machine), requester,
                                    lambda d: self.hooks.swap(machine, d))
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
        self.hooks.stop_recording(session, wait=True)
        self._finish(session, CANCELLED, "cancelled", requester)
        return {"machine": machine, "cancelled": True}

    def rollback(self, machine: str, requester: str) -> dict[str, Any]:
        """Serve the machine's previous bank version again (undo the last enrolment)."""
        self._expire_forgotten()
        with self._mutex:
            self._claim(f"rollback of {machine}")
        try:
            detector = self.hooks.detector(machine)
            store = self.store(machine)
            if not store.belongs_to(detector):
                raise BadInputError(
                    f"machine {machine}: no enrolment of the running model "
                    f"({detector.model_version}) to roll back"
                )
            old = detector_versions(detector)
            pointer, new_detector = restore_previous(
                store, detector, requester,
                lambda d: self.hooks.swap(machine, d))
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

    def alarm_was_normal(self, machine: str, event_id: str, requester: str) -> dict[str, Any]:
        """"This alarm was normal": add the alarm's windows to the machine's bank as a new
        version (quality gate, audit record, rollback as for an enrolment) and serve it.

        The one entry point of the MQTT command, the control socket (`edge-monitor enroll
        --false-alarm`) and the web view. Refused while an enrolment runs.
        """
        event_id = check_event_id(event_id)
        self._expire_forgotten()
        with self._mutex:
            self._claim(f"marking alarm {event_id} of {machine} normal")
        try:
            detector = self.hooks.detector(machine)
            record = alarm_windows.load(self.state_dir, machine, event_id)
            banks, report = feedback_banks(detector, record, self.gate)
            store = self.store(machine)
            store.ensure_seeded(detector)
            old = detector_versions(detector)
            pointer, new_detector = install_banks(
                store, detector, banks,
                {"who": requester, "false_alarm": event_id, "windows": report.accepted},
                lambda d: self.hooks.swap(machine, d))
            result = {"machine": machine, "event_id": event_id, "old_versions": old,
                      "new_versions": pointer["current"], "threshold_old": detector.threshold,
                      "threshold_new": new_detector.threshold, "windows": report.accepted,
                      "quality": report.to_dict()}
            self.audit.append({"event": "false-alarm", "who": requester, "outcome": "done",
                               **result})
            log.info("machine %s: alarm %s marked normal by %s: %d window(s) added, %s -> %s, "
                     "threshold %.5f -> %.5f", machine, event_id, requester, report.accepted,
                     old, pointer["current"], detector.threshold, new_detector.threshold)
            return result
        except BaseException as exc:
            self.audit.append({"event": "false-alarm", "machine": machine, "event_id": event_id,
                               "who": requester, "outcome": "failed", "error": str(exc)})
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
        """Run an enrolment command (MQTT or the control socket) by name."""
        if name == "enroll/status":
            return self.status()
        machine = args.get("machine")
        if not isinstance(machine, str) or not machine or name not in _ACTIONS:
            raise BadInputError(f"{name}: unknown enrolment command, or no machine name given")
        return _ACTIONS[name](self, machine, args, requester)

    def command_handlers(self) -> dict[str, Callable[[Any], Mapping[str, Any]]]:
        """Handlers for the MQTT router: every `enroll/...` command of the topic tree."""
        def handler(name: str) -> Callable[[Any], Mapping[str, Any]]:
            return lambda command: self.dispatch(
                name, command.args, f"mqtt:{command.request_id}")
        return {name: handler(name) for name in COMMAND_NAMES if name.startswith("enroll/")}

    # Internals -------------------------------------------------------------------------

    def _expire_forgotten(self) -> None:
        session = self._session
        if session is not None and session.state in (RECORDING, RECORDED) and (
            session.idle_s() > self.pending_timeout_s
        ):
            self.hooks.stop_recording(session, wait=True)
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
                detector = self.hooks.detector(machine)
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
        self.hooks.stop_recording(session, wait=False)

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
        self.audit.append(session.audit_record(state, error, requester, result))
        if state != DONE:
            log.warning("machine %s: enrolment %s: %s; the running bank is unchanged",
                        session.machine, state, error)


_ACTIONS: dict[str, Callable[[EnrolmentManager, str, Mapping[str, Any], str], dict[str, Any]]] = {
    "enroll/start": lambda m, machine, a, who: m.start(machine, float(a["seconds"]), who),
    "enroll/files": lambda m, machine, a, who: m.enrol_files(machine, a["files"], who),
    "enroll/commit": lambda m, machine, a, who: m.commit(machine, who),
    "enroll/cancel": lambda m, machine, a, who: m.cancel(machine, who),
    "enroll/rollback": lambda m, machine, a, who: m.rollback(machine, who),
    "enroll/false-alarm": lambda m, machine, a, who: m.alarm_was_normal(machine, a["event_id"],
                                                                      who),
}
