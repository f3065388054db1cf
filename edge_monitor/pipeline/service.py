"""The systemd notify protocol: readiness, watchdog and status as datagrams to NOTIFY_SOCKET.

The protocol is one AF_UNIX datagram of newline-separated ``KEY=VALUE`` lines, so a socket
call is all it takes; no libsystemd binding is needed on the edge box. Outside systemd
(NOTIFY_SOCKET unset) every call is a no-op, and a failed send never stops the monitor:
it is logged once and reported as False.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None if no watchdog is set.

    systemd exports WATCHDOG_USEC, and WATCHDOG_PID names the process it is meant for; a
    child that inherited the variables must not ping on its parent's behalf.
    """
    env = os.environ if environ is None else environ
    raw = env.get(WATCHDOG_USEC_ENV)
    if not raw:
        return None
    pid = env.get(WATCHDOG_PID_ENV)
    if pid:
        if not pid.isdigit():
            log.warning("ignoring the watchdog: %s=%r is not a process id", WATCHDOG_PID_ENV, pid)
            return None
        if int(pid) != os.getpid():
            return None
    try:
        usec = int(raw)
    except ValueError:
        usec = 0
    if usec <= 0:
        log.warning(
            "ignoring the watchdog: %s=%r is not a positive integer", WATCHDOG_USEC_ENV, raw
        )
        return None
    return usec / 2_000_000.0


def _address(raw: str) -> str | bytes | None:
    """Turn NOTIFY_SOCKET into a socket address: '@name' is the abstract name '\\0name'."""
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


class Notifier:
    """Sends sd_notify messages to the service manager that started this process.

    Create one per process (it keeps one socket) and call it from the processing loop:
    `ready()` once the first window can be processed, `ping_watchdog_if_due()` per window,
    `status(text)` for a one-line summary shown by `systemctl status`.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get(NOTIFY_SOCKET_ENV, "")
        self._raw = raw
        self._address = _address(raw) if raw else None
        if raw and self._address is None:
            log.warning(
                "ignoring %s=%r: it is neither an absolute path nor an abstract '@' name",
                NOTIFY_SOCKET_ENV,
                raw,
            )
        self.watchdog_interval_s = watchdog_interval_s(env)
        self._socket: socket.socket | None = None
        self._warned = False
        self._last_ping = float("-inf")

    @property
    def enabled(self) -> bool:
        """True when a service manager is listening, i.e. messages are actually sent."""
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send `fields` (``KEY=VALUE`` each) as one datagram; True if it was sent."""
        if self._address is None:
            return False
        payload = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                log.warning(
                    "cannot notify the service manager at %s=%r (%s); carrying on without it",
                    NOTIFY_SOCKET_ENV,
                    self._raw,
                    exc,
                )
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up (or a reload) is complete: `Type=notify` waits for this."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(_status_field(status))
        return self.send(*fields)

    def reloading(self) -> bool:
        """Tell systemd a reload (SIGHUP) started; follow with `ready()` when it is done.

        systemd >= 253 wants the CLOCK_MONOTONIC time of the reload in the same datagram.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Tell systemd a clean shutdown has begun."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """Set the one-line status shown by `systemctl status`."""
        return self.send(_status_field(text))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before a start, reload or stop counts as timed out.

        Useful while a slow step runs, e.g. building a TensorRT engine on first start.
        """
        return self.send(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1_000_000))}")

    def watchdog(self) -> bool:
        """Ping the watchdog now: the processing loop is alive."""
        sent = self.send("WATCHDOG=1")
        self._last_ping = time.monotonic()
        return sent

    def ping_watchdog_if_due(self) -> bool:
        """Ping if a watchdog is configured and half its period passed since the last ping."""
        if self.watchdog_interval_s is None or self._address is None:
            return False
        if time.monotonic() - self._last_ping < self.watchdog_interval_s:
            return False
        return self.watchdog()

    def close(self) -> None:
        """Release the socket; later calls open a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status_field(text: str) -> str:
    """STATUS= takes one line: newlines would start new fields, so they become spaces."""
    return "STATUS=" + " ".join(text.splitlines())
