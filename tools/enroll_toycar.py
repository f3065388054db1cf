"""Re-enrolment experiment on the DCASE ToyCar subset (issue 7).

For each scoring variant: build a bundle whose bank holds only the source training clips
(builtin logmel-stats embedder), score the test clips with the detector the daemon would run,
enrol the 10 target training clips with `edge-monitor enroll` (offline: straight into the
bank store under a daemon config's state_dir), score again with the detector the daemon now
serves (bundle + bank store), and report AUC(source), AUC(target), pAUC and hmean before and
after, with the enrol command's wall time.

    .venv/bin/python tools/enroll_toycar.py --data ../shared/data/toycar --work /tmp/enrol-exp

This script may import trainer (for the DCASE reader and the bundle builder); the runtime
does not.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from edge_monitor.config.loader import load_config
from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.detector import Detector
from edge_monitor.core.metrics import SectionMetrics, section_metrics
from edge_monitor.core.scoring_config import VARIANTS, variant
from edge_monitor.daemon import plan_machines
from edge_monitor.enrolment.bank_store import BankStore
from trainer.bundle_builder import ModelEntry, build_bundle
from trainer.dcase_data import Clip, read_dataset

log = logging.getLogger("enroll_toycar")
REPO = Path(__file__).resolve().parent.parent
MODEL = ModelEntry(name="logmel-stats", runtime="builtin", builtin="logmel-stats",
                   sample_rate_hz=16000, window_s=10.0, dim=256)


def score_clips(detector: Detector, clips: list[Clip]) -> SectionMetrics:
    scores = [detector.score(read_audio(c.path, detector.sample_rate_hz)).score for c in clips]
    return section_metrics(scores, [bool(c.is_anomaly) for c in clips],
                           [str(c.domain) for c in clips])


def served_detector(config_path: Path, machine: str) -> Detector:
    """What `edge-monitor run` serves for `machine`: the bundle's detector plus the bank store."""
    config = load_config(config_path)
    setup = next(s for s in plan_machines(config).machines if s.name == machine)
    assert setup.detector is not None
    return BankStore(config.state_dir, machine).apply(setup.detector)


def run_variant(name: str, clips: list[Clip], work: Path, cache: Path) -> dict[str, object]:
    train_source = [c for c in clips if c.split == "train" and c.domain == "source"]
    train_target = [c for c in clips if c.split == "train" and c.domain == "target"]
    test = [c for c in clips if c.split == "test"]
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    bundle = build_bundle(root / "bundle", [MODEL], train_source, variant(name), cache_dir=cache)
    machine = train_source[0].machine
    config_path = root / "edge.yaml"
    config_path.write_text(yaml.safe_dump({
        "state_dir": str(root / "state"),
        "model": {"bundle": str(bundle)},
        "machines": [{"name": machine}],
        "mqtt": {"enabled": False},
    }))
    before_detector = served_detector(config_path, machine)
    before = score_clips(before_detector, test)
    command = [str(REPO / ".venv/bin/edge-monitor"), "enroll", "-c", str(config_path),
               "--machine", machine, *[str(c.path) for c in train_target]]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    enrol_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    result = json.loads(done.stdout)
    after_detector = served_detector(config_path, machine)
    after = score_clips(after_detector, test)
    return {
        "variant": name,
        "bank_before": before_detector.bank_version,
        "bank_after": after_detector.bank_version,
        "entries_before": len(before_detector.members[0].bank),
        "entries_after": len(after_detector.members[0].bank),
        "threshold_before": before_detector.threshold,
        "threshold_after": after_detector.threshold,
        "enrol_command_s": round(enrol_s, 2),
        "enrol_build_s": result["build_s"],
        "enrolled_windows": result["windows"],
        "before": {"auc_source": before.auc_source, "auc_target": before.auc_target,
                   "pauc": before.pauc, "hmean": before.hmean},
        "after": {"auc_source": after.auc_source, "auc_target": after.auc_target,
                  "pauc": after.pauc, "hmean": after.hmean},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/toycar")
    parser.add_argument("--work", type=Path, default=Path("/tmp/enroll-toycar"))
    parser.add_argument("--variants", nargs="+", default=sorted(VARIANTS),
                        choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    clips = read_dataset(args.data)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [run_variant(v, clips, args.work, args.work / "embedding-cache") for v in args.variants]
    print(f"{'variant':<11} {'':<7} {'AUC(src)':>9} {'AUC(tgt)':>9} {'pAUC':>7} {'hmean':>7}")
    for row in rows:
        for when in ("before", "after"):
            m = row[when]
            assert isinstance(m, dict)
            print(f"{row['variant']:<11} {when:<7} {m['auc_source']:9.4f} {m['auc_target']:9.4f}"
                  f" {m['pauc']:7.4f} {m['hmean']:7.4f}")
        print(f"{'':<11} enrol: {row['enrolled_windows']} clips, command {row['enrol_command_s']}"
              f" s (build {row['enrol_build_s']} s), bank {row['entries_before']} -> "
              f"{row['entries_after']} entries, threshold {row['threshold_before']:.4f} -> "
              f"{row['threshold_after']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
