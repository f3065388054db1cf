"""A crash (SIGKILL) in the middle of an enrolment leaves the old bank in service.

Three moments: the new bank versions are on disk but the pointer has not moved (the worst
case, made exact by stopping the process there); kills at arbitrary moments of repeated
commits; and the real daemon (`edge-monitor run` as a process) killed while it records, then
started again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from enroll_support import GATE, NEW_SPEC, looping_replay, make_detector, write_clips

from edge_monitor.config.loader import load_config
from edge_monitor.core.bank import load_bank
from edge_monitor.daemon import plan_machines
from edge_monitor.enrolment.bank_store import BankStore, StoreLock
from edge_monitor.enrolment.control import daemon_running, request, socket_path
from edge_monitor.enrolment.manager import EnrolmentManager

HERE = Path(__file__).resolve().parent
OTHER_SPEC = dataclasses.replace(NEW_SPEC, seed=99)  # another recording of the new sound
WAIT_S = 60.0

# Enrols clip sets in a loop in its own process. With "pause", it stops itself (SIGSTOP)
# after the new bank versions are written and before the pointer moves.
WORKER = """
import os, signal, sys
sys.path.insert(0, {here!r})
from enroll_support import GATE, NEW_SPEC, make_detector, write_clips
from pathlib import Path
from edge_monitor.enrolment import bank_store
from edge_monitor.enrolment.bank_store import BankStore
from edge_monitor.enrolment.manager import EnrolmentManager

state, mode = Path(sys.argv[1]), sys.argv[2]
if mode == "pause":
    write_pointer = bank_store.BankStore._write_pointer
    def paused(self, pointer, event):
        if event.get("action") == "commit":
            print("banks written", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        return write_pointer(self, pointer, event)
    bank_store.BankStore._write_pointer = paused
detectors = {{"pump": BankStore(state, "pump").apply(make_detector(seconds=12.0))}}
manager = EnrolmentManager(state, detectors.get, detectors.__setitem__, gate=GATE)
for round_ in range(1000):
    # A new recording each round: one enrolled before is dropped as duplicate windows.
    clips = write_clips(state.parent / f"worker-clips-{{round_}}",
                        dataclasses.replace(NEW_SPEC, seed=100 + round_), 4)
    result = manager.enrol_files("pump", clips, "worker")
    print("committed", json.dumps(result["new_versions"]), flush=True)
""".replace("import os,", "import dataclasses, json, os,")


def worker(state: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WORKER.format(here=str(HERE)), str(state), mode],
                            stdout=subprocess.PIPE, text=True)


def wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "T":
            return
        time.sleep(0.01)
    raise AssertionError("the worker did not stop itself")


def served(state: Path):
    """What a restarted daemon serves: the bundle's detector plus the store's pointer."""
    return BankStore(state, "pump").apply(make_detector(seconds=12.0))


def test_kill_between_bank_write_and_pointer_serves_the_old_bank(tmp_path):
    state = tmp_path / "state"
    clips_dir = tmp_path / "clips"
    detectors = {"pump": make_detector(seconds=12.0)}
    manager = EnrolmentManager(state, detectors.get, detectors.__setitem__, gate=GATE)
    first = manager.enrol_files("pump", write_clips(clips_dir, NEW_SPEC, 4), "t")["new_versions"]

    proc = worker(state, "pause")
    assert proc.stdout.readline().strip() == "banks written"
    wait_stopped(proc.pid)
    versions_dir = state / "banks" / "pump" / "logmel-stats"
    on_disk = {p.name for p in versions_dir.iterdir()}
    proc.kill()
    proc.wait()

    store = BankStore(state, "pump")
    assert store.pointer()["current"] == first
    detector = served(state)
    assert {m.name: m.bank.version for m in detector.members} == first
    orphans = on_disk - set(first.values()) - {make_detector(seconds=12.0).bank_version}
    assert len(orphans) == 1  # the killed commit's bank: complete, but never pointed at
    # The lock died with the worker; the next enrolment runs and prunes the orphan.
    detectors = {"pump": detector}
    manager = EnrolmentManager(state, detectors.get, detectors.__setitem__, gate=GATE)
    manager.enrol_files("pump", write_clips(tmp_path / "other", OTHER_SPEC, 4), "t")
    assert not orphans & {p.name for p in versions_dir.iterdir()}


@pytest.mark.parametrize("delay_s", [0.8])
def test_kill_at_any_moment_leaves_a_whole_bank(tmp_path, delay_s):
    state = tmp_path / "state"
    proc = worker(state, "loop")
    committed: list[dict[str, str]] = []
    # Let it commit once, then kill it somewhere in a later round.
    committed.append(json.loads(proc.stdout.readline().split(" ", 1)[1]))
    time.sleep(delay_s)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    committed += [json.loads(line.split(" ", 1)[1]) for line in out.splitlines()]

    pointer = BankStore(state, "pump").pointer()
    # The killed round may have moved the pointer just before dying (then it is complete).
    current = pointer["current"]["logmel-stats"]
    bank = load_bank(state / "banks" / "pump" / "logmel-stats" / current)
    assert bank.version == current
    assert pointer["current"] in committed or pointer["previous"] == committed[-1]
    assert served(state).bank_version == current
    StoreLock(state).acquire("after the crash")


def test_daemon_killed_while_recording_restarts_on_the_old_bank(tmp_path):
    config_path, _ = looping_replay(tmp_path)
    loaded = load_config(config_path)
    before = plan_machines(loaded).machines[0].detector.bank_version
    sock = socket_path(loaded.state_dir)

    def start_daemon() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "edge_monitor.cli", "run", "-c",
                                 str(config_path)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT_S
        while not daemon_running(sock):
            assert proc.poll() is None and time.monotonic() < deadline, "daemon did not start"
            time.sleep(0.1)
        return proc

    daemon = start_daemon()
    try:
        # In the import directory (the only one the socket reads); the gate wants 20 s.
        clips = write_clips(loaded.import_dir / "new", NEW_SPEC, 22)
        enrolled = request(sock, {"command": "enroll/files", "machine": "pump",
                                  "files": [str(c) for c in clips]})["new_versions"]
        request(sock, {"command": "enroll/start", "machine": "pump", "seconds": 60})
        time.sleep(1.0)
        assert request(sock, {"command": "enroll/status"})["active"]["state"] == "recording"
    finally:
        daemon.kill()
        daemon.wait()
    assert sock.exists()  # left behind by the killed daemon

    daemon = start_daemon()
    try:
        assert request(sock, {"command": "enroll/status"})["active"] is None
        # The restarted daemon serves the bank enrolled before the crash: rolling back
        # goes from it to the learned one.
        back = request(sock, {"command": "enroll/rollback", "machine": "pump"})
        assert back["old_versions"] == enrolled
        assert back["new_versions"] == {"logmel-stats": before}
        # Nothing is stuck: a new enrolment may start at once.
        request(sock, {"command": "enroll/start", "machine": "pump", "seconds": 5})
        request(sock, {"command": "enroll/cancel", "machine": "pump"})
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=WAIT_S) == 0
