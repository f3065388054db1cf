"""`edge-trainer export`: waveform-in ONNX fp32 / ONNX INT8 / TFLite, each checked on real clips.

    edge-trainer export --out DIR (--embedder logmel-stats | --checkpoint RUN|RELEASE.pt
                        | --student FILE) [--pooling LAYER:STAT,...]
                        [--formats onnx,onnx-int8,tflite] [--int8 weights|static|dynamic]
                        --data ROOT

writes DIR/<name>.onnx, <name>.int8.onnx, <name>.tflite and DIR/export.json (what
`edge-trainer bundle` reads), and prints, per format, the cosine to torch and the change of
AUC/pAUC/hmean on the data set's clips.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.bank import sha256_file
from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.embedders.runtimes import load_embedder
from edge_monitor.core.errors import ConfigError
from edge_monitor.core.preprocess import PreprocessConfig, preprocess
from trainer.dcase_data import Clip, read_dataset
from trainer.embed_cache import EmbedOptions
from trainer.embedder_factory import make_embedder
from trainer.export import (
    TorchEmbedder,
    check_export,
    check_tflite_convertible,
    embed_clips,
    export_onnx,
    export_tflite,
    quiet_exporters,
    torch_embedder_for,
    window_samples,
)
from trainer.quantize import ONNX_INT8_MODES, quantize_onnx

NAME = "export"
HELP = "Export a model to waveform-in ONNX (fp32, INT8) and TFLite, checked against torch."
log = logging.getLogger(__name__)
FORMATS = ("onnx", "onnx-int8", "tflite")
EXPORT_JSON = "export.json"


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embedder", help="a built-in embedder, e.g. logmel-stats")
    source.add_argument("--checkpoint", type=Path, metavar="RUN",
                        help="a fine-tuned run dir, or a pretrained release file used frozen")
    parser.add_argument("--pooling", default=None, metavar="LAYER:STAT,...",
                        help="layers and statistics of a frozen release file's embedding")
    source.add_argument("--student", type=Path, metavar="FILE", help="a distilled student file")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--name", default=None, help="model name in file names and bundles")
    parser.add_argument("--formats", default="onnx,onnx-int8",
                        help=f"comma-separated subset of {FORMATS}")
    parser.add_argument("--int8", choices=ONNX_INT8_MODES, default="weights",
                        help="ONNX INT8: weights (int8 weights, float arithmetic; the default: "
                        "closest to fp32), static (activations calibrated on training windows: "
                        "int8 arithmetic, for CPUs where it is faster) or dynamic")
    parser.add_argument("--no-tflite-int8", action="store_true",
                        help="keep TFLite weights in float")
    parser.add_argument("--data", type=Path, required=True, metavar="ROOT",
                        help="DCASE tree whose clips check the exports (and calibrate INT8)")
    parser.add_argument("--check-train", type=int, default=200,
                        help="training clips (evenly spread) for the check's banks")
    parser.add_argument("--calibration", type=int, default=32,
                        help="training clips used as static INT8 calibration windows")


def load_torch_model(args: argparse.Namespace) -> TorchEmbedder:
    if args.student is not None:
        from trainer.student import load_student, student_embedder

        return student_embedder(load_student(args.student), args.name or "student")
    embedder = torch_embedder_for(make_embedder(args.embedder, args.checkpoint, args.pooling))
    if args.name:
        embedder.name = args.name
    return embedder


def spread(clips: list[Clip], count: int) -> list[Clip]:
    """`count` clips spread evenly over the list, keeping every target-domain clip."""
    target = [c for c in clips if c.domain == "target"]
    source = [c for c in clips if c.domain != "target"]
    keep = max(0, count - len(target))
    if len(source) > keep:
        source = [source[i] for i in np.linspace(0, len(source) - 1, keep).round().astype(int)]
    return source + target


def calibration_windows(embedder: Embedder, clips: list[Clip], count: int) -> list[np.ndarray]:
    """Preprocessed windows of `window_s` from training clips, as the daemon would feed."""
    windows = []
    length = window_samples(embedder)
    for clip in spread(clips, count):
        audio = read_audio(clip.path, embedder.sample_rate_hz)[:length]
        windows.append(preprocess(audio, embedder.sample_rate_hz, PreprocessConfig()).audio)
    return windows


def _entry(path: Path, model: TorchEmbedder, name: str, runtime: str, precision: str,
           out: Path) -> dict[str, Any]:
    return {
        "name": name, "runtime": runtime, "file": path.relative_to(out).as_posix(),
        "sha256": sha256_file(path), "sample_rate_hz": model.sample_rate_hz,
        "window_s": model.window_s, "dim": model.dim, "precision": precision,
    }


def run(args: argparse.Namespace) -> int:
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ConfigError(f"--formats {args.formats!r}: choose from {FORMATS}")
    model = load_torch_model(args)
    if "tflite" in formats:
        check_tflite_convertible(model)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    clips = read_dataset(args.data)
    train = spread([c for c in clips if c.split == "train"], args.check_train)
    test = [c for c in clips if c.split == "test" and c.label is not None]
    options = EmbedOptions()
    reference = (embed_clips(model, train, options), embed_clips(model, test, options))
    entries = []
    onnx_path = out / f"{model.name}.onnx"
    if "onnx" in formats or "onnx-int8" in formats:
        export_onnx(model, onnx_path)
    for fmt in formats:
        if fmt == "onnx":
            path, runtime, precision = onnx_path, "onnx", "fp32"
        elif fmt == "onnx-int8":
            path, runtime = out / f"{model.name}.int8.onnx", "onnx"
            precision = "int8-weights" if args.int8 == "weights" else "int8"
            calibration = (
                calibration_windows(model, [c for c in clips if c.split == "train"],
                                    args.calibration)
                if args.int8 == "static" else None
            )
            with quiet_exporters():
                quantize_onnx(onnx_path, path, args.int8, calibration)
        else:
            int8 = not args.no_tflite_int8
            path, runtime = out / f"{model.name}.tflite", "tflite"
            precision = "int8-weights" if int8 else "fp32"
            with quiet_exporters():
                export_tflite(model, path, int8_weights=int8)
        name = model.name if fmt == "onnx" else f"{model.name}-{fmt}"
        exported = _runtime_embedder(path, runtime, name, model)
        check = check_export(model, exported, train, test, options, reference_embeddings=reference)
        print(f"{name} ({runtime}, {precision}): {check.describe()}")
        entry = _entry(path, model, name, runtime, precision, out)
        entry["check"] = {**check.__dict__, "hmean_change": check.hmean_change}
        entries.append(entry)
    atomic_write_text(out / EXPORT_JSON, json.dumps({"models": entries}, indent=2) + "\n")
    log.info("wrote %s", out / EXPORT_JSON)
    return 0


def _runtime_embedder(path: Path, runtime: str, name: str, model: TorchEmbedder) -> Embedder:
    return load_embedder(runtime, name, model.sample_rate_hz, model.window_s, model.dim,
                         path=path)
