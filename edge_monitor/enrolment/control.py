"""The daemon's local control socket, so `edge-monitor enroll` on the box can drive it.

An AF_UNIX stream socket `<state_dir>/control.sock` (mode 0660: the daemon's user and group).
One request per connection: a JSON object on one line, `{"command": "enroll/start",
"machine": "pump", "seconds": 60}`; one reply line, `{"ok": true, "result": {...}}` or
`{"ok": false, "error": "...", "exit_code": 2}`. Commands: enroll/start, enroll/files,
enroll/commit, enroll/cancel, enroll/rollback, enroll/status, enroll/false-alarm. They go
to the same `EnrolmentManager.dispatch` as the MQTT commands; the requester is the peer's
user name (SO_PEERCRED), which the audit log records.

`EnrolmentService` plugs enrolment into a running `edge_monitor.daemon.Daemon` through its
public hooks: the processing loop's operations (detector, swap_detector, set_enrolling,
add_tap, remove_tap), `register_command` for MQTT, and this socket.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import socket
import stat
import struct
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_monitor.config.sections import DEFAULT_KEEP, PENDING_TIMEOUT_S, QualityGateConfig
from edge_monitor.core.errors import BadInputError, EdgeMonitorError
from edge_monitor.enrolment.manager import EnrolmentManager
from edge_monitor.enrolment.session import MAX_SECONDS
from edge_monitor.mqtt.topics import check_event_id, check_segment

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
SOCKET_MODE = 0o660
MAX_REQUEST_BYTES = 64 * 1024
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
ACCEPT_POLL_S = 0.2
CLIENT_TIMEOUT_S = 120.0  # for reading a request; handlers may run longer

# Fields each command takes besides "command".
COMMAND_FIELDS: dict[str, tuple[str, ...]] = {
    "enroll/start": ("machine", "seconds"),
    "enroll/files": ("machine", "files"),
    "enroll/commit": ("machine",),
    "enroll/cancel": ("machine",),
    "enroll/rollback": ("machine",),
    "enroll/status": (),
    "enroll/false-alarm": ("machine", "event_id"),
}

Handler = Callable[[str, Mapping[str, Any], str], Mapping[str, Any]]


class DaemonUnreachableError(EdgeMonitorError):
    """No daemon answers on the control socket (not running, or another state_dir)."""


class ControlError(EdgeMonitorError):
    """The daemon answered a control request with an error; carries its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def socket_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


def _check_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise BadInputError(
            f"control socket path {path} is longer than {MAX_SOCKET_PATH} bytes, the limit "
            "of a unix socket: use a shorter state_dir"
        )


def validate_request(body: Any) -> tuple[str, dict[str, Any]]:
    """Check a control request; returns (command, arguments) or raises BadInputError."""
    if not isinstance(body, dict):
        raise BadInputError("a control request must be a JSON object with a 'command'")
    name = body.get("command")
    if name not in COMMAND_FIELDS:
        raise BadInputError(f"unknown command {name!r}: use one of {', '.join(COMMAND_FIELDS)}")
    fields = COMMAND_FIELDS[name]
    unknown = sorted(set(body) - {"command", *fields})
    if unknown:
        raise BadInputError(f"{name} does not take {unknown}; it takes {list(fields)}")
    missing = [f for f in fields if f not in body]
    if missing:
        raise BadInputError(f"{name} needs {missing}")
    args: dict[str, Any] = {}
    if "machine" in fields:
        args["machine"] = check_segment(body["machine"], "machine")
    if "event_id" in fields:
        args["event_id"] = check_event_id(body["event_id"])
    if "seconds" in fields:
        seconds = body["seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
            0 < seconds <= MAX_SECONDS
        ):
            raise BadInputError(
                f"seconds = {seconds!r}: give a number above 0 and at most {MAX_SECONDS:g}"
            )
        args["seconds"] = float(seconds)
    if "files" in fields:
        files = body["files"]
        if not isinstance(files, list) or not files or not all(
            isinstance(f, str) and os.path.isabs(f) for f in files
        ):
            raise BadInputError("files must be a non-empty list of absolute paths")
        args["files"] = files
    return name, args


def _peer_user(conn: socket.socket) -> str:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
    except OSError:
        return "local:unknown"
    try:
        return f"local:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"local:uid{uid}"


