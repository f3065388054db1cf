"""Remote commands under `cmd/<name>`: validation, and dispatch off the MQTT thread.

A command changes the running detector (enrolment, reload), so a payload is validated
completely before any handler sees it: malformed, oversized, unknown or disabled commands
get an error reply on `cmd/result` and change nothing. Handlers are registered by the
daemon and run on the router's own worker thread, so a slow enrolment never stalls paho's
network thread (keep-alives, acknowledgements).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_monitor.core.errors import BadInputError, EdgeMonitorError
from edge_monitor.mqtt.topics import COMMAND_NAMES, CommandReply, check_event_id, check_segment

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 4096
# A command is a flat object; allow a little nesting for future fields, never enough for
# json's recursive parser to exhaust the stack (RecursionError on paho's network thread).
MAX_NESTING = 8
MAX_REQUEST_ID_CHARS = 128
MAX_ERROR_CHARS = 400
ENROLL_SECONDS_MIN = 5.0
ENROLL_SECONDS_MAX = 3600.0
MAX_URL_CHARS = 2048
URL_SCHEMES = ("https", "file")

Validator = Callable[[Any, str], Any]
Handler = Callable[["Command"], Mapping[str, Any] | None]
Reply = Callable[[CommandReply], None]


def _short(value: Any, limit: int = 60) -> str:
    """repr of a payload value, cut short: an error reply quotes it, never all 4 KiB."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _one_line(message: str) -> str:
    """An error reply is one short line, whatever a payload put in the message."""
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    if len(message) <= MAX_ERROR_CHARS:
        return message
    half = MAX_ERROR_CHARS // 2
    return f"{message[:half]} ... {message[-half:]}"


class CommandError(BadInputError):
    """A command payload is invalid; carries the request id when one could be read."""

    def __init__(self, message: str, request_id: str | None = None, command: str | None = None):
        super().__init__(_one_line(message))
        self.request_id = request_id
        self.command = command


def _machine(value: Any, name: str) -> str:
    try:
        return check_segment(value, name)
    except BadInputError as exc:
        raise CommandError(str(exc)) from exc


def _event_id(value: Any, name: str) -> str:
    try:
        return check_event_id(value, name)
    except BadInputError as exc:
        raise CommandError(str(exc)) from exc


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(f"{name} must be a number of seconds, got {_short(value)}")
    if not ENROLL_SECONDS_MIN <= value <= ENROLL_SECONDS_MAX:
        raise CommandError(
            f"{name} = {_short(value)} is out of range: give {ENROLL_SECONDS_MIN:g} to "
            f"{ENROLL_SECONDS_MAX:g} seconds"
        )
    return float(value)


