"""Build an Embedder from a name or a trained checkpoint, for evaluation and bank building."""

from __future__ import annotations

from pathlib import Path

from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.embedders.logmel_stats import NAME as LOGMEL_STATS
from edge_monitor.core.embedders.runtimes import BUILTIN_EMBEDDERS
from edge_monitor.core.errors import ConfigError

DEFAULT_EMBEDDER = LOGMEL_STATS
BUILTIN = BUILTIN_EMBEDDERS
"""The runtime's registry of built-in embedders: one list for the daemon and the trainer."""


def _load_checkpoint(checkpoint: Path, pooling: str | None) -> Embedder:
    if not checkpoint.exists():
        raise ConfigError(f"--checkpoint {checkpoint}: no such file or run directory")
    if checkpoint.is_file():
        from trainer.pretrained_embedder import (
            DEFAULT_POOLING,
            is_release_file,
            load_pretrained_embedder,
        )

        if not is_release_file(checkpoint):
            raise ConfigError(
                f"--checkpoint {checkpoint}: a file must be an EfficientAT release state dict "
                "(mn<XX>_as*.pt); a fine-tuned model is its run directory (finetune --out)"
            )
        return load_pretrained_embedder(checkpoint, pooling or DEFAULT_POOLING)
    if pooling is not None:
        raise ConfigError(
            f"--pooling applies to a pretrained release file, not to the run {checkpoint}"
        )
    from trainer.checkpoint_embedder import load_checkpoint_embedder

    return load_checkpoint_embedder(checkpoint)


def make_embedder(
    name: str | None = None, checkpoint: Path | None = None, pooling: str | None = None
) -> Embedder:
    """A built-in embedder by name, or the embedder a checkpoint rebuilds.

    A checkpoint is a fine-tuned run directory or a pretrained release file used frozen, with
    `pooling` choosing its layers (trainer.pretrained_embedder). With a checkpoint the
    checkpoint defines the model; `name`, if given, must match it.
    """
    if checkpoint is not None:
        embedder = _load_checkpoint(Path(checkpoint), pooling)
        if name is not None and name != embedder.name:
            raise ConfigError(
                f"--embedder {name!r} does not match the checkpoint's embedder "
                f"{embedder.name!r} ({checkpoint}); drop --embedder or pick the matching run"
            )
        return embedder
    name = name or DEFAULT_EMBEDDER
    try:
        factory = BUILTIN[name]
    except KeyError:
        raise ConfigError(
            f"--embedder {name!r} is unknown; built-in choices are {sorted(BUILTIN)} "
            "(a trained model is given with --checkpoint RUN)"
        ) from None
    return factory()
