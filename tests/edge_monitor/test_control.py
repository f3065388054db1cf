"""The control socket: request validation, replies and exit codes, and `edge-monitor enroll`
against a running daemon (replay source) and without one (offline, into the bank store)."""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_support import DaemonThread, small_config, write_config, write_flac
from enroll_support import (
    GATE,
    NEW_SPEC,
    OLD_SPEC,
    looping_replay,
    machine_audio,
    make_detector,
    prelearn,
    write_clips,
)

from edge_monitor.cli import main
from edge_monitor.config.loader import load_config
from edge_monitor.core.errors import BadInputError
from edge_monitor.daemon import plan_machines
from edge_monitor.enrolment.bank_store import BankStore
from edge_monitor.enrolment.control import (
    MAX_CLIENTS,
    MAX_ERROR_CHARS,
    ControlError,
    ControlServer,
    daemon_running,
    request,
    socket_path,
    validate_request,
)
from edge_monitor.enrolment.manager import EnrolmentManager


def cli_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`edge-monitor enroll ARGS` as its own process (slow to start: use once per test)."""
    return subprocess.run([sys.executable, "-m", "edge_monitor.cli", "enroll", *args],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def cli(capsys):
    """`edge-monitor enroll ARGS` in this process: the CLI's code path, without start-up."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        rc = main(["enroll", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out, err)
    return run


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([], "JSON object"),
        ({"command": "enroll/explode"}, "unknown command"),
        ({"command": "enroll/start", "machine": "pump"}, "needs"),
        ({"command": "enroll/start", "machine": "pump", "seconds": -1}, "seconds"),
        ({"command": "enroll/start", "machine": "pump", "seconds": True}, "seconds"),
        ({"command": "enroll/commit", "machine": "a/b"}, "MQTT topic"),
        ({"command": "enroll/files", "machine": "pump", "files": ["rel.flac"]}, "absolute"),
        ({"command": "enroll/cancel", "machine": "pump", "force": 1}, "does not take"),
    ],
)
def test_bad_requests_are_refused(body, words, tmp_path):
    with pytest.raises(BadInputError, match=words):
        validate_request(body, tmp_path)


def test_without_an_import_dir_no_request_names_files(tmp_path):
    (tmp_path / "a.flac").write_bytes(b"x")
    body = {"command": "enroll/files", "machine": "pump", "files": [str(tmp_path / "a.flac")]}
    with pytest.raises(BadInputError, match="not accepted here: it reads files"):
        validate_request(body)
    assert validate_request(body, tmp_path)[1]["files"] == [str(tmp_path / "a.flac")]


