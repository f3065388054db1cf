"""CI check: the runtime alone, installed on the edge boxes' system Python, serves a bundle.

Edge boxes run Debian 12 (or Raspberry Pi OS) and its `/usr/bin/python3`, 3.11.2, older
than the development environment's. This creates a virtual environment with that Python,
installs the project there without extras (no trainer dependencies, no torch), and in it
runs `edge-monitor check` and a short `edge-monitor run` (a finite replay, no broker) on a
`.tar` bundle with a real ONNX model that the development environment builds. It fails
when torch is importable there, when `edge-trainer` does not refuse with one line naming
the `train` extra, when either command fails, or when fewer than 5 windows were scored, and
prints how long each step took.

    .venv/bin/python tools/runtime_install_check.py [--python /usr/bin/python3] [--keep]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "edge_monitor")]

from test_daemon_bundle import make_bundle  # noqa: E402  (a test helper, on the path above)

FINAL_STATS = re.compile(r"final stats: (\d+) windows \((\d+) scored")
MIN_WINDOWS = 5
NO_TORCH = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"


def step(what: str, command: list[str], cwd: Path | None = None) -> str:
    started = time.monotonic()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    print(f"[runtime-install] {what}: exit {done.returncode} in "
          f"{time.monotonic() - started:.1f} s", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed ({' '.join(command)}):\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def copy_source(target: Path) -> Path:
    """The files git tracks or would track, so the build writes nothing into the checkout."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def write_inputs(work: Path) -> Path:
    """A .tar bundle, one normal recording of its machine and a config that replays it."""
    data, tar = make_bundle(work)
    clips = [p for p in sorted((data / "fan" / "test").glob("*source_test*"))
             if "normal" in p.name]
    audio = [sf.read(p, dtype="float32") for p in clips]
    sf.write(work / "replay.wav", np.concatenate([a for a, _ in audio]), audio[0][1])
    config = {
        "device_id": "runtime-box",
        "state_dir": str(work / "state"),
        "source": {"kind": "replay", "block_s": 0.05,
                   "replay": {"paths": [str(work / "replay.wav")], "realtime": False}},
        "model": {"bundle": str(tar)},
        "machines": [{"name": "fan"}],
        "windows": {"window_s": None, "hop_s": 0.25},
        "mqtt": {"enabled": False},
    }
    path = work / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="/usr/bin/python3", help="the system Python")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="runtime-install-"))
    venv = work / "venv"
    try:
        config = write_inputs(work)
        step(f"venv with {args.python}", [args.python, "-m", "venv", str(venv)])
        python = str(venv / "bin" / "python")
        version = step("its version", [python, "-c", "import sys; print(sys.version)"])
        print(f"[runtime-install] Python {version.split()[0]}")
        source = copy_source(work / "src")
        step("pip install (no extras)", [python, "-m", "pip", "install", "-q",
                                         "--disable-pip-version-check", str(source)])
        step("torch is absent", [python, "-c", NO_TORCH])
        trainer = subprocess.run([str(venv / "bin" / "edge-trainer"), "--help"],
                                 capture_output=True, text=True)
        if trainer.returncode != 2 or "'train' extra" not in trainer.stderr or \
                "Traceback" in trainer.stderr:
            raise SystemExit(f"edge-trainer without torch should exit 2 with one line naming "
                             f"the train extra; it exited {trainer.returncode}:\n"
                             f"{trainer.stderr}")
        print(f"[runtime-install] edge-trainer without torch: {trainer.stderr.strip()}")
        checked = step("edge-monitor check", [str(venv / "bin" / "edge-monitor"), "check",
                                              "-c", str(config)], cwd=work)
        if "bank" not in checked:
            raise SystemExit(f"check did not report the bundle's bank:\n{checked}")
        ran = step("edge-monitor run (replay)", [str(venv / "bin" / "edge-monitor"), "run",
                                                 "-c", str(config)], cwd=work)
        found = FINAL_STATS.findall(ran)
        if not found or int(found[-1][1]) < MIN_WINDOWS:
            raise SystemExit(f"the replay scored fewer than {MIN_WINDOWS} windows:\n{ran}")
        print(f"[runtime-install] ok: {found[-1][1]} windows scored on Python "
              f"{version.split()[0]} in {time.monotonic() - started:.0f} s")
    finally:
        if args.keep:
            print(f"[runtime-install] work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
