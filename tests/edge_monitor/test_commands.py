"""Command validation and the router: bad commands get an error reply and run nothing."""

from __future__ import annotations

import json
import threading
import time

import pytest

from edge_monitor.core.errors import BadInputError, EdgeMonitorError
from edge_monitor.mqtt.commands import (
    COMMAND_FIELDS,
    MAX_PAYLOAD_BYTES,
    CommandError,
    CommandRouter,
    nesting_depth,
    parse_command,
)
from edge_monitor.mqtt.topics import COMMAND_NAMES, CommandReply

WAIT_S = 15.0


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_valid_enroll_start_is_parsed():
    command = parse_command("enroll/start", body(request_id="r1", machine="pump", seconds=60))
    assert (command.name, command.request_id) == ("enroll/start", "r1")
    assert command.args == {"machine": "pump", "seconds": 60.0}


@pytest.mark.parametrize(
    ("name", "payload", "request_id", "fragment"),
    [
        ("status", b"{not json", None, "not JSON"),
        ("status", b"\xff\xfe", None, "not JSON"),
        ("status", b"[1, 2]", None, "JSON object"),
        ("status", body(request_id="r", pad="x" * MAX_PAYLOAD_BYTES), None, "byte limit"),
        ("explode", body(request_id="r2"), "r2", "unknown command"),
        ("status", body(), None, "request_id"),
        ("status", body(request_id=""), None, "request_id"),
        ("status", body(request_id=7), None, "request_id"),
        ("status", body(request_id="r3", extra=1), "r3", "unknown field(s) 'extra'"),
        ("enroll/start", body(request_id="r4", machine="pump"), "r4", "'seconds'"),
        ("enroll/start", body(request_id="r5", machine="pump", seconds=2), "r5", "out of range"),
        ("enroll/start", body(request_id="r6", machine="pump", seconds="60"), "r6", "number"),
        ("enroll/start", body(request_id="r7", machine="pump", seconds=True), "r7", "number"),
        ("enroll/commit", body(request_id="r8", machine="a/b"), "r8", "machine"),
        ("enroll/cancel", body(request_id="r9", machine=3), "r9", "machine"),
        ("enroll/status", body(request_id="r10", machine="pump"), "r10", "unknown field"),
        ("status", b"[" * 1500 + b"]" * 1500, None, "nests 1500 levels"),
        # found by the fuzzer: an unclosed "[" in the host made urlsplit raise ValueError
        ("bundle/install", body(request_id="r12", url="https://a[b", sha256="0" * 64,
                                size_bytes=1), "r12", "is not a valid URL"),
        ("status", b'{"request_id": "r11", "a": ' + b"{" * 9 + b"}" * 10, None, "nests 10"),
    ],
)
def test_bad_payloads_name_the_problem(name, payload, request_id, fragment):
    with pytest.raises(CommandError) as caught:
        parse_command(name, payload)
    assert fragment in str(caught.value)
    assert caught.value.request_id == request_id
    assert isinstance(caught.value, BadInputError)


class Recorder:
    """Collects replies and handler calls (real callables, run by the real router)."""

    def __init__(self) -> None:
        self.replies: list[CommandReply] = []
        self.calls: list[tuple[str, str]] = []
        self.done = threading.Event()

    def reply(self, reply: CommandReply) -> None:
        self.replies.append(reply)
        self.done.set()

    def handler(self, result=None, error: Exception | None = None):
        def handle(command):
            self.calls.append((command.name, threading.current_thread().name))
            if error is not None:
                raise error
            return result
        return handle


@pytest.fixture
def router():
    routers: list[CommandRouter] = []

    def make(**options) -> CommandRouter:
        r = CommandRouter(**options)
        r.start()
        routers.append(r)
        return r

    yield make
    for r in routers:
        r.stop()


