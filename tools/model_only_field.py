"""A model-only bundle on real recordings, the way a box meets a new machine.

The daemon itself (`Daemon.run`, replay source, no broker) learns the machine's bank on site
with the bundle's model from the training clips of a DCASE section, played one after the
other as a microphone would hear them (each 12 s clip gives one 10 s window: learned windows
never overlap). The bank it saves is then loaded as a restart would load it, and every test
clip is scored with it, as `edge-monitor score` scores a file. Prints the time the daemon
took to learn, the learned bank, the threshold, the cost of one window (1 thread) and the
DCASE figures (AUC source / target, pAUC, hmean) of the bank the box learned.
Nothing here asserts: it measures and prints.

    .venv/bin/python tools/model_only_field.py --bundle runs/model-only.tar \
        --data ../shared/data/toycar [--machine ToyCar] [--learn-clips 703] [--work DIR]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from threadpoolctl import threadpool_limits

from edge_monitor.config.loader import load_config
from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.metrics import section_metrics
from edge_monitor.daemon import Daemon, plan_machines
from trainer.dcase_data import read_dataset

CAPTURE_RATE_HZ = 16000


def write_config(work: Path, bundle: Path, clips: list[Path], window_s: float) -> Path:
    config = {
        "device_id": "field-box",
        "state_dir": str(work / "state"),
        "source": {"kind": "replay", "sample_rate_hz": CAPTURE_RATE_HZ,
                   "replay": {"paths": [str(p) for p in clips], "realtime": False}},
        "model": {"bundle": str(bundle)},
        "machines": [{"name": "machine"}],
        "windows": {"hop_s": window_s},
        "learning": {"seconds": len(clips) * window_s},
        "mqtt": {"enabled": False},
        "alarm_audio": {"enabled": False},
    }
    path = work / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="DCASE tree")
    parser.add_argument("--machine", default=None, help="machine type (default: the only one)")
    parser.add_argument("--learn-clips", type=int, default=None,
                        help="training clips to learn from, evenly spread (default all)")
    parser.add_argument("--window-s", type=float, default=10.0, help="the model's window")
    parser.add_argument("--work", type=Path, default=None, help="keep state here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clips = read_dataset(args.data)
    machines = sorted({c.machine for c in clips})
    machine = args.machine or machines[0]
    train = sorted((c for c in clips if c.machine == machine and c.split == "train"),
                   key=lambda c: c.path.name)
    test = [c for c in clips if c.machine == machine and c.split == "test"]
    if args.learn_clips is not None and args.learn_clips < len(train):
        picks = np.linspace(0, len(train) - 1, args.learn_clips).round().astype(int)
        train = [train[i] for i in sorted(set(picks.tolist()))]
    work = args.work or Path(tempfile.mkdtemp(prefix="model-only-field-"))
    work.mkdir(parents=True, exist_ok=True)
    config_path = write_config(work, args.bundle, [c.path for c in train], args.window_s)
    started = time.perf_counter()
    rc = Daemon(config_path).run()
    learn_s = time.perf_counter() - started
    plan = plan_machines(load_config(config_path))
    setup = plan.machines[0]
    if setup.detector is None:
        print(f"the daemon (exit {rc}) did not finish learning in {learn_s:.0f} s")
        return 1
    detector = setup.detector
    bank = detector.members[0].bank
    print(f"{machine}: daemon learned on site from {len(train)} training clips in "
          f"{learn_s:.1f} s (exit {rc}); bank {detector.bank_version} ({setup.bank_origin}), "
          f"{len(bank)} windows, model {detector.model_version} at {detector.sample_rate_hz} Hz, "
          f"threshold {detector.threshold:.5f}")
    with threadpool_limits(limits=1):
        scores, costs = [], []
        for clip in test:
            audio = read_audio(clip.path, detector.sample_rate_hz)
            t0 = time.perf_counter()
            scores.append(detector.score(audio[: int(args.window_s * detector.sample_rate_hz)])
                          .score)
            costs.append(time.perf_counter() - t0)
    m = section_metrics(scores, [c.label == "anomaly" for c in test], [c.domain for c in test])
    print(f"  {len(test)} test clips (first 10 s window each): AUC source {100 * m.auc_source:.1f}"
          f" / target {100 * m.auc_target:.1f} / pAUC {100 * m.pauc:.1f}, "
          f"hmean {100 * m.hmean:.1f}")
    print(f"  one window (embed + score, onnxruntime default threads, BLAS 1 thread): "
          f"mean {1000 * np.mean(costs):.1f} ms, p95 {1000 * np.percentile(costs, 95):.1f} ms")
    alarms = sum(s > detector.threshold for s, c in zip(scores, test, strict=True)
                 if c.label == "normal")
    print(f"  normal test clips above the threshold: {alarms} of "
          f"{sum(c.label == 'normal' for c in test)}; state in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
