"""A trained run directory as an Embedder: waveform -> backbone -> pooling/FC -> unit vector.

The run directory holds plain data only (no pickled classes), so it loads with
`torch.load(weights_only=True)` and survives refactoring:

    RUN/recipe.yaml      the recipe it was trained with
    RUN/embedder.json    format, backbone name + config, head sizes, head names, rate, window,
                         embedding window (0 = whole clip, else the average over windows), dim
    RUN/model.pt         {"backbone": state_dict, "heads": {name: state_dict}}
    RUN/classes.json     the class names each head was trained on (with data.tasks, each
                         task's under head:<task>)

Several heads (the dual-head strategy) give one embedding: each head's output is L2-normalised,
they are concatenated and normalised again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_monitor.core.atomic import atomic_path, atomic_write_text
from edge_monitor.core.embedders.base import l2_normalise
from edge_monitor.core.errors import ConfigError
from trainer.backbones import Backbone, build_backbone
from trainer.backbones.checkpoint import as_state_dict, load_strict, read_torch_file
from trainer.errors import CheckpointError
from trainer.heads import EmbeddingHead

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
META_FILE = "embedder.json"
CLASSES_FILE = "classes.json"
RECIPE_FILE = "recipe.yaml"
"""Written by `finetune` beside the model: the recipe the run was trained with."""
DEFAULT_WINDOW_S = 10.0
"""Nominal window when the recipe embeds whole clips (the daemon's window length)."""
MAX_CHUNK_S = 30.0
"""Longer input is embedded in chunks whose frame features are pooled together."""


def save_embedding_model(
    run_dir: Path,
    name: str,
    backbone_name: str,
    backbone_size: str | Mapping[str, Any],
    backbone: Backbone,
    heads: Mapping[str, EmbeddingHead],
    head_sizes: Mapping[str, int],
    classes: Mapping[str, list[str]],
    embed_window_s: float,
) -> None:
    """Write model.pt, embedder.json and classes.json atomically into `run_dir`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "heads": {
            head: {k: v.detach().cpu() for k, v in module.state_dict().items()}
            for head, module in heads.items()
        },
    }
    with atomic_path(run_dir / MODEL_FILE) as tmp:
        torch.save(state, tmp)
    config = backbone.config_values()
    first = next(iter(heads.values()))
    meta = {
        "format": FORMAT_VERSION,
        "name": name,
        "backbone": {
            "name": backbone_name,
            "size": config if config is not None else backbone_size,
        },
        "head": dict(head_sizes),
        "heads": list(heads),
        "sample_rate_hz": int(backbone.sample_rate_hz),
        "window_s": DEFAULT_WINDOW_S,
        "embed_window_s": float(embed_window_s),
        "dim": int(first.embed_dim),
    }
    atomic_write_text(run_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    atomic_write_text(run_dir / CLASSES_FILE, json.dumps(dict(classes), indent=2) + "\n")


def _read_meta(run_dir: Path) -> dict[str, Any]:
    path = run_dir / META_FILE
    if not path.is_file():
        raise ConfigError(
            f"{run_dir}: no {META_FILE}; pass a run directory written by `edge-trainer finetune` "
            "after it finished (a run that is still training has none yet)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}); train the run again") from exc
    required = {"format", "name", "backbone", "head", "heads", "sample_rate_hz", "window_s", "dim"}
    if not isinstance(meta, dict) or not required <= set(meta):
        found = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: needs keys {sorted(required)}, found {found}")
    if meta["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format {meta['format']!r}, this trainer reads {FORMAT_VERSION}; "
            "use the trainer version that wrote it"
        )
    return meta


class CheckpointEmbedder:
    """An Embedder backed by a fine-tuned torch model on the CPU."""

    def __init__(
        self,
        run_dir: Path,
        meta: dict[str, Any],
        backbone: Backbone,
        heads: dict[str, EmbeddingHead],
        identity: str,
    ) -> None:
        self.run_dir = run_dir
        self.name = str(meta["name"])
        self.sample_rate_hz = int(meta["sample_rate_hz"])
        self.window_s = float(meta["window_s"])
        self.embed_window_s = float(meta.get("embed_window_s", 0.0))
        self.dim = int(meta["dim"]) * len(heads)
        self.identity = identity
        self.backbone = backbone.eval()
        self.heads = nn.ModuleDict(heads).eval()

    @torch.inference_mode()
    def embed_batch(self, waves: torch.Tensor) -> np.ndarray:
        """Unit embeddings [B, dim] of equal-length waves [B, T]."""
        frames = self.backbone(waves.float())
        parts = [nn.functional.normalize(head(frames), dim=1) for head in self.heads.values()]
        return l2_normalise(torch.cat(parts, dim=1).numpy())

    @torch.inference_mode()
    def embed(self, audio: np.ndarray) -> np.ndarray:
        """One unit vector for mono float32 `audio` at `sample_rate_hz`, whatever its length.

        With an embedding window (the training crop length, say) the audio is cut into
        consecutive windows, embedded as a batch, and their unit vectors averaged; otherwise
        the whole clip's frames are pooled at once.
        """
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        window = round(self.embed_window_s * self.sample_rate_hz)
        if window > 0 and wave.shape[0] >= 2 * window:
            count = wave.shape[0] // window
            vectors = self.embed_batch(wave[: count * window].reshape(count, window))
            return l2_normalise(vectors.mean(axis=0))
        chunk = int(MAX_CHUNK_S * self.sample_rate_hz)
        pieces = [wave[i : i + chunk] for i in range(0, max(1, wave.shape[0]), chunk)]
        if len(pieces) > 1 and pieces[-1].shape[0] < chunk // 4:
            pieces = pieces[:-1]
        frames = torch.cat([self.backbone(p[None, :]) for p in pieces], dim=1)
        parts = [nn.functional.normalize(head(frames), dim=1) for head in self.heads.values()]
        return l2_normalise(torch.cat(parts, dim=1)[0].numpy())


def load_checkpoint_embedder(path: str | Path) -> CheckpointEmbedder:
    """Rebuild the embedder of a finished run directory, loading every weight strictly."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: a checkpoint is a run directory (RUN of finetune --out)")
    meta = _read_meta(run_dir)
    backbone_meta = meta["backbone"]
    backbone = build_backbone(backbone_meta["name"], backbone_meta["size"])
    model_path = run_dir / MODEL_FILE
    content = read_torch_file(model_path)
    if not isinstance(content, Mapping) or set(content) != {"backbone", "heads"}:
        raise CheckpointError(
            f"{model_path}: expected a dict with 'backbone' and 'heads'; train the run again"
        )
    load_strict(
        backbone,
        as_state_dict(content["backbone"], model_path, "'backbone'"),
        model_path,
        fix="the weights do not match embedder.json; keep the run directory's files together",
    )
    sizes = meta["head"]
    heads: dict[str, EmbeddingHead] = {}
    for name in meta["heads"]:
        if name not in content["heads"]:
            raise CheckpointError(f"{model_path}: no weights for head {name!r}")
        head = EmbeddingHead(
            backbone.dim, sizes["attention_dim"], sizes["hidden_dim"], sizes["embed_dim"]
        )
        load_strict(
            head,
            as_state_dict(content["heads"][name], model_path, f"head {name!r}"),
            model_path,
            fix="the head weights do not match embedder.json; keep the run's files together",
        )
        heads[name] = head
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    log.info("loaded %s from %s (%d head(s))", meta["name"], run_dir, len(heads))
    return CheckpointEmbedder(run_dir, meta, backbone, heads, identity=digest)
