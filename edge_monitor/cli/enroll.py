"""`edge-monitor enroll`: teach a machine its new normal sound on site, or undo it.

    edge-monitor enroll -c CONF --machine NAME --seconds N     record N s from the live input
    edge-monitor enroll -c CONF --machine NAME FILE|DIR...     enrol recordings
    edge-monitor enroll -c CONF --machine NAME --rollback      serve the previous bank again
    edge-monitor enroll -c CONF --machine NAME --cancel        abandon a running enrolment
    edge-monitor enroll -c CONF --machine NAME --false-alarm EVENT_ID
                                                   this alarm was normal: add its windows
    edge-monitor enroll -c CONF --status

With the daemon running (its control socket in state_dir answers), everything goes through
it: live recording shares its capture, and the new bank is swapped in without a restart.
Files are copied into the import directory (enrolment.import_dir, default
<state_dir>/enrol-inbox), the only place the daemon reads recordings from over its socket
(and one its sandbox can see), so run the command as the service's user:
`sudo -u edge-monitor ...`.
Without a daemon, files are enrolled straight into the bank store under state_dir, and the
daemon serves the new bank when it starts or reloads (SIGHUP).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_monitor.cli.score import expand_files
from edge_monitor.config.loader import load_config
from edge_monitor.core.detector import Detector
from edge_monitor.core.errors import (
    AudioFileError,
    BadInputError,
    BankError,
    ConfigError,
    EdgeMonitorError,
)
from edge_monitor.enrolment.bank_store import BankStore
from edge_monitor.enrolment.control import daemon_running, request, socket_path
from edge_monitor.enrolment.manager import EnrolmentManager
from edge_monitor.enrolment.session import RECORDING
from edge_monitor.mqtt.topics import check_event_id

log = logging.getLogger(__name__)

POLL_S = 1.0
# Embedding many minutes of files (or a large model) takes a while on a small box.
BUILD_TIMEOUT_S = 900.0
# How long past the requested seconds a live recording may take (gaps, faults) before giving up.
RECORDING_GRACE_S = 60.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="daemon config file (YAML)")
    parser.add_argument("--machine", help="machine to enrol (as named in the config)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--seconds", type=float, help="record this many seconds from the live input")
    what.add_argument("--rollback", action="store_true", help="serve the previous bank again")
    what.add_argument("--cancel", action="store_true", help="abandon the running enrolment")
    what.add_argument("--status", action="store_true", help="show the enrolment status")
    what.add_argument("--false-alarm", metavar="EVENT_ID",
                      help="this alarm (its event_id) was normal: add its windows to the bank")
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE",
                        help="WAV/FLAC recordings of the machine running normally, or folders")


def _user() -> str:
    return f"cli:{os.environ.get('SUDO_USER') or os.environ.get('USER') or os.getuid()}"


def _print(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, sort_keys=True))


def _check_args(args: argparse.Namespace) -> None:
    if args.status:
        return
    if not args.machine:
        raise BadInputError("--machine is required: name the machine to enrol")
    modes = [args.seconds is not None, bool(args.files), args.rollback, args.cancel,
             args.false_alarm is not None]
    if sum(modes) != 1:
        raise BadInputError(
            "give exactly one of --seconds N, recording files, --rollback, --cancel or "
            "--false-alarm EVENT_ID"
        )
    if args.false_alarm is not None:
        check_event_id(args.false_alarm, "--false-alarm")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    config = load_config(args.config)
    names = [m.name for m in config.machines]
    if args.machine and args.machine not in names:
        raise ConfigError(f"--machine {args.machine!r} is not in {args.config}; use one of {names}")
    files = [str(p.resolve()) for p in expand_files(args.files)] if args.files else []
    path = socket_path(config.state_dir)
    if daemon_running(path):
        return _online(args, path, files, config.import_dir)
    return _offline(args, config, files)


def _online(args: argparse.Namespace, path: Path, files: list[str], import_dir: Path) -> int:
    machine = args.machine
    if args.status:
        _print(request(path, {"command": "enroll/status"}))
    elif args.rollback:
        _print(request(path, {"command": "enroll/rollback", "machine": machine}))
    elif args.cancel:
        _print(request(path, {"command": "enroll/cancel", "machine": machine}))
    elif args.false_alarm is not None:
        _print(request(path, {"command": "enroll/false-alarm", "machine": machine,
                              "event_id": args.false_alarm}, BUILD_TIMEOUT_S))
    elif files:
        with _staged(files, import_dir) as staged:
            _print(request(path, {"command": "enroll/files", "machine": machine,
                                  "files": staged}, BUILD_TIMEOUT_S))
    else:
        _record(path, machine, float(args.seconds))
    return 0


@contextlib.contextmanager
def _staged(files: list[str], import_dir: Path) -> Iterator[list[str]]:
    """Copies of `files` in the import directory (enrolment.import_dir), the one place the
    daemon reads recordings from over its socket, and where the sandboxed service can (its
    PrivateTmp and ProtectHome hide /tmp and /home from it); removed afterwards."""
    inbox = import_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    try:
        inbox.mkdir(parents=True)
    except OSError as exc:
        raise BadInputError(
            f"cannot copy the recordings into {import_dir} (enrolment.import_dir): "
            f"{exc.strerror or exc}; run as the service's user (sudo -u edge-monitor ...)"
        ) from exc
    try:
        staged = []
        for i, name in enumerate(files):
            target = inbox / f"{i:04d}-{Path(name).name}"
            try:
                shutil.copyfile(name, target)
            except OSError as exc:
                raise AudioFileError(f"{name}: cannot read it ({exc.strerror or exc})") from exc
            staged.append(str(target))
        yield staged
    finally:
        shutil.rmtree(inbox, ignore_errors=True)


def _record(path: Path, machine: str, seconds: float) -> None:
    """Start a live recording, follow it, then commit; Ctrl-C cancels."""
    request(path, {"command": "enroll/start", "machine": machine, "seconds": seconds})
    print(f"recording {seconds:g} s of {machine}; keep the machine running normally "
          "(Ctrl-C cancels)", file=sys.stderr)
    deadline = time.monotonic() + seconds + RECORDING_GRACE_S
    try:
        while True:
            active = request(path, {"command": "enroll/status"})["active"]
            if active is None or active["machine"] != machine:
                raise EdgeMonitorError(f"machine {machine}: the enrolment ended unexpectedly")
            if active["state"] != RECORDING:
                break
            if time.monotonic() > deadline:
                request(path, {"command": "enroll/cancel", "machine": machine})
                raise EdgeMonitorError(
                    f"machine {machine}: recording did not finish within {seconds:g} s + "
                    f"{RECORDING_GRACE_S:g} s (no audio, or a fault?); cancelled, nothing changed"
                )
            print(f"  {active['progress']:.0%}", file=sys.stderr)
            time.sleep(POLL_S)
        _print(request(path, {"command": "enroll/commit", "machine": machine}, BUILD_TIMEOUT_S))
    except KeyboardInterrupt:
        request(path, {"command": "enroll/cancel", "machine": machine})
        raise EdgeMonitorError(f"machine {machine}: enrolment cancelled; nothing changed") from None


def _offline(args: argparse.Namespace, config: Any, files: list[str]) -> int:
    """No daemon: enrol files or roll back straight in the bank store under state_dir."""
    if args.status:
        _print({"daemon": "not running", "history": {
            name: BankStore(config.state_dir, name).history() for name in
            (m.name for m in config.machines)}})
        return 0
    if args.cancel:
        raise BadInputError("no daemon is running, so no enrolment runs: nothing to cancel")
    if args.seconds is not None:
        raise BadInputError(
            "live recording needs the running daemon (`edge-monitor run -c CONF`), whose input "
            "it shares; start it, or enrol recordings given as files"
        )
    detectors = {args.machine: _offline_detector(config, args.machine, args.rollback)}
    e = config.enrolment
    manager = EnrolmentManager(
        config.state_dir, get_detector=detectors.get,
        swap_detector=lambda machine, detector: detectors.__setitem__(machine, detector),
        gate=e.gate(), keep=e.keep_versions,  # the daemon's settings, not the defaults
    )
    if args.rollback:
        _print(manager.rollback(args.machine, _user()))
    elif args.false_alarm is not None:
        _print(manager.alarm_was_normal(args.machine, args.false_alarm, _user()))
    else:
        _print(manager.enrol_files(args.machine, files, _user()))
    print("the daemon serves the new bank when it starts or reloads (SIGHUP)", file=sys.stderr)
    return 0


def _offline_detector(config: Any, machine: str, rollback: bool = False) -> Detector:
    """The detector the daemon would run for `machine`: bundle or learned bank, plus store.
    For a rollback, enrolled banks the daemon would refuse (threshold 0) are rolled back
    from the bundle's or learned banks instead of blocking their own undoing."""
    from edge_monitor.daemon import plan_machines

    plan = plan_machines(config, enrolled=False)
    setup = next(s for s in plan.machines if s.name == machine)
    if setup.detector is None:
        raise BadInputError(
            f"machine {machine}: has no bank yet: let the daemon learn it first, or configure "
            "a bundle (model.bundle)"
        )
    try:
        return BankStore(config.state_dir, machine).apply(setup.detector)
    except BankError as exc:
        if not rollback:
            raise
        log.warning("%s; rolling back from the base banks", exc)
        return setup.detector
