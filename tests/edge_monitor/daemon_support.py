"""Helpers for the daemon tests: synthetic machine audio, tiny configs, a daemon on a thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge_monitor.daemon import Daemon
from edge_monitor.demo.synth import FaultSegment, MachineSpec, synthesize, write_audio
from edge_monitor.pipeline.service import Notifier

RATE = 16000
WAIT_S = 15.0


def synth(seconds: float, faults: tuple[FaultSegment, ...] = (), seed: int = 7) -> np.ndarray:
    return synthesize(MachineSpec(seed=seed), seconds, RATE, faults)


def write_flac(path: Path, audio: np.ndarray) -> Path:
    write_audio(path, audio, RATE)
    return path


def small_config(tmp_path: Path, paths: list[Path] | None, **overrides: Any) -> dict[str, Any]:
    """1 s windows every 0.5 s, 10 s of learning, quick faults: every test finishes in seconds."""
    config: dict[str, Any] = {
        "device_id": "test-box",
        "state_dir": str(tmp_path / "state"),
        "source": {"kind": "replay", "block_s": 0.05,
                   "replay": {"paths": [str(p) for p in paths or []], "realtime": False}},
        "machines": [{"name": "pump"}],
        "windows": {"window_s": 1.0, "hop_s": 0.5},
        "learning": {"seconds": 10},
        "decision": {"threshold_scale": 1.5, "k": 2, "n": 3, "cooldown_s": 0,
                     "update_interval_s": 1},
        "faults": {"silence_s": 1.5, "clipping_windows": 2, "no_audio_s": 2, "disk_check_s": 0.5},
        "mqtt": {"enabled": False},
        "logging": {"stats_interval_s": 1},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


def write_config(tmp_path: Path, config: dict[str, Any], name: str = "edge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


class DaemonThread:
    """`Daemon.run()` on a thread (signals stay with pytest); `stop()` returns its exit code."""

    def __init__(self, config_path: Path, notifier: Notifier | None = None) -> None:
        self.daemon = Daemon(config_path, notifier)
        self.rc: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.rc = self.daemon.run()
        except BaseException as exc:
            self.error = exc

    def wait(self, timeout_s: float = 60.0) -> int | None:
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        return self.rc

    def stop(self, timeout_s: float = 30.0) -> int | None:
        self.daemon.request_stop()
        return self.wait(timeout_s)

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                   timeout_s: float = WAIT_S) -> dict[str, Any]:
        """Poll the processing snapshot until `predicate` holds."""
        deadline = time.monotonic() + timeout_s
        snap: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.error is not None:
                raise self.error
            processor = self.daemon.processor
            if processor is not None:
                snap = processor.snapshot()
                if snap and predicate(snap):
                    return snap
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last snapshot: {json.dumps(snap)}")


def learn_first(tmp_path: Path, clip: Path) -> None:
    """Run a throwaway daemon over `clip` as fast as it goes, so the learned bank is on disk
    and the daemon a test starts next judges at once."""
    config = small_config(tmp_path, [clip])
    assert DaemonThread(write_config(tmp_path, config, "learn.yaml")).wait() == 0


def mqtt_command(recorder: Any, root: str, name: str, request_id: str,
                 **args: Any) -> dict[str, Any]:
    """Publish `<root>/cmd/<name>` and return its reply from `<root>/cmd/result`."""
    recorder.publish(f"{root}/cmd/{name}", json.dumps({"request_id": request_id, **args}))
    result = f"{root}/cmd/result"

    def replies(messages: list[Any]) -> list[dict[str, Any]]:
        return [r for r in (json.loads(m.payload) for m in messages if m.topic == result)
                if r.get("request_id") == request_id]

    return replies(recorder.wait_for(lambda ms: bool(replies(ms)),
                                     f"the reply to {request_id}", WAIT_S * 2))[0]


def status_of(snap: dict[str, Any], machine: str = "pump") -> str:
    return snap["machines"][machine]["status"]


def dedupe(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out

