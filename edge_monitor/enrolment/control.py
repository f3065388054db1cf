"""The daemon's local control socket, so `edge-monitor enroll` on the box can drive it.

An AF_UNIX stream socket `<state_dir>/control.sock` (mode 0660: the daemon's user and group).
One request per connection: a JSON object on one line, `{"command": "enroll/start",
"machine": "pump", "seconds": 60}`; one reply line, `{"ok": true, "result": {...}}` or
`{"ok": false, "error": "...", "exit_code": 2}`. Commands: enroll/start, enroll/files,
enroll/commit, enroll/cancel, enroll/rollback, enroll/status, enroll/false-alarm. They go
to the same `EnrolmentManager.dispatch` as the MQTT commands; the requester is the peer's
user name (SO_PEERCRED), which the audit log records.

The socket is a privilege boundary (any member of the daemon's group may connect), so a
request reads no file but the daemon's own: `enroll/files` takes only regular files inside
the import directory (`enrolment.import_dir`, default `<state_dir>/enrol-inbox`, where
`edge-monitor enroll` copies recordings), checked after links and `..` are resolved, and
the resolved paths are what is read. Every request is served on its own thread, bounded in
number, size and reading time; whatever a request holds (bytes, JSON, a handler's bug) it
gets one reply line and the server keeps serving.

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

from edge_monitor.config.sections import (
    DEFAULT_KEEP,
    IMPORT_DIR_NAME,
    PENDING_TIMEOUT_S,
    QualityGateConfig,
    check_path,
)
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
CLIENT_TIMEOUT_S = 120.0  # the client's wait for a reply, and the server's for sending it
READ_TIMEOUT_S = 10.0  # for the request line: `edge-monitor enroll` sends it at once
MAX_CLIENTS = 16  # requests served at once; each holds a thread
MAX_FILES = 10_000  # paths in one enroll/files request
SHOWN_CHARS = 200  # of a value quoted in an error
MAX_ERROR_CHARS = 600  # an error reply is one line a person reads

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


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise BadInputError(
            f"control socket path {path} is longer than {MAX_SOCKET_PATH} bytes, the limit "
            "of a unix socket: use a shorter state_dir"
        )


def _shown(value: Any) -> str:
    """A value quoted in an error, one line and cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}...'"


def _reply_text(message: str) -> str:
    """An error reply's text: newlines escaped, cut to MAX_ERROR_CHARS."""
    flat = message.replace("\r", "\\r").replace("\n", "\\n")
    return flat if len(flat) <= MAX_ERROR_CHARS else f"{flat[:MAX_ERROR_CHARS - 3]}..."


def confined(files: Any, import_dir: Path) -> list[str]:
    """The resolved paths of `files`, each a regular file inside `import_dir` once links and
    `..` are resolved; else BadInputError naming the first bad one and the fix."""
    if not isinstance(files, list) or not files or len(files) > MAX_FILES or not all(
        isinstance(f, str) for f in files
    ):
        raise BadInputError(f"files must be a non-empty list of at most {MAX_FILES} absolute "
                            "paths")
    root = import_dir.resolve()
    where = f"the import directory {str(root)!r} (enrolment.import_dir)"
    resolved = []
    for name in files:
        try:
            check_path(Path(name))
        except ValueError as exc:
            raise BadInputError(f"files: {_shown(name)}: {exc}") from None
        path = Path(name)
        if not path.is_absolute():
            raise BadInputError(f"files: {_shown(name)} is not an absolute path")
        try:
            # Where it leads first: nothing is said about files outside, not even whether
            # they exist.
            real = path.resolve()
            inside = real.is_relative_to(root)
            if inside:
                real = path.resolve(strict=True)
                inside = real.is_relative_to(root)  # the whole chain of links, again
        except (OSError, RuntimeError) as exc:  # RuntimeError: a link loop
            reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else "a link loop"
            raise BadInputError(f"files: {_shown(name)} cannot be read ({reason})") from None
        if not inside:
            raise BadInputError(
                f"files: {_shown(name)} is outside {where} once links and '..' are "
                "resolved: copy the recording there (`edge-monitor enroll` does)"
            )
        if not real.is_file():
            raise BadInputError(f"files: {_shown(name)} is not a regular file")
        resolved.append(str(real))
    return resolved