def _url(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
        raise CommandError(f"{name} must be a string of at most {MAX_URL_CHARS} characters")
    try:
        scheme = urllib.parse.urlsplit(value).scheme
    except ValueError as exc:  # e.g. an unclosed "[" read as an IPv6 host
        raise CommandError(f"{name} = {_short(value)} is not a valid URL ({exc})") from exc
    if scheme not in URL_SCHEMES:
        raise CommandError(
            f"{name} = {_short(value)}: scheme {scheme!r} is not allowed; give an https:// "
            "or file:// URL"
        )
    return value


def _sha256(value: Any, name: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise CommandError(f"{name} must be 64 lowercase hex digits (sha256sum of the .tar)")
    return value


def _size(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CommandError(f"{name} must be the bundle's size in bytes, a positive integer")
    return value


# Required fields per command (each of topics.COMMAND_NAMES) besides `request_id`; any
# other field is an error.
COMMAND_FIELDS: dict[str, dict[str, Validator]] = {
    "reload": {},
    "status": {},
    "enroll/start": {"machine": _machine, "seconds": _seconds},
    "enroll/commit": {"machine": _machine},
    "enroll/cancel": {"machine": _machine},
    "enroll/rollback": {"machine": _machine},
    "enroll/status": {},
    "enroll/false-alarm": {"machine": _machine, "event_id": _event_id},
    "bundle/install": {"url": _url, "sha256": _sha256, "size_bytes": _size},
    "bundle/rollback": {},
}
# Commands that replace what the box runs: accepted only when mqtt.commands_allowed names
# them, never by the "empty list = all" default.
OPT_IN_COMMANDS = ("bundle/install", "bundle/rollback")
DEFAULT_ALLOWED = tuple(n for n in COMMAND_NAMES if n not in OPT_IN_COMMANDS)


@dataclass(frozen=True)
class Command:
    name: str
    request_id: str
    args: Mapping[str, Any]


def _request_id(body: Mapping[str, Any]) -> str | None:
    value = body.get("request_id")
    if isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID_CHARS:
        return value
    return None


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of JSON `text`, brackets inside strings not counted;
    measured before parsing so a deep payload is refused without recursing into it."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_command(name: str, payload: bytes) -> Command:
    """Validate a command payload; raise CommandError saying what is wrong and how to fix it."""
    shown = name[:64]
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandError(
            f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit",
            command=shown,
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"payload is not JSON (not UTF-8: {exc}): send an object like "
                           "{\"request_id\": \"r1\"}", command=shown) from exc
    depth = nesting_depth(text)
    if depth > MAX_NESTING:
        raise CommandError(
            f"payload nests {depth} levels deep, over the limit of {MAX_NESTING}: send a flat "
            "JSON object like {\"request_id\": \"r1\"}",
            command=shown,
        )
    try:
        body = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and int strings over Python's digit limit
        raise CommandError(
            f"payload is not JSON ({exc}): send an object like {{\"request_id\": \"r1\"}}",
            command=shown,
        ) from exc
    if not isinstance(body, dict):
        raise CommandError("payload must be a JSON object with a request_id", command=shown)
    request_id = _request_id(body)
    if name not in COMMAND_FIELDS:
        raise CommandError(
            f"unknown command {shown!r}: use one of {', '.join(COMMAND_NAMES)}",
            request_id, shown,
        )
    if request_id is None:
        raise CommandError(
            f"request_id must be a non-empty string of at most {MAX_REQUEST_ID_CHARS} "
            f"characters, got {_short(body.get('request_id'))}",
            command=name,
        )
    fields = COMMAND_FIELDS[name]
    unknown = sorted(set(body) - set(fields) - {"request_id"})
    if unknown:
        raise CommandError(
            f"unknown field(s) {', '.join(_short(u, 40) for u in unknown[:5])} for {name}: "
            "it takes "
            f"{', '.join(['request_id', *fields])}",
            request_id, name,
        )
    args = {}
    for field_name, validate in fields.items():
        if field_name not in body:
            raise CommandError(f"{name} needs the field {field_name!r}", request_id, name)
        try:
            args[field_name] = validate(body[field_name], field_name)
        except CommandError as exc:
            raise CommandError(str(exc), request_id, name) from exc
    return Command(name, request_id, args)


@dataclass(frozen=True)
class _Job:
    command: Command
    handler: Handler
    reply: Reply


class CommandRouter:
    """Validates commands from the network thread and runs their handlers on a worker."""

    def __init__(
        self, enabled: bool = True, allowed: Iterable[str] = (), queue_size: int = 8
    ) -> None:
        self.enabled = enabled
        self.allowed = frozenset(allowed or DEFAULT_ALLOWED)
        self._handlers: dict[str, Handler] = {}
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._worker: threading.Thread | None = None
        self._closed = False

    def register(self, name: str, handler: Handler) -> None:
        if name not in COMMAND_FIELDS:
            raise ValueError(f"cannot register a handler for unknown command {name!r}")
        self._handlers[name] = handler

    def start(self) -> None:
        self._closed = False
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="mqtt-commands", daemon=True)
            self._worker.start()

    def stop(self, timeout_s: float = 5.0, wait: bool = True) -> None:
        """Refuse new commands; the worker ends after those already queued. `wait=False`
        does not join it: a running handler may be the one waiting for this stop (reload)."""
        self._closed = True
        if self._worker is None:
            return
        try:
            self._jobs.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("command queue still full at shutdown; not waiting for its handlers")
            return
        if wait:
            self._worker.join(timeout_s)
        self._worker = None

    def submit(self, name: str, payload: bytes, reply: Reply) -> None:
        """Called on the network thread: reply to bad commands now, queue good ones."""
        try:
            command = self._accept(name, payload)
            if self._closed:
                raise CommandError("the daemon is reloading or stopping: retry in a moment",
                                   command.request_id, command.name)
        except CommandError as exc:
            log.warning("rejected MQTT command %r: %s", name[:64], exc)
            reply(CommandReply(exc.request_id, exc.command, False, error=str(exc)))
            return
        except Exception as exc:  # a validation bug: refuse the command, keep the thread
            log.exception("MQTT command %r could not be validated", name[:64])
            reply(CommandReply(None, name[:64], False,
                               error=f"internal error validating the command: "
                                     f"{type(exc).__name__}"))
            return
        try:
            self._jobs.put_nowait(_Job(command, self._handlers[command.name], reply))
        except queue.Full:
            reply(CommandReply(command.request_id, command.name, False,
                               error="busy: earlier commands are still running; retry later"))

    def _accept(self, name: str, payload: bytes) -> Command:
        command = parse_command(name, payload)
        if not self.enabled:
            raise CommandError(
                "commands are disabled on this device (mqtt.commands_enabled: false)",
                command.request_id, command.name,
            )
        if command.name not in self.allowed:
            opt_in = (" (bundle commands are off unless listed there)"
                      if command.name in OPT_IN_COMMANDS else "")
            raise CommandError(
                f"command {command.name} is not allowed on this device: add it to "
                f"mqtt.commands_allowed{opt_in}",
                command.request_id, command.name,
            )
        if command.name not in self._handlers:
            raise CommandError(
                f"command {command.name} is not available in this daemon",
                command.request_id, command.name,
            )
        return command

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            command = job.command
            try:
                result = job.handler(command)
            except EdgeMonitorError as exc:
                log.warning("MQTT command %s (%s) failed: %s",
                            command.name, command.request_id, exc)
                reply = CommandReply(command.request_id, command.name, False, error=str(exc))
            except Exception as exc:  # a handler bug must not kill the command worker
                log.exception("MQTT command %s (%s) crashed", command.name, command.request_id)
                reply = CommandReply(command.request_id, command.name, False,
                                     error=f"internal error: {type(exc).__name__}: {exc}")
            else:
                log.info("MQTT command %s (%s) done", command.name, command.request_id)
                reply = CommandReply(command.request_id, command.name, True, result=result or {})
                try:
                    reply.to_json()
                except (TypeError, ValueError) as exc:
                    log.error("MQTT command %s returned a result that is not JSON: %s",
                              command.name, exc)
                    reply = CommandReply(command.request_id, command.name, False,
                                         error=f"internal error: result is not JSON ({exc})")
            try:
                job.reply(reply)
            except Exception:  # the reply path failing must not stop later commands
                log.exception("could not publish the reply to %s (%s)",
                              command.name, command.request_id)
