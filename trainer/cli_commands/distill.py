"""`edge-trainer distill`: train the small edge student on the teachers' embedding geometry.

    edge-trainer distill --data ROOT --teacher logmel-stats --teacher resnet=runs/resnet \
        [--weights acp.json] [--unlabelled DIR ...] [--teachers-only] --out DIR

writes DIR/teachers.npz (stored teacher embeddings, by absolute clip path; pass it back with
--teacher-embeddings to train another student without the teachers, or name it in a fine-tune
recipe's `distill` section to distil into a pretrained backbone), DIR/student.pt and
DIR/distill.json, and prints the student's DCASE figures next to those of the teachers'
combined geometry. With --teachers-only it stops after teachers.npz and that figure.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.audio_io import SUPPORTED_SUFFIXES
from edge_monitor.core.errors import ConfigError
from edge_monitor.core.scoring_config import ScoringConfig
from trainer.cli_commands.bundle import read_weights
from trainer.dcase_data import Clip, read_dataset
from trainer.distill import (
    DistillSettings,
    TeacherTargets,
    feature_statistics,
    log_mel_features,
    train_student,
)
from trainer.embed_cache import EmbeddingCache, EmbedOptions
from trainer.evaluate import evaluate_embeddings
from trainer.export import embed_clips
from trainer.model_spec import load_embedder
from trainer.student import build_student, parameter_count, save_student, student_embedder

NAME = "distill"
HELP = "Distil teachers' embedding geometry into a small student (<= ~10M parameters)."
log = logging.getLogger(__name__)
TEACHERS_FILE = "teachers.npz"
STUDENT_FILE = "student.pt"
MAX_PARAMETERS = 10_000_000


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, metavar="ROOT")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--teacher", action="append", default=[], metavar="[NAME=]SPEC",
                        help="builtin, run dir, student .pt or export.json[:MODEL]; repeat")
    parser.add_argument("--teacher-embeddings", type=Path, default=None,
                        help="a teachers.npz from an earlier distill run (skips the teachers)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="acp.json: teacher weights (default uniform)")
    parser.add_argument("--unlabelled", type=Path, action="append", default=[], metavar="DIR",
                        help="extra unlabelled audio to train on; repeat")
    parser.add_argument("--teachers-only", action="store_true",
                        help="write teachers.npz and the teachers' figure, train no student")
    parser.add_argument("--channels", default="16,32,64,128", help="student CNN channels")
    parser.add_argument("--n-mels", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=DistillSettings.epochs)
    parser.add_argument("--batch-size", type=int, default=DistillSettings.batch_size)
    parser.add_argument("--lr", type=float, default=DistillSettings.lr)
    parser.add_argument("--relational-weight", type=float,
                        default=DistillSettings.relational_weight)
    parser.add_argument("--crop-s", type=float, default=DistillSettings.crop_s)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="teacher embedding cache")


def _unlabelled_paths(directories: list[Path]) -> list[Path]:
    paths = []
    for directory in directories:
        found = sorted(p for p in directory.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES)
        if not found:
            raise ConfigError(f"--unlabelled {directory}: no .wav or .flac files under it")
        paths += found
    return paths


def teacher_targets(args: argparse.Namespace, paths: list[Path]) -> TeacherTargets:
    if args.teacher_embeddings is not None:
        return TeacherTargets.load(args.teacher_embeddings).select(
            paths, f"--teacher-embeddings {args.teacher_embeddings}", "rerun with --teacher"
        )
    if not args.teacher:
        raise ConfigError("give --teacher (one or more) or --teacher-embeddings")
    embedders = [load_embedder(spec) for spec in args.teacher]
    names = [e.name for e in embedders]
    weights = np.full(len(names), 1.0 / len(names))
    if args.weights is not None:
        given = read_weights(args.weights)
        missing = sorted(set(names) - set(given))
        if missing:
            raise ConfigError(f"--weights {args.weights}: no weight for teacher(s) {missing}")
        weights = np.array([given[n] for n in names]) / sum(given[n] for n in names)
    options = EmbedOptions()
    vectors = []
    for embedder in embedders:
        if args.cache is not None:
            vectors.append(EmbeddingCache(args.cache, embedder, options).embed_paths(paths))
        else:
            clips = [Clip(p, "", "00", "train", None, None, 0) for p in paths]
            vectors.append(embed_clips(embedder, clips, options))
    return TeacherTargets([str(p) for p in paths], names, weights, vectors)


def _hmean(clips: list[Clip], vectors: np.ndarray) -> float:
    train = [i for i, c in enumerate(clips) if c.split == "train"]
    test = [i for i, c in enumerate(clips) if c.split == "test" and c.label is not None]
    if not test:
        return float("nan")
    result = evaluate_embeddings([clips[i] for i in train], vectors[train],
                                 [clips[i] for i in test], vectors[test],
                                 {"knn": ScoringConfig()})
    return result.overall("knn").hmean


def run(args: argparse.Namespace) -> int:
    clips = read_dataset(args.data)
    extra = _unlabelled_paths(args.unlabelled)
    all_paths = [Path(p).resolve() for p in [c.path for c in clips] + extra]
    teachers = teacher_targets(args, all_paths)
    args.out.mkdir(parents=True, exist_ok=True)
    teachers.save(args.out / TEACHERS_FILE)
    targets = teachers.targets()
    figures: dict[str, object] = {
        "teachers_geometry_hmean": _hmean(clips, targets[: len(clips)]),
        "teachers": dict(zip(teachers.names, map(float, teachers.weights), strict=True)),
    }
    if args.teachers_only:
        atomic_write_text(args.out / "distill.json", json.dumps(figures, indent=2) + "\n")
        print(f"teachers' combined geometry: hmean {100 * figures['teachers_geometry_hmean']:.1f}"
              f" %; wrote {args.out / TEACHERS_FILE}")
        return 0
    train_rows = [i for i, c in enumerate(clips) if c.split == "train"]
    train_rows += list(range(len(clips), len(all_paths)))
    channels = [int(c) for c in args.channels.split(",") if c.strip()]
    values = {"channels": channels, "n_mels": args.n_mels, "dim": int(targets.shape[1])}
    probe = build_student(values)
    train_paths = [all_paths[i] for i in train_rows]
    features = log_mel_features(probe, train_paths, EmbedOptions().preprocess)
    mean, std = feature_statistics(features)
    model = build_student({**values, "mel_mean": mean, "mel_std": std})
    params = parameter_count(model)
    if params > MAX_PARAMETERS:
        raise ConfigError(f"student has {params} parameters (> {MAX_PARAMETERS}); use fewer "
                          "--channels")
    log.info("student: %.2f M parameters, %d training clips, target dim %d",
             params / 1e6, len(train_rows), targets.shape[1])
    settings = DistillSettings(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        relational_weight=args.relational_weight, crop_s=args.crop_s, threads=args.threads,
    )
    history = train_student(model, features, targets[train_rows], settings)
    save_student(model, args.out / STUDENT_FILE)
    student_vectors = embed_clips(student_embedder(model), clips, EmbedOptions())
    figures.update(student_hmean=_hmean(clips, student_vectors), parameters=params,
                   loss_per_epoch=history)
    atomic_write_text(args.out / "distill.json", json.dumps(figures, indent=2) + "\n")
    print(f"student ({params / 1e6:.2f} M parameters): hmean {figures['student_hmean']:.4f}; "
          f"teachers' combined geometry: {figures['teachers_geometry_hmean']:.4f}")
    return 0
