"""The MQTT client's health check: a client that stopped making progress is restarted.

paho does its network I/O, keep-alive and acknowledgements on one thread. If that thread
ends (an exception that is not an `Exception`, say a `SystemExit` raised in a callback) or
hangs, the process stays up, QoS 0 telemetry may even keep leaving, but no PUBACK is read
and no command answered again: events pile up in the journal unseen. `HealthWatch` asks
its client every `interval_s` what is wrong (`problem()`: a sentence, or None) and, when
something is, has it restart itself (`restart(problem)`), which logs and counts it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as paho

log = logging.getLogger(__name__)

CHECKS_PER_TIMEOUT = 4  # a stall is noticed within 1.25 x the stall timeout
MAX_INTERVAL_S = 5.0    # a dead network thread is noticed within this


def check_interval_s(stall_timeout_s: float) -> float:
    return min(MAX_INTERVAL_S, stall_timeout_s / CHECKS_PER_TIMEOUT)


def network_thread_alive(client: paho.Client) -> bool:
    """Whether paho's `loop_start()` thread still runs. paho has no public call for this;
    its `_thread` (paho 1.x and 2.x) is the loop thread and is reset to None when the loop
    ends for any reason. tests/edge_monitor/test_mqtt_health.py pins this behaviour."""
    thread = getattr(client, "_thread", None)
    return isinstance(thread, threading.Thread) and thread.is_alive()


class HealthWatch:
    """A thread that runs `problem()` every `interval_s` and `restart()` on an answer."""

    def __init__(self, problem: Callable[[], str | None], restart: Callable[[str], None],
                 interval_s: float) -> None:
        self._problem = problem
        self._restart = restart
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mqtt-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                problem = self._problem()
                if problem is not None and not self._stop.is_set():
                    self._restart(problem)
            except Exception:  # the watch must outlive what it watches
                log.exception("MQTT health check failed; checking again in %.1f s",
                              self.interval_s)
