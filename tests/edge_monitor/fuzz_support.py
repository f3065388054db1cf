"""Hypothesis strategies and contracts for the fuzzed surfaces, shared by test_fuzz.py
(the bounded CI profile) and tools/fuzz.py (the long profile, with counts).

Contracts: a config goes through `edge-monitor check`'s own code and either passes or
raises one ConfigError-class error (exit 2) whose lines are short and say what is wrong;
a command payload goes through the command parser and either parses or raises
CommandError with one line that fits in a `cmd/result` reply. Anything else (another
exception, a hang) is a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import operator
import os
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from edge_monitor.cli import check as check_command
from edge_monitor.config.sections import Config
from edge_monitor.core.errors import EdgeMonitorError
from edge_monitor.mqtt.commands import COMMAND_FIELDS, Command, CommandError, parse_command
from edge_monitor.mqtt.topics import COMMAND_NAMES, CommandReply

MAX_ERROR_LINE_CHARS = 600  # one line a person reads: a value is shown cut short

# CI is derandomized (the same inputs every run, so a red build is never luck); the long
# profile draws new inputs each run to find what CI does not.
settings.register_profile(
    "ci", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "30")), deadline=None,
    database=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long", max_examples=5000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class ContractBroken(AssertionError):
    """An input got an answer outside the contract (a traceback, a wrong exit, a bad line)."""


# Values ---------------------------------------------------------------------------------

odd_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
huge_text = st.builds(operator.mul, st.sampled_from(["x", "é", "\u202e", "/", "\x00", "🙂", "["]),
                      st.integers(1_000, 100_000))
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e9, 1e300, -1e-300, "", "0", "yes", "null", "~", "/", "/etc/passwd",
                     "/dev/zero", "../..", "a\x00b", "USB Mic", "status", "rm"]),
    odd_text, huge_text,
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)


def _section(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping of some of `model`'s keys (nested sections recursed into), odd values, and
    now and then a key it does not have."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        inner = _model_of(info.annotation)
        if inner is not None and inner is not model:
            sub = _section(inner)
            fields[name] = st.one_of(sub, st.lists(sub, max_size=3), values)
        else:
            fields[name] = values
    known = st.fixed_dictionaries({}, optional=fields)
    extra = st.dictionaries(odd_text, values, max_size=2)
    return st.builds(lambda a, b: {**b, **a}, known, extra)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


config_mappings = _section(Config)
yaml_noise = st.text(
    st.one_of(st.sampled_from(list("[]{}:-&*!|>'\"#%@`,? \n\t\\.0aé")), st.characters()),
    max_size=300,
)


EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "edge-monitor.yaml"


def _leaves(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(data, dict):
        return [leaf for key, value in data.items() for leaf in _leaves(value, (*prefix, key))]
    if isinstance(data, list) and data:
        return [leaf for i, value in enumerate(data) for leaf in _leaves(value, (*prefix, i))]
    return [prefix]


def _like(value: Any) -> st.SearchStrategy[Any]:
    """Values of the same type as `value`: these pass type checks and probe the bounds."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-(2**40), 2**40) | st.integers(-10, 10)
    if isinstance(value, float):
        return st.floats(allow_nan=True, allow_infinity=True) | st.floats(-10, 10)
    if isinstance(value, str):
        return odd_text | huge_text
    return values


