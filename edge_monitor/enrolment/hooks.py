"""How enrolment reaches the running detector and its audio.

The daemon passes its processing loop's operations (`Processor.detector`, `swap_detector`,
`set_enrolling`, `add_tap`, `remove_tap`); the offline CLI passes plain functions on the
banks on disk. Any call may answer with a future: it is waited for, except on the processing
thread itself (a recording that just ended must not wait for its own loop).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edge_monitor.core.detector import Detector
from edge_monitor.core.errors import BadInputError
from edge_monitor.enrolment.session import Enrolment, wait_for

log = logging.getLogger(__name__)


class LoopHooks:
    """The running detector of each machine and, when live, its audio taps."""

    def __init__(
        self,
        get_detector: Callable[[str], Any],
        swap_detector: Callable[[str, Detector], Any],
        set_enrolling: Callable[[str, bool], Any] | None = None,
        add_tap: Callable[[str, Any], Any] | None = None,
        remove_tap: Callable[[str, Any], Any] | None = None,
    ) -> None:
        self._get_detector = get_detector
        self._swap_detector = swap_detector
        self._set_enrolling = set_enrolling
        self._add_tap = add_tap
        self._remove_tap = remove_tap

    def detector(self, machine: str) -> Detector:
        """The machine's running detector; refused while it is still learning its bank."""
        detector = wait_for(self._get_detector(machine), "reading the running detector")
        if detector is None:
            raise BadInputError(
                f"machine {machine}: has no bank yet (it is still learning); enrol after "
                "learning has finished"
            )
        return detector

    def swap(self, machine: str, detector: Detector) -> None:
        wait_for(self._swap_detector(machine, detector), "swapping the detector")

    def start_recording(self, session: Enrolment) -> None:
        """Tap the machine's live audio into the session and suspend its decisions."""
        if self._add_tap is None:
            raise BadInputError(
                "live recording needs the running daemon's audio input; give files instead, "
                "or run `edge-monitor enroll` while `edge-monitor run` is up"
            )
        wait_for(self._add_tap(session.machine, session), "adding the recording tap")
        if self._set_enrolling is not None:
            wait_for(self._set_enrolling(session.machine, True), "switching to enrolling")

    def stop_recording(self, session: Enrolment, wait: bool) -> None:
        """Remove the tap and resume decisions; never raises (logged instead)."""
        if session.seconds is None:
            return
        for fn, args in ((self._remove_tap, (session.machine, session)),
                         (self._set_enrolling, (session.machine, False))):
            if fn is None:
                continue
            try:
                result = fn(*args)
                if wait:
                    wait_for(result, "stopping the recording")
            except Exception:
                log.exception("machine %s: could not stop the enrolment recording",
                              session.machine)