def test_handler_runs_on_the_worker_and_its_result_is_replied(router):
    rec = Recorder()
    r = router()
    r.register("enroll/start", rec.handler({"enrolling": "pump"}))
    r.submit("enroll/start", body(request_id="a", machine="pump", seconds=30), rec.reply)
    assert rec.done.wait(WAIT_S)
    assert rec.calls == [("enroll/start", "mqtt-commands")]
    assert rec.replies == [CommandReply("a", "enroll/start", True, result={"enrolling": "pump"})]


def test_handler_errors_become_error_replies(router):
    rec = Recorder()
    r = router()
    r.register("reload", rec.handler(error=EdgeMonitorError("bundle /x is missing")))
    r.submit("reload", body(request_id="b"), rec.reply)
    assert rec.done.wait(WAIT_S)
    assert rec.replies == [CommandReply("b", "reload", False, error="bundle /x is missing")]


def test_disabled_and_not_allowed_commands_are_refused(router):
    rec = Recorder()
    off = router(enabled=False)
    off.register("status", rec.handler({}))
    off.submit("status", body(request_id="c"), rec.reply)
    limited = router(allowed=("status",))
    limited.register("enroll/rollback", rec.handler({}))
    limited.submit("enroll/rollback", body(request_id="d", machine="pump"), rec.reply)
    unhandled = router()
    unhandled.submit("status", body(request_id="e"), rec.reply)
    assert [(x.request_id, x.ok) for x in rec.replies] == [("c", False), ("d", False),
                                                           ("e", False)]
    assert "commands_enabled" in rec.replies[0].error
    assert "commands_allowed" in rec.replies[1].error
    assert "not available" in rec.replies[2].error
    assert rec.calls == []


def test_every_command_of_the_topic_tree_has_its_fields_and_no_other():
    assert list(COMMAND_FIELDS) == list(COMMAND_NAMES)


def test_a_full_queue_answers_busy(router):
    rec = Recorder()
    release = threading.Event()
    started = threading.Event()

    def slow(command):
        started.set()
        release.wait(WAIT_S)
        return {}

    r = router(queue_size=1)
    r.register("status", slow)
    r.submit("status", body(request_id="1"), rec.reply)
    assert started.wait(WAIT_S)  # the worker holds the first; the queue holds the second
    r.submit("status", body(request_id="2"), rec.reply)
    r.submit("status", body(request_id="3"), rec.reply)
    assert [(x.request_id, x.ok) for x in rec.replies] == [("3", False)]
    assert "busy" in rec.replies[0].error
    release.set()


def test_a_stopping_router_finishes_the_running_handler_and_refuses_new_commands(router):
    rec = Recorder()
    release = threading.Event()
    r = router()
    r.register("reload", lambda command: release.wait(WAIT_S) and {"reloaded": True})
    r.register("status", rec.handler({}))
    r.submit("reload", body(request_id="f"), rec.reply)
    r.stop(wait=False)  # returns while the handler still runs
    r.submit("status", body(request_id="g"), rec.reply)
    assert [(x.request_id, x.ok) for x in rec.replies] == [("g", False)]
    assert "reloading or stopping" in rec.replies[0].error
    release.set()
    deadline = time.monotonic() + WAIT_S
    while len(rec.replies) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.replies[1] == CommandReply("f", "reload", True, result={"reloaded": True})
    assert rec.calls == []


def test_brackets_inside_strings_do_not_count_as_nesting():
    command = parse_command("status", body(request_id='[[[[[[[[[["{{{{{{{{{{\\'))
    assert command.request_id == '[[[[[[[[[["{{{{{{{{{{\\'
    assert nesting_depth('{"a": [[1]], "b": "]]]]"}') == 3


def test_errors_are_one_short_line_whatever_the_payload_holds():
    # found by the fuzzer: field names with newlines and huge values were quoted whole
    with pytest.raises(CommandError) as caught:
        parse_command("status", body(request_id="r1", **{"a\nb": 1}))
    assert "\n" not in str(caught.value) and "'a\\nb'" in str(caught.value)
    with pytest.raises(CommandError) as caught:
        parse_command("status", body(request_id=["x" * 3000]))
    assert len(str(caught.value)) < 200 and "request_id must be" in str(caught.value)