@st.composite
def near_config_texts(draw: st.DrawFn) -> str:
    """The shipped example config (valid) with one to three keys given hostile values, so
    cross-field rules and what `check` builds after loading are reached too."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    leaves = _leaves(data)
    for _ in range(draw(st.integers(1, 3))):
        *parents, last = draw(st.sampled_from(leaves))
        node = data
        for part in parents:
            node = node[part]
        node[last] = draw(st.one_of(values, _like(node[last])))
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def config_texts() -> st.SearchStrategy[str]:
    """Structure and values: schema-shaped mappings with hostile values, random top-level
    values, and YAML-ish noise."""
    dumped = st.one_of(config_mappings, values).map(
        lambda data: yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    )
    return st.one_of(dumped, yaml_noise)


# Config contract ---------------------------------------------------------------------------

def check_config_text(text: str, directory: Path) -> str:
    """Run `check`'s own code on `text` written to a file; 'ok' or 'refused', else
    ContractBroken."""
    path = directory / "edge.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")  # lone surrogates too
    args = argparse.Namespace(config=str(path))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            check_command.run(args)
    except EdgeMonitorError as exc:
        message = str(exc)
        lines = message.splitlines()
        if exc.exit_code != 2:
            raise ContractBroken(f"exit code {exc.exit_code}, not 2: {message[:300]}") from exc
        longest = max(lines, key=len, default="")
        if not lines or len(longest) > MAX_ERROR_LINE_CHARS:
            raise ContractBroken(f"error lines empty or too long ({len(longest)} characters): "
                                 f"{longest[:200]!r}...{longest[-200:]!r}") from exc
        return "refused"
    except Exception as exc:
        raise ContractBroken(f"traceback: {type(exc).__name__}: {str(exc)[:300]}") from exc
    return "ok"


# Command payloads ---------------------------------------------------------------------------

command_names = st.one_of(st.sampled_from(COMMAND_NAMES), odd_text,
                          st.sampled_from(["", "enroll", "enroll/", "../status", "status/x"]))
_field_names = sorted({"request_id", *(f for fs in COMMAND_FIELDS.values() for f in fs)})
command_bodies = st.builds(
    lambda known, extra: {**extra, **known},
    st.fixed_dictionaries({}, optional={name: values for name in _field_names}),
    st.dictionaries(odd_text, values, max_size=2),
)
# Plausible values per field, so that many payloads are nearly right and the checks past
# the first one are reached too.
_plausible = {
    "request_id": st.text(min_size=1, max_size=130),
    "machine": st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), odd_text),
    "seconds": st.one_of(st.floats(0, 4000), st.integers(-10, 4000)),
    "url": st.one_of(st.just("https://example.org/b.tar"), st.just("file:///tmp/b.tar"),
                     odd_text.map(lambda t: "https://" + t), odd_text),
    "sha256": st.one_of(st.from_regex(r"[0-9a-f]{64}", fullmatch=True), odd_text),
    "size_bytes": st.one_of(st.integers(-5, 2**40), values),
    "event_id": st.one_of(st.uuids().map(str), odd_text, values),
}


@st.composite
def _nearly_right(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(COMMAND_FIELDS)))
    wanted = ["request_id", *COMMAND_FIELDS[name]]
    body = {field: draw(_plausible.get(field, values)) for field in wanted
            if draw(st.integers(0, 9)) > 0}  # now and then one is missing
    if draw(st.integers(0, 9)) == 0:
        body[draw(odd_text)] = draw(values)
    return name, body


nearly_right_commands = _nearly_right().map(
    lambda pair: (pair[0], json.dumps(pair[1]).encode())
)


def _nested(opening: str, depth: int, middle: str) -> str:
    closing = opening.translate(str.maketrans("[{", "]}"))
    return opening * depth + middle + closing[::-1] * depth


def _json_bytes(body: Any, ascii_only: bool) -> bytes:
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


command_payloads = st.one_of(
    st.builds(_json_bytes, command_bodies, st.booleans()),
    st.builds(_json_bytes, values, st.booleans()),
    st.binary(max_size=5000),
    st.builds(lambda o, n, m: _nested(o, n, m).encode(), st.sampled_from(["[", '{"a":']),
              st.integers(0, 3000), st.sampled_from(["", "1", '"x"', "[]"])),
    yaml_noise.map(lambda text: text.encode("utf-8", "surrogatepass")),
)


def check_command_payload(name: str, payload: bytes) -> str:
    """Parse one command; 'ok' or 'refused', else ContractBroken."""
    try:
        command = parse_command(name, payload)
    except CommandError as exc:
        message = str(exc)
        if not message or "\n" in message or len(message) > MAX_ERROR_LINE_CHARS:
            raise ContractBroken(f"error is not one short line: {message[:300]!r}") from exc
        try:
            CommandReply(exc.request_id, exc.command, False, error=message).to_json()
        except Exception as reply_exc:
            raise ContractBroken(f"error reply cannot be sent: {reply_exc}") from reply_exc
        return "refused"
    except Exception as exc:
        raise ContractBroken(f"traceback: {type(exc).__name__}: {str(exc)[:300]}") from exc
    if not isinstance(command, Command) or command.name not in COMMAND_FIELDS:
        raise ContractBroken(f"parsed into something that is not a known command: {command!r}")
    return "ok"


# Control-socket requests -------------------------------------------------------------------

REPLY_TIMEOUT_S = 30.0  # far above any reply; past it the input counts as a hang


class ControlTarget:
    """A real control server (edge_monitor.enrolment.control) in front of a real enrolment
    manager and detector, in `directory`, with hostile files in its import directory: a
    garbage "recording", an empty one, a link out to /etc/passwd, a FIFO, a folder. No
    request can change what it serves: it has no live input and no recording to enrol."""

    def __init__(self, directory: Path) -> None:
        from enroll_support import GATE, make_detector

        from edge_monitor.config.sections import IMPORT_DIR_NAME
        from edge_monitor.enrolment.control import ControlServer, socket_path
        from edge_monitor.enrolment.manager import EnrolmentManager

        self.state_dir = directory / "state"
        self.inbox = self.state_dir / IMPORT_DIR_NAME
        self.inbox.mkdir(parents=True)
        (self.inbox / "garbage.flac").write_bytes(os.urandom(4096))
        (self.inbox / "empty.wav").write_bytes(b"")
        (self.inbox / "passwd.wav").symlink_to("/etc/passwd")
        os.mkfifo(self.inbox / "fifo.wav")
        (self.inbox / "folder").mkdir()
        self.detectors = {"pump": make_detector(seconds=6.0)}
        self.manager = EnrolmentManager(self.state_dir, self.detectors.get,
                                        self.detectors.__setitem__, gate=GATE)
        self.socket = socket_path(self.state_dir)
        self.server = ControlServer(self.socket, self.manager.dispatch, self.inbox)
        self.server.start()

    def paths(self) -> list[str]:
        inbox = str(self.inbox)
        return [f"{inbox}/garbage.flac", f"{inbox}/empty.wav", f"{inbox}/passwd.wav",
                f"{inbox}/fifo.wav", f"{inbox}/folder", f"{inbox}/absent.flac",
                f"{inbox}/../control.sock", f"{inbox}/folder/../../enrolment-audit.jsonl",
                "/etc/passwd", "/dev/zero", "/proc/self/environ", str(self.socket), "rel.wav",
                f"{inbox}/a\x00b.wav", "/" + "d" * 5000, inbox]

    def snapshot(self) -> tuple[Any, ...]:
        """What serves and what is stored: must not change."""
        pointer = self.state_dir / "banks" / "pump" / "current.json"
        return (self.detectors["pump"].bank_version,
                pointer.read_bytes() if pointer.exists() else None,
                self.manager.status()["active"])

    def send(self, payload: bytes) -> bytes:
        """One connection: send `payload`, close the sending side, read the reply."""
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(REPLY_TIMEOUT_S)
            sock.connect(str(self.socket))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            reply = b""
            while True:
                try:
                    piece = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not piece:
                    break
                reply += piece
            return reply

    def close(self) -> None:
        self.server.stop()


def _request_bodies(target_paths: list[str]) -> st.SearchStrategy[Any]:
    from edge_monitor.enrolment.control import COMMAND_FIELDS as CONTROL_FIELDS

    paths = st.one_of(st.sampled_from(target_paths), odd_text, huge_text)
    plausible = {
        "machine": st.one_of(st.just("pump"), st.just("press"), odd_text, values),
        "seconds": st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                             st.integers(-10, 10_000), values),
        "files": st.one_of(st.lists(paths, min_size=1, max_size=4), values,
                           st.lists(values, max_size=3)),
        "event_id": st.one_of(st.uuids().map(str), odd_text, values),
    }

    @st.composite
    def body(draw: st.DrawFn) -> dict[str, Any]:
        name = draw(st.one_of(st.sampled_from(sorted(CONTROL_FIELDS)), values))
        fields = CONTROL_FIELDS.get(name, ()) if isinstance(name, str) else ()
        out: dict[str, Any] = {"command": name} if draw(st.integers(0, 9)) else {}
        for field_name in fields:
            if draw(st.integers(0, 9)):
                out[field_name] = draw(plausible.get(field_name, values))
        if not draw(st.integers(0, 7)):
            out[draw(odd_text)] = draw(values)
        return out

    return body()


def control_payloads(target_paths: list[str]) -> st.SearchStrategy[bytes]:
    """Requests as bytes on the wire: near-right JSON requests with hostile paths, any JSON,
    random bytes, deep nesting, lines past the size limit, and no newline at all."""
    line = st.builds(lambda body, ascii_only: _json_bytes(body, ascii_only) + b"\n",
                     _request_bodies(target_paths), st.booleans())
    return st.one_of(
        line,
        line.map(lambda data: data[:-1]),  # no newline: the request ends at EOF
        st.builds(lambda body: _json_bytes(body, False) + b"\n", values),
        st.binary(max_size=3000),
        st.builds(lambda o, n: _nested(o, n, "1").encode() + b"\n",
                  st.sampled_from(["[", '{"a":']), st.integers(0, 20_000)),
        st.builds(lambda n: b'{"command": "enroll/files", "machine": "pump", "files": ["/'
                  + b"a" * n + b'"]}\n', st.integers(60_000, 200_000)),
        yaml_noise.map(lambda text: text.encode("utf-8", "surrogatepass") + b"\n"),
    )


def check_control_request(target: ControlTarget, payload: bytes) -> str:
    """Send one request to the running server; 'ok' or 'refused', else ContractBroken: the
    reply must be one JSON line (an error: one short line with an exit code), the server
    thread alive and answering, and what it serves unchanged."""
    before = target.snapshot()
    try:
        raw = target.send(payload)
    except TimeoutError as exc:
        raise ContractBroken(f"hang: no reply within {REPLY_TIMEOUT_S:g} s") from exc
    lines = raw.split(b"\n")
    if len(lines) != 2 or lines[1] != b"":
        raise ContractBroken(f"reply is not one line: {raw[:300]!r}")
    try:
        reply = json.loads(lines[0])
    except ValueError as exc:
        raise ContractBroken(f"reply is not JSON: {raw[:300]!r}") from exc
    if not target.server.alive:
        raise ContractBroken("dead thread: the control server stopped accepting")
    if target.snapshot() != before:
        raise ContractBroken(f"changed state: {before!r} -> {target.snapshot()!r}")
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ContractBroken(f"reply is not {{'ok': ...}}: {raw[:300]!r}")
    if reply["ok"]:
        return "ok"
    error = reply.get("error")
    if not isinstance(error, str) or not error or "\n" in error or (
        len(error) > MAX_ERROR_LINE_CHARS
    ):
        raise ContractBroken(f"error is not one short line: {str(error)[:300]!r}")
    if reply.get("exit_code") not in (1, 2):
        raise ContractBroken(f"exit code {reply.get('exit_code')!r} in {raw[:300]!r}")
    if error.startswith("internal error"):
        raise ContractBroken(f"traceback: {error[:300]}")
    return "refused"