def test_enroll_files_reads_only_regular_files_inside_the_import_dir(tmp_path):
    """Issue 12: `enroll/files` opened any absolute path the daemon could read."""
    inbox = tmp_path / "state" / "enrol-inbox"
    inbox.mkdir(parents=True)
    clip = inbox / "ok.flac"
    clip.write_bytes(b"x")
    (inbox / "sub").mkdir()
    (inbox / "out.flac").symlink_to("/etc/passwd")
    (inbox / "gone.flac").symlink_to("/nonexistent/secret.flac")
    (inbox / "loop").symlink_to(inbox / "loop")
    (tmp_path / "outside.flac").write_bytes(b"x")

    def files(*names: str) -> list[str]:
        return validate_request({"command": "enroll/files", "machine": "pump",
                                 "files": list(names)}, inbox)[1]["files"]

    assert files(str(clip), f"{inbox}/sub/../ok.flac") == [str(clip), str(clip)]
    refusals = {
        "/etc/passwd": "is outside the import directory",
        f"{inbox}/../outside.flac": "is outside the import directory",
        str(inbox / "out.flac"): "is outside the import directory",  # a link out
        str(inbox / "gone.flac"): "is outside the import directory",  # existence not told
        str(inbox / "absent.flac"): "cannot be read (No such file or directory)",
        str(inbox / "loop"): "cannot be read",
        str(inbox / "sub"): "is not a regular file",
        f"{inbox}/a\x00b": "NUL byte",
        "/" + "d" * 5000: "over the limit of 4096",
    }
    for name, words in refusals.items():
        with pytest.raises(BadInputError, match=re.escape(words)) as caught:
            files(str(clip), name)
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_round_trip_exit_codes_and_stale_socket(tmp_path):
    detector = make_detector(seconds=12.0)
    detectors = {"pump": detector}
    manager = EnrolmentManager(tmp_path, detectors.get, detectors.__setitem__, gate=GATE)
    path = socket_path(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody serves: what a SIGKILLed daemon leaves
    assert not daemon_running(path)
    server = ControlServer(path, manager.dispatch)
    server.start()
    try:
        assert daemon_running(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        with pytest.raises(BadInputError, match="another daemon already serves"):
            ControlServer(path, manager.dispatch).start()
        assert request(path, {"command": "enroll/status"}) == {"active": None, "last": None}
        with pytest.raises(ControlError, match="unknown command") as caught:
            request(path, {"command": "nope"})
        assert caught.value.exit_code == 2
        with pytest.raises(ControlError, match="live recording needs") as caught:
            request(path, {"command": "enroll/start", "machine": "pump", "seconds": 5})
        assert caught.value.exit_code == 2
        outside = write_clips(tmp_path / "clips", NEW_SPEC, 5)
        audited = len(manager.audit.read())
        with pytest.raises(ControlError, match="outside the import directory") as caught:
            request(path, {"command": "enroll/files", "machine": "pump",
                           "files": [str(c) for c in outside]})
        assert caught.value.exit_code == 2 and len(manager.audit.read()) == audited
        clips = write_clips(tmp_path / "enrol-inbox", NEW_SPEC, 5)
        result = request(path, {"command": "enroll/files", "machine": "pump",
                                "files": [str(c) for c in clips]})
        assert result["new_versions"] == {"logmel-stats": detectors["pump"].bank_version}
        record = manager.audit.read()[-1]
        assert record["who"].startswith("local:") and record["outcome"] == "done"
        # Garbage on the wire gets an error line, not a dead server.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(str(path))
            raw.sendall(b"\xff\xfe not json\n")
            reply = json.loads(raw.makefile().readline())
        assert reply == {"ok": False, "error": reply["error"], "exit_code": 2}
        assert request(path, {"command": "enroll/rollback", "machine": "pump"})["new_versions"]
    finally:
        server.stop()
    assert not path.exists()


@pytest.fixture
def replay_daemon(tmp_path):
    """`edge-monitor run` (on a thread) replaying the old machine sound in real time, looping;
    its control socket is up once it has started."""
    path, _ = looping_replay(tmp_path)
    daemon = DaemonThread(path)
    try:
        daemon.wait_until(lambda s: s["machines"]["pump"]["bank_version"] is not None,
                          "a detector")
        daemon.wait_until(lambda s: daemon_running(socket_path(tmp_path / "state")),
                          "the control socket")
        yield daemon, path
    finally:
        assert daemon.stop() == 0
    assert not socket_path(tmp_path / "state").exists()


def test_cli_enrols_files_through_the_running_daemon(tmp_path, replay_daemon, cli):
    daemon, config_path = replay_daemon
    before = daemon.daemon.processor.snapshot()["machines"]["pump"]["bank_version"]
    clips = write_clips(tmp_path / "new", NEW_SPEC, 22)  # the daemon's gate wants 20 s
    done = cli("-c", str(config_path), "--machine", "pump", *map(str, clips))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["old_versions"] == {"logmel-stats": before}
    # The files went through a copy in the import directory (what a sandboxed service can
    # read, and the only place the socket lets it read from).
    assert not any((tmp_path / "state" / "enrol-inbox").iterdir())
    # Swapped into the running daemon, no restart.
    snap = daemon.wait_until(
        lambda s: s["machines"]["pump"]["bank_version"] == result["new_versions"]["logmel-stats"],
        "the enrolled bank in service")
    assert snap["machines"]["pump"]["threshold"] is not None

    busy = cli("-c", str(config_path), "--machine", "pump", "--cancel")
    assert busy.returncode == 2 and "no enrolment of pump is running" in busy.stderr
    status = cli("-c", str(config_path), "--status")
    assert json.loads(status.stdout)["last"]["state"] == "done"

    back = cli("-c", str(config_path), "--machine", "pump", "--rollback")
    assert back.returncode == 0, back.stderr
    daemon.wait_until(lambda s: s["machines"]["pump"]["bank_version"] == before, "rollback")


def test_cli_offline_enrols_into_the_store_for_the_next_start(tmp_path, cli):
    clip = write_flac(tmp_path / "old.flac", machine_audio(OLD_SPEC, 2.0))
    config = small_config(tmp_path, [clip], learning={"seconds": 10, "scoring": "dads"})
    config_path = write_config(tmp_path, config)
    loaded = load_config(config_path)
    clips = write_clips(tmp_path / "new", NEW_SPEC, 22)  # the default gate wants 20 s
    early = cli("-c", str(config_path), "--machine", "pump", *map(str, clips))
    assert early.returncode == 2 and "has no bank yet" in early.stderr
    prelearn(config_path)
    learned = plan_machines(loaded).machines[0].detector
    missing = cli("-c", str(config_path), "--machine", "pump", str(tmp_path / "x.flac"))
    assert missing.returncode == 2 and "no such audio file" in missing.stderr

    done = cli_process("-c", str(config_path), "--machine", "pump", *map(str, clips))
    assert done.returncode == 0, done.stderr
    assert "when it starts or reloads" in done.stderr
    new_versions = json.loads(done.stdout)["new_versions"]
    # What the daemon builds at start (the learned bank) plus the store: the enrolled bank.
    served = BankStore(loaded.state_dir, "pump").apply(plan_machines(loaded).machines[0].detector)
    assert {m.name: m.bank.version for m in served.members} == new_versions
    assert served.bank_version != learned.bank_version

    for args, words in (
        (("--seconds", "30"), "needs the running daemon"),
        (("--cancel",), "nothing to cancel"),
        ((), "give exactly one of"),
        (("--rollback", *map(str, clips)), "give exactly one of"),
    ):
        refused = cli("-c", str(config_path), "--machine", "pump", *args)
        assert refused.returncode == 2 and words in refused.stderr, refused.stderr
    wrong = cli("-c", str(config_path), "--machine", "fan", "--rollback")
    assert wrong.returncode == 2 and "'fan' is not in" in wrong.stderr

    back = cli("-c", str(config_path), "--machine", "pump", "--rollback")
    assert back.returncode == 0, back.stderr
    served = BankStore(loaded.state_dir, "pump").apply(plan_machines(loaded).machines[0].detector)
    assert served.bank_version == learned.bank_version
    history = json.loads(cli("-c", str(config_path), "--status").stdout)["history"]["pump"]
    assert [e["action"] for e in history] == ["learn", "commit", "rollback"]  # one store
    audit = [json.loads(line) for line in
             (Path(loaded.state_dir) / "enrolment-audit.jsonl").read_text().splitlines()]
    assert [a["event"] for a in audit][-2:] == ["enrolment", "rollback"]
    assert audit[-2]["who"].startswith("cli:")


def test_socket_path_too_long_is_a_clear_error(tmp_path):
    deep = tmp_path / ("d" * 120)
    with pytest.raises(BadInputError, match="shorter state_dir"):
        ControlServer(socket_path(deep), lambda *a: {}).start()
    assert not daemon_running(tmp_path / "control.sock")



def _raw(path: Path, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(str(path))
        raw.sendall(payload)
        return json.loads(raw.makefile().readline())


def test_no_request_can_kill_the_server(tmp_path):
    """A handler's bug, a reply that is not JSON, deep nesting, a line past the limit and a
    flood of idle clients each get one error line; the server serves the next request."""
    def handler(name, args, requester):
        if name == "enroll/commit":
            raise KeyError("a bug")
        if name == "enroll/cancel":
            return {"threshold": float("nan")}
        return {"active": None}

    path = socket_path(tmp_path)
    server = ControlServer(path, handler)
    server.start()
    try:
        bug = _raw(path, b'{"command": "enroll/commit", "machine": "pump"}\n')
        assert bug["exit_code"] == 1 and bug["error"].startswith("internal error: KeyError")
        nan = _raw(path, b'{"command": "enroll/cancel", "machine": "pump"}\n')
        assert "cannot be encoded" in nan["error"]
        deep = _raw(path, b"[" * 20_000 + b"\n")
        assert "nested too deeply" in deep["error"] and deep["exit_code"] == 2
        huge = _raw(path, b'{"command": "' + b"x" * 100_000 + b'"}\n')
        assert "request longer than" in huge["error"]
        # Found by tools/fuzz.py: a validator quoting a 10 000-character machine name in
        # full; the reply is cut to one short line.
        long_name = _raw(path, json.dumps({"command": "enroll/commit",
                                           "machine": "\U0001f642" * 10_000}).encode() + b"\n")
        assert long_name["exit_code"] == 2 and len(long_name["error"]) <= MAX_ERROR_CHARS
        idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(MAX_CLIENTS)]
        for client in idle:
            client.connect(str(path))
        try:
            # Every request thread is taken by a client that sends nothing: the next one is
            # told at once instead of waiting behind them.
            for _ in range(100):  # until the server has accepted all of them
                busy = _raw(path, b'{"command": "enroll/status"}\n')
                if not busy["ok"]:
                    break
                time.sleep(0.05)
            assert busy["error"].startswith("busy:") and busy["exit_code"] == 1
        finally:
            for client in idle:
                client.close()
        for _ in range(100):  # until the idle clients' threads have seen them go
            try:
                assert request(path, {"command": "enroll/status"}) == {"active": None}
                break
            except ControlError:
                time.sleep(0.05)
        else:
            raise AssertionError("the server never served again after the idle clients left")
        assert server.alive
    finally:
        server.stop()
