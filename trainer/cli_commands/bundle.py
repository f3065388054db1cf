"""`edge-trainer bundle`: exported models + banks of every machine -> one verified bundle.

    edge-trainer bundle --data ROOT --out BUNDLE --model logmel-stats \
        --model exports/student/export.json:student-onnx-int8 [--weights acp.json] [--tar] \
        [--sign keys/ops.key]
    edge-trainer bundle --model-only --out BUNDLE --model exports/mn04/export.json:NAME [--tar]

A model is a builtin embedder name or `EXPORT_JSON:NAME` (an entry written by
`edge-trainer export`; `:NAME` may be left out when the file holds one model). Banks are
built from the training clips under ROOT, one per machine section, through the runtime
embedders the daemon will run. `--model-only` writes one model and no banks: each box learns
its machine's bank on site with it (docs/bundle.md). `--sign` signs the manifest with a key from
`edge-trainer keygen`, so boxes that trust its public key accept the bundle.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tqdm import tqdm

from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.bundle import load_bundle
from edge_monitor.core.embedders.runtimes import BUILTIN_EMBEDDERS
from edge_monitor.core.errors import ConfigError
from edge_monitor.core.preprocess import trim_quiet_ends
from edge_monitor.core.scoring_config import VARIANTS, variant
from edge_monitor.core.signing import key_id, load_private_key
from trainer.bootstrap import bootstrap_figures
from trainer.bundle_builder import ModelEntry, build_bundle, machine_ids, write_tar
from trainer.dcase_data import Clip, read_dataset
from trainer.embed_cache import DEFAULT_TRIM_QUIET_DB
from trainer.model_spec import export_entry

NAME = "bundle"
HELP = "Build a bundle (models, banks per machine, thresholds, manifest) for the daemon."
log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, metavar="ROOT",
                        help="DCASE tree whose training clips fill the banks")
    parser.add_argument("--model-only", action="store_true",
                        help="one model, no banks: each box learns its machine's bank on site")
    parser.add_argument("--out", type=Path, required=True, metavar="BUNDLE",
                        help="bundle directory to create")
    parser.add_argument("--model", action="append", required=True, metavar="SPEC",
                        help=f"builtin {sorted(BUILTIN_EMBEDDERS)} or EXPORT_JSON[:NAME]; repeat")
    parser.add_argument("--weights", type=Path, default=None,
                        help="JSON with {'weights': {model: weight}} (from edge-trainer acp)")
    parser.add_argument("--variant", default=None,
                        help=f"scoring variant {sorted(VARIANTS)} (default knn)")
    parser.add_argument("--k", type=int, default=None, help="neighbours per score")
    parser.add_argument("--false-alarm-rate", type=float, default=None, help="default 0.01")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache directory")
    parser.add_argument("--tar", action="store_true", help="also write BUNDLE.tar")
    parser.add_argument("--sign", type=Path, default=None, metavar="KEYFILE",
                        help="sign the manifest with this Ed25519 key (edge-trainer keygen)")


def model_entry(spec: str) -> ModelEntry:
    """A builtin name, or one entry of an export.json."""
    if spec in BUILTIN_EMBEDDERS:
        embedder = BUILTIN_EMBEDDERS[spec]()
        return ModelEntry(spec, "builtin", embedder.sample_rate_hz, embedder.window_s,
                          embedder.dim, builtin=spec)
    return export_entry(spec)


def read_weights(path: Path) -> dict[str, float]:
    try:
        weights = json.loads(path.read_text())["weights"]
        return {str(k): float(v) for k, v in weights.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"--weights {path}: expected JSON {{'weights': {{model: w}}}} ({exc})"
        ) from exc


BANK_OPTIONS = ("data", "weights", "variant", "k", "false_alarm_rate", "cache")


def check_mode(args: argparse.Namespace) -> None:
    """--data for a bundle with banks; none of the bank options with --model-only."""
    if not args.model_only:
        if args.data is None:
            raise ConfigError("--data ROOT is required to build banks; or give --model-only "
                              "for a bundle whose boxes learn their banks on site")
        return
    given = [f"--{name.replace('_', '-')}" for name in BANK_OPTIONS
             if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"{given} shape banks, and --model-only builds none: remove them (a "
                          "box learns with its config's learning.scoring and "
                          "decision.false_alarm_rate)")
    if len(args.model) != 1:
        raise ConfigError(f"--model-only takes one --model (a box learns with one), got "
                          f"{len(args.model)}")


def run(args: argparse.Namespace) -> int:
    check_mode(args)
    entries = [model_entry(spec) for spec in args.model]
    if args.weights is not None:
        weights = read_weights(args.weights)
        missing = sorted({e.name for e in entries} - set(weights))
        if missing:
            raise ConfigError(f"--weights {args.weights}: no weight for model(s) {missing}")
        entries = [ModelEntry(**{**e.__dict__, "weight": weights[e.name]}) for e in entries]
    scoring = variant(args.variant or "knn")
    if args.k is not None:
        scoring = scoring.replace(k=args.k)
    false_alarm_rate = 0.01 if args.false_alarm_rate is None else args.false_alarm_rate
    if not 0.0 < false_alarm_rate < 1.0:
        raise ConfigError(f"--false-alarm-rate {false_alarm_rate}: must lie in (0, 1)")
    sign_key = load_private_key(args.sign) if args.sign is not None else None
    clips = None if args.model_only else read_dataset(args.data)
    out = build_bundle(args.out, entries, clips, scoring, false_alarm_rate,
                       cache_dir=args.cache, sign_key=sign_key)
    if args.tar:
        write_tar(out, out.with_name(out.name + ".tar"))
    signed = f", signed by key id {key_id(sign_key.public_key())}" if sign_key else ""
    kind = " (model-only: boxes learn their banks on site)" if args.model_only else ""
    print(f"bundle written to {out}{kind}{signed}")
    for line in test_figures(out, clips or []):
        print(line)
    return 0


def test_figures(bundle_dir: Path, clips: list[Clip]) -> list[str]:
    """DCASE figures of the bundle on the tree's labelled test clips, scored whole by the
    bundle's own detectors (the runtime the box runs), in percent with 90 % intervals."""
    test = [c for c in clips if c.split == "test" and c.label is not None]
    if not test:
        return []
    detectors = load_bundle(bundle_dir).detectors()
    lines = []
    for key, machine_id in sorted(machine_ids(test).items()):
        detector = detectors.get(machine_id)
        if detector is None:
            continue
        section = [c for c in test if (c.machine, c.section) == key]
        scores = []
        for clip in tqdm(section, desc=f"scoring {machine_id}", unit="clip", leave=False):
            audio = read_audio(clip.path, detector.sample_rate_hz)
            audio = trim_quiet_ends(audio, detector.sample_rate_hz, DEFAULT_TRIM_QUIET_DB)
            scores.append(detector.score(audio).score)
        figures = bootstrap_figures(scores, [c.is_anomaly for c in section],
                                    [c.domain for c in section])
        lines.append(
            f"{machine_id} test clips ({len(section)}): hmean {figures['hmean']} %, AUC source "
            f"{figures['auc_source'].value:.1f}, AUC target {figures['auc_target'].value:.1f}, "
            f"pAUC {figures['pauc'].value:.1f}"
        )
    return lines
