"""Export waveform-in embedding models to ONNX and TFLite, and check them against torch.

Every exported graph takes raw audio [1, samples] and returns a unit embedding [1, dim]; the
log-mel front end (strided conv1d DFT, trainer.frontend) is inside it, so trainer and daemon
cannot disagree about features. ONNX graphs keep the time axis dynamic (a whole DCASE clip
is one input, as `edge-trainer eval` embeds it); TFLite graphs have a static window.

An export is checked by embedding real clips through the exact runtime code the daemon uses
(edge_monitor embedders) and through torch, both after the same read_audio + preprocess:
cosine of the embeddings, and the change of AUC/pAUC/hmean when the same clips are scored.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edge_monitor.core.atomic import atomic_path
from edge_monitor.core.embedders.base import Embedder, l2_normalise
from edge_monitor.core.embedders.logmel_stats import LogMelStatsEmbedder
from edge_monitor.core.errors import ConfigError, RuntimeUnavailableError
from edge_monitor.core.scoring_config import ScoringConfig
from trainer.backbones.full_spectrum import FullSpectrumBranch
from trainer.dcase_data import Clip
from trainer.embed_cache import EmbedOptions, embed_file
from trainer.evaluate import evaluate_embeddings
from trainer.frontend import LogMel

log = logging.getLogger(__name__)

ONNX_OPSET = 18
MIN_EXPORT_SAMPLES = 4096
"""Shortest input an exported ONNX graph accepts (a few frames of any of our front ends)."""
MAX_EXPORT_S = 600.0


def unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows inside the graph (no torch.nn.functional.normalize: it exports the
    same, but spelled out it is obvious what the runtime computes)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)


class HeadsEmbedding(nn.Module):
    """A fine-tuned run (trainer.checkpoint_embedder): backbone, heads, per-head unit vectors
    concatenated and normalised again."""

    def __init__(self, backbone: nn.Module, heads: nn.ModuleDict) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        frames = self.backbone(wave)
        return unit(torch.cat([unit(head(frames)) for head in self.heads.values()], dim=1))


class LogMelStatsModule(nn.Module):
    """edge_monitor's `logmel-stats` as a graph: centred per-band mean and per-band spread."""

    def __init__(self, embedder: LogMelStatsEmbedder) -> None:
        super().__init__()
        self.frontend = LogMel(embedder.sample_rate_hz, embedder.n_fft, embedder.hop,
                               embedder.n_mels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = self.frontend(wave)  # [B, frames, mels]
        mean = spec.mean(dim=1)
        spread = torch.sqrt(torch.clamp((spec - mean[:, None, :]).square().mean(dim=1), min=0.0))
        return unit(torch.cat([mean - mean.mean(dim=1, keepdim=True), spread], dim=1))


class TorchEmbedder:
    """An Embedder around a waveform-in torch module, for checks, distillation and benches."""

    def __init__(
        self, module: nn.Module, name: str, sample_rate_hz: int, window_s: float, dim: int
    ) -> None:
        self.module = module.eval()
        self.name = name
        self.sample_rate_hz = int(sample_rate_hz)
        self.window_s = float(window_s)
        self.dim = int(dim)

    @torch.inference_mode()
    def embed(self, audio: np.ndarray) -> np.ndarray:
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None, :]
        return l2_normalise(self.module(wave)[0].numpy())


def torch_embedder_for(embedder: Any) -> TorchEmbedder:
    """The exportable torch module behind an embedder the trainer knows how to build."""
    if isinstance(embedder, TorchEmbedder):
        return embedder
    if isinstance(embedder, LogMelStatsEmbedder):
        module: nn.Module = LogMelStatsModule(embedder)
    elif hasattr(embedder, "backbone") and hasattr(embedder, "heads"):
        module = HeadsEmbedding(embedder.backbone, embedder.heads)
    else:
        raise TypeError(
            f"embedder {getattr(embedder, 'name', embedder)!r} has no exportable torch module; "
            "export a logmel-stats, fine-tuned run or distilled student embedder"
        )
    return TorchEmbedder(
        module, embedder.name, embedder.sample_rate_hz, embedder.window_s, embedder.dim
    )


def window_samples(embedder: Embedder) -> int:
    return round(embedder.window_s * embedder.sample_rate_hz)


def export_onnx(embedder: TorchEmbedder, path: Path) -> Path:
    """Write a waveform-in ONNX graph with a dynamic time axis, atomically."""
    example = torch.zeros(1, window_samples(embedder))
    samples = torch.export.Dim(
        "samples", min=MIN_EXPORT_SAMPLES, max=int(MAX_EXPORT_S * embedder.sample_rate_hz)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, quiet_exporters():
        program = torch.onnx.export(
            embedder.module.eval(),
            (example,),
            input_names=["wave"],
            output_names=["embedding"],
            dynamic_shapes={"wave": {1: samples}},
            dynamo=True,
            opset_version=ONNX_OPSET,
            external_data=False,
            verbose=False,
        )
        program.save(str(tmp), external_data=False)
    log.info("wrote %s", path)
    return path


def import_litert_torch() -> Any:
    try:
        return importlib.import_module("litert_torch")
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "TFLite export needs litert-torch; install the optional extra with "
            "`pip install 'edge-machine-sound-monitor[tflite-export]'` (about 2 GB: jax, "
            "litert-converter; it pins typing-extensions<4.13, so a separate venv is safest)"
        ) from exc


