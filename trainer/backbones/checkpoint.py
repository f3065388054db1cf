"""Reading checkpoint files and loading them strictly, with errors that name every bad key.

A partial load that only prints a warning trains a half-random model without anyone noticing:
here a model is built from the checkpoint's own config and loaded with strict=True; the only
keys ever skipped are head keys a caller allow-lists on purpose, and those are logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from trainer.errors import CheckpointError

log = logging.getLogger(__name__)

MAX_LISTED_KEYS = 10


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist or is not a file; fix the path")
    return path


def read_torch_file(path: Path) -> Any:
    """The object in a torch .pt/.pth file, loaded without executing pickled code."""
    _require_file(path, "checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    # The weights-only unpickler fails on damaged bytes with whatever its parse hit first
    # (IndexError, KeyError, ... besides the usual ones): any failure means an unreadable file.
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc}). "
            "Fix: pass the .pt/.pth file saved by torch.save"
        ) from exc


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a .safetensors file."""
    _require_file(path, "weights file")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}). "
            "Fix: pass the model.safetensors saved with the model"
        ) from exc


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file such as a Hugging Face config.json."""
    _require_file(path, "config file")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); fix or replace the file") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def as_state_dict(value: Any, path: Path, where: str) -> dict[str, Tensor]:
    """Check that `value` is a mapping of names to tensors, naming the file when it is not."""
    if not isinstance(value, Mapping):
        raise CheckpointError(
            f"{path}: {where} should be a state dict (name -> tensor), got {type(value).__name__}"
        )
    bad = [str(k) for k, v in value.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: {where} has {len(bad)} entries that are not tensors: {_listed(bad)}"
        )
    return dict(value)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = f", ... ({len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else ""
    return f"[{shown}{more}]"


def load_strict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    path: Path,
    fix: str,
    ignored_prefixes: tuple[str, ...] = (),
) -> None:
    """Load `state_dict` into `model` strictly, or raise CheckpointError naming every problem.

    Keys the model lacks that start with one of `ignored_prefixes` (task heads) are dropped on
    purpose and logged. `fix` tells the user what to pass instead.
    """
    expected = model.state_dict()
    ignored = sorted(k for k in state_dict if k not in expected and k.startswith(ignored_prefixes))
    state = {k: v for k, v in state_dict.items() if k not in ignored}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{path}: checkpoint does not match the {type(model).__name__} built from its config: "
            f"{len(missing)} missing key(s) {_listed(missing)}; "
            f"{len(unexpected)} unexpected key(s) {_listed(unexpected)}; "
            f"{len(mismatched)} shape mismatch(es) {_listed(mismatched)}. Fix: {fix}"
        )
    if ignored:
        log.info("%s: ignoring %d head key(s) on purpose: %s", path, len(ignored), _listed(ignored))
    model.load_state_dict(state, strict=True)
