""""This alarm was normal" on the DCASE ToyCar subset: does one false alarm marked normal stop
the repeat false alarms of the same condition without hiding real anomalies?

For each scoring variant: a bundle whose bank holds only the source-domain training clips
(`--model`: the built-in logmel-stats embedder by default, or an exported model). The
daemon (`edge-monitor run`, fast replay) hears the 10 target-domain training clips, a car
in another condition than the bank knows: it alarms.
The first of those alarms is marked normal with `edge-monitor enroll --false-alarm EVENT_ID`
(offline, into the bank store, as for an offline enrolment), which adds that alarm's stored
windows to the bank. Then, with the detector the daemon serves before and after:

- each test clip heard on its own through the daemon's decision (its 10 s windows every
  1 s, the default k-of-n against the served threshold): the false-alarm rate on the 25
  held-out target-domain normals (the same condition) and on the 25 source normals, and
  the hit rate on the 25 + 25 anomalous clips;
- AUC(source), AUC(target) and pAUC of the clip scores, as DCASE computes them.

    .venv/bin/python tools/feedback_toycar.py --data ../shared/data/toycar --work /tmp/fb-toycar \
        [--model runs/mn04-export/export.json:mn04]

This script may import trainer (for the DCASE reader and the bundle builder); the runtime
does not.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge_monitor.cli import main as edge_monitor
from edge_monitor.config.loader import load_config
from edge_monitor.config.sections import DecisionSection, WindowsConfig
from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.detector import Detector
from edge_monitor.core.metrics import section_metrics
from edge_monitor.core.scoring_config import VARIANTS, variant
from edge_monitor.core.windowing import Windower
from edge_monitor.daemon import Daemon, plan_machines
from edge_monitor.enrolment import alarm_windows
from edge_monitor.enrolment.bank_store import BankStore
from edge_monitor.pipeline.decision import DecisionMachine
from trainer.bundle_builder import ModelEntry, build_bundle
from trainer.cli_commands.bundle import model_entry
from trainer.dcase_data import Clip, read_dataset

log = logging.getLogger("feedback_toycar")
REPO = Path(__file__).resolve().parent.parent


def served_detector(config_path: Path, machine: str) -> Detector:
    """What `edge-monitor run` serves for `machine`: the bundle's detector plus the bank store."""
    config = load_config(config_path)
    setup = next(s for s in plan_machines(config).machines if s.name == machine)
    assert setup.detector is not None
    return BankStore(config.state_dir, machine).apply(setup.detector)


def write_config(root: Path, bundle: Path, machine: str, clips: list[Clip], name: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(root / "state"),
        "model": {"bundle": str(bundle)},
        "machines": [{"name": machine}],
        "source": {"kind": "replay", "replay": {"paths": [str(c.path) for c in clips],
                                                "realtime": False}},
        "mqtt": {"enabled": False},
        "logging": {"level": "WARNING"},
    }))
    return path


def replay_alarms(config_path: Path, machine: str) -> list[str]:
    """Run the daemon over the config's replay files; the event ids of the alarms it raised
    (each alarm stores its windows, named by event id), oldest first."""
    state = load_config(config_path).state_dir
    directory = alarm_windows.machine_dir(state, machine)
    before = set(directory.glob("*.npz")) if directory.is_dir() else set()
    code = Daemon(config_path).run()
    if code != 0:
        raise SystemExit(f"edge-monitor run -c {config_path} exited with {code}")
    new = [p for p in directory.glob("*.npz") if p not in before] if directory.is_dir() else []
    return [p.stem for p in sorted(new, key=lambda p: p.stat().st_mtime)]


def clip_scores(detector: Detector, clips: list[Clip]) -> np.ndarray:
    return np.array([detector.score(read_audio(c.path, detector.sample_rate_hz)).score
                     for c in clips])


def clip_alarms(detector: Detector, clips: list[Clip], decision: DecisionSection) -> np.ndarray:
    """Per clip heard on its own: does the daemon's decision alarm? Its windows (10 s every
    `windows.hop_s` of the default config) scored against the served threshold, k of n."""
    alarmed = []
    hop_s = WindowsConfig().hop_s
    for clip in clips:
        machine = DecisionMachine(decision)
        windower = Windower(detector.sample_rate_hz, detector.window_s, hop_s)
        audio = read_audio(clip.path, detector.sample_rate_hz)
        start = datetime.now(timezone.utc)
        hit = False
        for i, window in enumerate(windower.push(audio, 0)):
            outcome = machine.observe(detector.score(window.audio).score,
                                      detector.threshold * decision.threshold_scale,
                                      start + timedelta(seconds=i * hop_s))
            hit = hit or any(t.kind == "new" for t in outcome.transitions)
        alarmed.append(hit)
    return np.array(alarmed)


