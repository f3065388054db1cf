"""What the web view reads and calls in the daemon, as plain callables.

The daemon builds one `WebContext` whose callables look up its current parts at each call
(a reload replaces the MQTT client or the clip store), so the web server holds no
reference to the processing loop and cannot reach into it except through these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_monitor.pipeline.live import LiveFeed

# (command, arguments, requester) -> result: the enrolment manager's dispatch.
EnrolHandler = Callable[[str, Mapping[str, Any], str], Mapping[str, Any]]
# (machine, event_id, requester) -> result: "this alarm was normal" (the enrolment
# manager's alarm_was_normal).
FeedbackHandler = Callable[[str, str, str], Mapping[str, Any]]


@dataclass(frozen=True)
class WebContext:
    """The daemon as the web view sees it."""

    device_id: str
    live: LiveFeed
    snapshot: Callable[[], dict[str, Any]]  # the processing snapshot ({} before it runs)
    broker: Callable[[], dict[str, Any] | None]  # MQTT link and journal; None: MQTT off
    clip_dir: Callable[[], Path | None]  # None: alarm audio is not saved
    serving: Callable[[], dict[str, Any]]  # which bundle serves
    enrol: EnrolHandler | None = None
    feedback: FeedbackHandler | None = None