class ControlServer:
    """Serves control requests on a unix socket; each connection on its own short thread."""

    def __init__(self, path: str | Path, handler: Handler) -> None:
        self.path = Path(path)
        _check_path(self.path)
        self.handler = handler
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._remove_stale()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, SOCKET_MODE)
        sock.listen(8)
        sock.settimeout(ACCEPT_POLL_S)
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept, name="control", daemon=True)
        self._thread.start()
        log.info("control socket listening on %s", self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.path.unlink(missing_ok=True)

    def _remove_stale(self) -> None:
        """A socket file left by a killed daemon is removed; a live one is an error."""
        if not self.path.exists() and not self.path.is_symlink():
            return
        if not stat.S_ISSOCK(self.path.lstat().st_mode):
            raise BadInputError(f"{self.path} exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()
            return
        finally:
            probe.close()
        raise BadInputError(
            f"{self.path}: another daemon already serves this state_dir; stop it or use "
            "another state_dir"
        )

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._stop.is_set():
                    log.exception("control socket failed")
                return
            threading.Thread(target=self._serve, args=(conn,), name="control-request",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(CLIENT_TIMEOUT_S)
            try:
                reply = self._answer(conn)
            except Exception as exc:  # a bug in a handler must not kill the server
                log.exception("control request crashed")
                reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}",
                         "exit_code": 1}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError as exc:
                log.warning("control client went away before the reply: %s", exc)

    def _answer(self, conn: socket.socket) -> dict[str, Any]:
        requester = _peer_user(conn)
        try:
            data = _read_line(conn)
            name, args = validate_request(json.loads(data.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return {"ok": False, "error": f"request is not JSON: {exc}", "exit_code": 2}
        except EdgeMonitorError as exc:
            return {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        log.info("control request %s from %s", name, requester)
        try:
            result = self.handler(name, args, requester)
        except EdgeMonitorError as exc:
            log.warning("control request %s failed: %s", name, exc)
            return {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        return {"ok": True, "result": dict(result)}


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        piece = conn.recv(4096)
        if not piece:
            break
        data += piece
        if len(data) > MAX_REQUEST_BYTES:
            raise BadInputError(f"request longer than {MAX_REQUEST_BYTES} bytes")
    return data


def request(
    path: str | Path, body: Mapping[str, Any], timeout_s: float = CLIENT_TIMEOUT_S
) -> dict[str, Any]:
    """Send one control request; returns the result or raises ControlError."""
    path = Path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    with sock:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnreachableError(f"no daemon answers on {path}: {exc}") from exc
        sock.sendall(json.dumps(dict(body)).encode() + b"\n")
        reply = json.loads(_read_line(sock).decode("utf-8") or "null")
    if not isinstance(reply, dict):
        raise EdgeMonitorError(f"the daemon closed {path} without a reply; see its log")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")), int(reply.get("exit_code", 1)))
    return dict(reply["result"])


def daemon_running(path: str | Path) -> bool:
    """True when a daemon accepts connections on the control socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class EnrolmentService:
    """Enrolment for a running daemon: manager, MQTT command handlers and control socket.

    Build it before or after `Daemon.run()` has started the processing loop (the loop is
    looked up at each call), `start()` it once the state directory exists, `stop()` it on
    shutdown.
    """

    def __init__(
        self,
        daemon: Any,
        state_dir: str | Path,
        gate: QualityGateConfig | None = None,
        keep: int = DEFAULT_KEEP,
        pending_timeout_s: float = PENDING_TIMEOUT_S,
    ) -> None:
        self.daemon = daemon

        def loop() -> Any:
            processor = daemon.processor
            if processor is None:
                raise EdgeMonitorError("the daemon's processing loop is not running yet")
            return processor

        self.manager = EnrolmentManager(
            state_dir,
            get_detector=lambda machine: loop().detector(machine),
            swap_detector=lambda machine, d: loop().swap_detector(machine, d),
            set_enrolling=lambda machine, on: loop().set_enrolling(machine, on),
            add_tap=lambda machine, tap: loop().add_tap(machine, tap),
            remove_tap=lambda machine, tap: loop().remove_tap(machine, tap),
            gate=gate,
            keep=keep,
            pending_timeout_s=pending_timeout_s,
        )
        self.server = ControlServer(socket_path(state_dir), self.manager.dispatch)
        for name, handler in self.manager.command_handlers().items():
            daemon.register_command(name, handler)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.manager.close()