def check_tflite_convertible(embedder: TorchEmbedder) -> None:
    """Refuse, before any work, a model litert-torch cannot convert: a full-spectrum branch."""
    if any(isinstance(m, FullSpectrumBranch) for m in embedder.module.modules()):
        raise ConfigError(
            f"model {embedder.name!r}: its full-spectrum branch takes a DFT of the whole input, "
            "which litert-torch cannot convert (complex tensors: 'Unsupported ir element type: "
            "complex<f32>'); export it with --formats onnx or onnx-int8"
        )


def export_tflite(embedder: TorchEmbedder, path: Path, int8_weights: bool = True) -> Path:
    """Write a waveform-in TFLite model with a static window (litert-torch), atomically.

    With `int8_weights` the weights of fully connected and convolution layers after the front
    end are stored as int8 (dynamic-range quantisation through ai-edge-quantizer); the DFT
    and mel weights stay float so the features keep their precision.
    """
    check_tflite_convertible(embedder)
    litert_torch = import_litert_torch()
    example = torch.zeros(1, window_samples(embedder))
    edge_model = litert_torch.convert(embedder.module.eval(), (example,))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        edge_model.export(str(tmp))
        if int8_weights:
            from trainer.quantize import quantize_tflite_weights

            quantize_tflite_weights(tmp, tmp)
    log.info("wrote %s", path)
    return path


@dataclass(frozen=True)
class ExportCheck:
    """How an exported model compares with torch on real clips."""

    clips: int
    cosine_mean: float
    cosine_min: float
    hmean_torch: float
    hmean_export: float
    auc_source_change: float
    auc_target_change: float
    pauc_change: float

    @property
    def hmean_change(self) -> float:
        return self.hmean_export - self.hmean_torch

    def describe(self) -> str:
        return (
            f"cosine to torch over {self.clips} clips: mean {self.cosine_mean:.6f}, "
            f"min {self.cosine_min:.6f}; hmean {100 * self.hmean_torch:.2f}% -> "
            f"{100 * self.hmean_export:.2f}% ({100 * self.hmean_change:+.2f} points); AUC source "
            f"{100 * self.auc_source_change:+.2f}, AUC target {100 * self.auc_target_change:+.2f}, "
            f"pAUC {100 * self.pauc_change:+.2f} points"
        )


def embed_clips(embedder: Embedder, clips: Sequence[Clip], options: EmbedOptions) -> np.ndarray:
    """Embeddings of clips through read_audio + preprocess + embedder, as eval and daemon do."""
    bar = tqdm(clips, desc=f"embedding ({embedder.name})", unit="clip", leave=False)
    return np.stack([embed_file(c.path, embedder, options) for c in bar])


THIRD_PARTY_LOGGERS = ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Keep the exporters' and quantiser's chatter (per-pass INFO lines, missing torchvision
    ops, deprecation notices) out of the output; their warnings about our graph still show."""
    loggers = [logging.getLogger(name) for name in THIRD_PARTY_LOGGERS]
    root = logging.getLogger()
    levels = [(lg, lg.level) for lg in [*loggers, root]]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        root.setLevel(max(root.level, logging.WARNING))  # onnxruntime.quantization logs to root
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in levels:
            lg.setLevel(level)


def check_export(
    reference: Embedder,
    exported: Embedder,
    train_clips: Sequence[Clip],
    test_clips: Sequence[Clip],
    options: EmbedOptions | None = None,
    scoring: ScoringConfig | None = None,
    reference_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
) -> ExportCheck:
    """Embed the same clips both ways; compare vectors and the DCASE figures they give.

    `reference_embeddings` (train, test) avoids re-running torch when several exports of one
    model are checked.
    """
    options = options or EmbedOptions()
    scoring = scoring or ScoringConfig()
    if reference_embeddings is None:
        ref_train = embed_clips(reference, train_clips, options)
        ref_test = embed_clips(reference, test_clips, options)
    else:
        ref_train, ref_test = reference_embeddings
    exp_train = embed_clips(exported, train_clips, options)
    exp_test = embed_clips(exported, test_clips, options)
    reference_all = l2_normalise(np.vstack([ref_train, ref_test]))
    cos = np.sum(reference_all * l2_normalise(np.vstack([exp_train, exp_test])), axis=1)
    variants = {"knn": scoring}
    before = evaluate_embeddings(train_clips, ref_train, test_clips, ref_test, variants)
    after = evaluate_embeddings(train_clips, exp_train, test_clips, exp_test, variants)
    a, b = before.overall("knn"), after.overall("knn")
    return ExportCheck(
        clips=len(cos),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        hmean_torch=a.hmean,
        hmean_export=b.hmean,
        auc_source_change=b.auc_source - a.auc_source,
        auc_target_change=b.auc_target - a.auc_target,
        pauc_change=b.pauc - a.pauc,
    )