def judge(detector: Detector, normals: dict[str, list[Clip]], anomalies: list[Clip]
          ) -> dict[str, float]:
    """The daemon's decision per clip (false alarms on normals, hits on anomalies, per
    domain) and the DCASE metrics of the clip scores."""
    decision = DecisionSection()
    scores = {domain: clip_scores(detector, clips) for domain, clips in normals.items()}
    anomalous = clip_scores(detector, anomalies)
    domains = np.array([str(c.domain) for c in anomalies])
    metrics = section_metrics(
        [*scores["source"], *scores["target"], *anomalous],
        [False] * (len(scores["source"]) + len(scores["target"])) + [True] * len(anomalous),
        ["source"] * len(scores["source"]) + ["target"] * len(scores["target"]) + list(domains),
    )
    hits = clip_alarms(detector, anomalies, decision)
    return {
        "threshold": detector.threshold * decision.threshold_scale,
        "false_alarms_target": float(np.mean(clip_alarms(detector, normals["target"], decision))),
        "false_alarms_source": float(np.mean(clip_alarms(detector, normals["source"], decision))),
        "hits_target": float(np.mean(hits[domains == "target"])),
        "hits_source": float(np.mean(hits[domains == "source"])),
        "auc_source": metrics.auc_source, "auc_target": metrics.auc_target,
        "pauc": metrics.pauc,
    }


def run_variant(name: str, clips: list[Clip], work: Path, cache: Path,
                model: ModelEntry) -> dict[str, Any]:
    train_source = [c for c in clips if c.split == "train" and c.domain == "source"]
    episode = [c for c in clips if c.split == "train" and c.domain == "target"]
    test = [c for c in clips if c.split == "test"]
    normals = {d: [c for c in test if not c.is_anomaly and c.domain == d]
               for d in ("source", "target")}
    anomalies = [c for c in test if c.is_anomaly]
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    bundle = build_bundle(root / "bundle", [model], train_source, variant(name), cache_dir=cache)
    machine = train_source[0].machine
    episode_config = write_config(root, bundle, machine, episode, "episode")
    before = served_detector(episode_config, machine)
    episode_alarms = replay_alarms(episode_config, machine)
    if not episode_alarms:
        return {"variant": name, "episode_alarms": 0}
    marked = episode_alarms[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = edge_monitor(["enroll", "-c", str(episode_config), "--machine", machine,
                             "--false-alarm", marked])
    if code != 0:
        raise SystemExit(f"edge-monitor enroll --false-alarm {marked} exited with {code}")
    result = json.loads(out.getvalue())
    after = served_detector(episode_config, machine)
    return {
        "variant": name,
        "episode_clips": len(episode),
        "episode_alarms": len(episode_alarms),
        "marked": marked,
        "windows_added": result["windows"],
        "entries_before": len(before.members[0].bank),
        "entries_after": len(after.members[0].bank),
        "before": judge(before, normals, anomalies),
        "after": judge(after, normals, anomalies),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/toycar")
    parser.add_argument("--work", type=Path, default=Path("/tmp/feedback-toycar"))
    parser.add_argument("--variants", nargs="+", default=["knn", "dads-dwmin"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--model", default="logmel-stats", metavar="SPEC",
                        help="a builtin name or EXPORT.json:NAME (as edge-trainer bundle takes)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    clips = read_dataset(args.data.resolve())  # the daemon configs it writes name absolute paths
    args.work.mkdir(parents=True, exist_ok=True)
    model = model_entry(args.model)
    rows = [run_variant(v, clips, args.work, args.work / "embedding-cache", model)
            for v in args.variants]
    print(f"{'variant':<11} {'':<7} {'FA(tgt)':>8} {'FA(src)':>8} {'hit(tgt)':>9} "
          f"{'hit(src)':>9} {'AUC(src)':>9} {'AUC(tgt)':>9} {'pAUC':>7} {'threshold':>10}")
    for row in rows:
        if not row["episode_alarms"]:
            print(f"{row['variant']:<11} the shifted condition raised no alarm: nothing to mark")
            continue
        for when in ("before", "after"):
            m = row[when]
            print(f"{row['variant']:<11} {when:<7} {m['false_alarms_target']:8.2f} "
                  f"{m['false_alarms_source']:8.2f} {m['hits_target']:9.2f} "
                  f"{m['hits_source']:9.2f} {m['auc_source']:9.4f} {m['auc_target']:9.4f} "
                  f"{m['pauc']:7.4f} {m['threshold']:10.5f}")
        print(f"{'':<11} episode: {row['episode_clips']} target clips, {row['episode_alarms']} "
              f"alarm(s); the first marked normal: {row['windows_added']} window(s) added, bank "
              f"{row['entries_before']} -> {row['entries_after']} entries")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
