"""`edge-monitor score`: score audio files with a bundle, through the daemon's own code path.

    edge-monitor score --bundle BUNDLE --out scores.csv FILE_OR_DIR...

Each file is read at the model rate (`read_audio`), conditioned and scored by the machine's
Detector exactly as the daemon scores a window (the whole file is one window, as
`edge-trainer eval` embeds whole clips), and written as `filename,score` rows.

A file the daemon would not judge is not scored: one that cannot be read (empty, garbage,
truncated, NaN or infinite samples, a rate outside 16..384 kHz) or whose audio fails the
daemon's own input check (`edge_monitor.core.preprocess.check_input`: clipped, silent).
Each is logged with its reason; the other files are scored and written, and the command
exits 2 with the count.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import tempfile
from pathlib import Path

from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.audio_io import SUPPORTED_SUFFIXES, read_audio
from edge_monitor.core.bundle import load_bundle
from edge_monitor.core.errors import AudioFileError, ConfigError
from edge_monitor.core.preprocess import check_input

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory or .tar")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (filename,score)")
    parser.add_argument("--machine", default=None,
                        help="machine of the bundle to score with (needed when it has several)")
    parser.add_argument("--providers", default="cpu",
                        help="comma-separated onnxruntime providers: cpu, cuda, tensorrt")
    parser.add_argument("--threads", type=int, default=None, help="inference threads per model")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="WAV/FLAC files, or directories of them")


def expand_files(items: list[Path]) -> list[Path]:
    """Files as given; a directory contributes its audio files in name order."""
    files: list[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES)
            if not found:
                raise AudioFileError(f"{item}: directory holds no .wav or .flac files")
            files += found
        else:
            files.append(item)
    return files


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="edge-monitor-score-") as scratch:
        return _score(args, Path(scratch))


def _score(args: argparse.Namespace, scratch: Path) -> int:
    bundle = load_bundle(args.bundle, extract_to=scratch)
    machines = list(bundle.banks)
    if not machines:
        raise ConfigError(
            f"{args.bundle}: a model-only bundle has no banks to score against (a box learns "
            "them on site); score with a bundle built with --data, or let the daemon learn"
        )
    machine = args.machine
    if machine is None:
        if len(machines) > 1:
            raise ConfigError(f"--machine is needed: the bundle holds machines {machines}")
        machine = machines[0]
    elif machine not in machines:
        raise ConfigError(f"--machine {machine!r} is not in the bundle; choose from {machines}")
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    detector = bundle.detectors(providers, args.threads)[machine]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filename", "score"])
    files = expand_files(args.files)
    refused: list[str] = []
    for path in files:
        try:
            audio = read_audio(path, detector.sample_rate_hz)
        except AudioFileError as exc:
            refused.append(str(exc))
            log.error("not scored: %s", exc)
            continue
        problem = check_input(audio, detector.preprocess_config).problem(
            detector.preprocess_config)
        if problem is not None:
            refused.append(f"{path}: {problem}")
            log.error("not scored, as the daemon would not judge it: %s: %s", path, problem)
            continue
        detection = detector.score(audio)
        writer.writerow([path.name, repr(detection.score)])
    atomic_write_text(args.out, buffer.getvalue())
    log.info("scored %d file(s) with machine %s of bundle %s", len(files) - len(refused),
             machine, bundle.version)
    if refused:
        raise AudioFileError(
            f"{len(refused)} of {len(files)} file(s) not scored (first: {refused[0][:300]}); "
            f"the others are in {args.out}"
        )
    return 0