def validate_request(body: Any, import_dir: Path | None = None) -> tuple[str, dict[str, Any]]:
    """Check a control request; returns (command, arguments) or raises BadInputError.
    File paths must lie in `import_dir` (see `confined`); without one (the web view), a
    request naming files is refused."""
    if not isinstance(body, dict):
        raise BadInputError("a control request must be a JSON object with a 'command'")
    name = body.get("command")
    if not isinstance(name, str) or name not in COMMAND_FIELDS:
        raise BadInputError(f"unknown command {_shown(name)}: use one of "
                            f"{', '.join(COMMAND_FIELDS)}")
    fields = COMMAND_FIELDS[name]
    unknown = sorted(set(body) - {"command", *fields})
    if unknown:
        raise BadInputError(f"{name} does not take {_shown(unknown)}; it takes {list(fields)}")
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
                f"seconds = {_shown(seconds)}: give a number above 0 and at most {MAX_SECONDS:g}"
            )
        args["seconds"] = float(seconds)
    if "files" in fields:
        if import_dir is None:
            raise BadInputError(f"{name} is not accepted here: it reads files on this box")
        args["files"] = confined(body["files"], import_dir)
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
    """Serves control requests on a unix socket; each connection on its own short thread,
    at most MAX_CLIENTS at a time (more are answered `busy` at once)."""

    def __init__(self, path: str | Path, handler: Handler,
                 import_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.handler = handler
        self.import_dir = Path(import_dir) if import_dir else self.path.parent / IMPORT_DIR_NAME
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)

    @property
    def alive(self) -> bool:
        """True while the accepting thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        check_socket_path(self.path)
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
            try:
                self._dispatch(conn)
            except Exception:  # e.g. no thread can be started: drop this client, go on
                log.exception("control request could not be served")
                conn.close()

    def _dispatch(self, conn: socket.socket) -> None:
        if not self._clients.acquire(blocking=False):
            with conn:
                _send(conn, _error(f"busy: {MAX_CLIENTS} control requests are being served; "
                                   "try again", 1))
            return
        try:
            threading.Thread(target=self._serve, args=(conn,), name="control-request",
                             daemon=True).start()
        except BaseException:
            self._clients.release()
            raise

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(READ_TIMEOUT_S)
                try:
                    reply = self._answer(conn)
                except Exception as exc:  # a bug in a handler must not kill the server
                    log.exception("control request crashed")
                    reply = _error(f"internal error: {type(exc).__name__}: {exc}", 1)
                _send(conn, reply)
        except Exception:
            log.exception("control request failed")
        finally:
            self._clients.release()

    def _answer(self, conn: socket.socket) -> dict[str, Any]:
        requester = _peer_user(conn)
        try:
            data = _read_line(conn)
            name, args = validate_request(json.loads(data.decode("utf-8")), self.import_dir)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(f"request is not JSON: {exc}", 2)
        except RecursionError:
            return _error("request is nested too deeply to be a control request", 2)
        except TimeoutError:
            return _error(f"no request line within {READ_TIMEOUT_S:g} s", 2)
        except EdgeMonitorError as exc:
            return _error(str(exc), exc.exit_code)
        log.info("control request %s from %s", name, requester)
        conn.settimeout(CLIENT_TIMEOUT_S)
        try:
            result = self.handler(name, args, requester)
        except EdgeMonitorError as exc:
            log.warning("control request %s failed: %s", name, exc)
            return _error(str(exc), exc.exit_code)
        return {"ok": True, "result": dict(result)}


def _error(message: str, exit_code: int) -> dict[str, Any]:
    return {"ok": False, "error": _reply_text(message), "exit_code": exit_code}


def _send(conn: socket.socket, reply: dict[str, Any]) -> None:
    """Send one reply line; a reply that cannot be encoded becomes an error reply."""
    try:
        line = json.dumps(reply, allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        log.error("control reply cannot be encoded: %s", exc)
        line = json.dumps(_error(f"internal error: the reply cannot be encoded ({exc})",
                                 1)).encode() + b"\n"
    try:
        conn.sendall(line)
    except OSError as exc:
        log.warning("control client went away before the reply: %s", exc)


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
        import_dir: str | Path | None = None,
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
        self.server = ControlServer(socket_path(state_dir), self.manager.dispatch, import_dir)
        for name, handler in self.manager.command_handlers().items():
            daemon.register_command(name, handler)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.manager.close()
