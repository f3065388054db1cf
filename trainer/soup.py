"""A uniform weight soup: the elementwise mean of the weights of runs fine-tuned from one start.

Runs that start from the same weights (the same pretrained checkpoint and the same draw of the
new layers, `optim.init_seed`) and differ in their batches stay in one basin of the loss, so
their average is one model that behaves like their ensemble at the cost of one (Wortsman et
al. 2022, "Model soups"). Networks that started apart are not averaged: their channels need
not correspond, and the mean of unrelated filters is noise, so the recipes are checked.
BatchNorm running statistics are averaged like the weights (as `optim.average_decay` does over
one run); integer buffers (BatchNorm's batch counters) are taken from the first run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.errors import ConfigError
from trainer.checkpoint_embedder import (
    CLASSES_FILE,
    META_FILE,
    RECIPE_FILE,
    load_checkpoint_embedder,
    save_embedding_model,
)
from trainer.errors import CheckpointError
from trainer.recipe import load_recipe

log = logging.getLogger(__name__)

SOUP_FILE = "soup.json"
"""Written beside the model: which runs went in, so the soup can be traced and rebuilt."""


def _start(run_dir: Path) -> tuple[dict[str, Any], int]:
    """The recipe's backbone section and the seed of the initial weights of a run."""
    path = run_dir / RECIPE_FILE
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist; a soup member is a run directory of `edge-trainer finetune` "
            "(it says where the run started)"
        )
    recipe = load_recipe(path)
    backbone = recipe.backbone.model_dump(mode="json")
    if backbone.get("checkpoint"):  # one file, however the recipe's path spelled it
        backbone["checkpoint"] = str(Path(backbone["checkpoint"]).resolve())
    return backbone, recipe.optim.weights_seed


def check_same_start(run_dirs: Sequence[Path]) -> None:
    """Refuse runs that did not start from the same weights, naming the first that differs."""
    first_backbone, first_seed = _start(run_dirs[0])
    for run_dir in run_dirs[1:]:
        backbone, seed = _start(run_dir)
        differing = sorted(
            key for key in {*backbone, *first_backbone}
            if backbone.get(key) != first_backbone.get(key)
        )
        if differing:
            key = differing[0]
            raise ConfigError(
                f"{run_dir}: backbone.{key} is {backbone.get(key)!r}, {run_dirs[0]}'s is "
                f"{first_backbone.get(key)!r}; a soup averages runs of one backbone from one "
                "checkpoint"
            )
        if seed != first_seed:
            raise ConfigError(
                f"{run_dir}: its new layers were initialised with seed {seed}, {run_dirs[0]}'s "
                f"with {first_seed}; train the members with one optim.init_seed (and different "
                "optim.seed) so that their weights can be averaged"
            )


def _description(run_dir: Path) -> tuple[dict[str, Any], Any]:
    """A member's embedder.json and classes.json, read once."""
    values = []
    for name in (META_FILE, CLASSES_FILE):
        path = run_dir / name
        try:
            values.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"{path}: unreadable ({exc}); keep the run directory's files together or train "
                "the run again"
            ) from exc
    return values[0], values[1]


def _check_same_model(run_dirs: Sequence[Path], described: Sequence[tuple[dict, Any]]) -> None:
    """Members must describe the same model: embedder.json (but its name) and classes.json."""
    (meta, classes), first = described[0], run_dirs[0]
    for run_dir, (other_meta, other_classes) in zip(run_dirs[1:], described[1:], strict=True):
        if {**other_meta, "name": None} != {**meta, "name": None}:
            raise CheckpointError(
                f"{run_dir / META_FILE} describes another model than {first / META_FILE}; "
                "a soup averages runs of one architecture and one head layout"
            )
        if other_classes != classes:
            raise CheckpointError(
                f"{run_dir / CLASSES_FILE}: other classes than {first}; train the members "
                "on the same data"
            )


def average_state_dicts(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Elementwise mean of floating tensors (computed in float64); integer tensors of the first."""
    averaged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            total = sum(state[key].double() for state in states)
            averaged[key] = (total / len(states)).to(value.dtype)
        else:
            averaged[key] = value.clone()
    return averaged


def make_soup(run_dirs: Sequence[Path], out: Path) -> Path:
    """Average the runs' weights into a new run directory `out` that eval/export/bundle read."""
    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) < 2:
        raise ConfigError("a soup needs at least two --run directories")
    if len({r.resolve() for r in run_dirs}) < len(run_dirs):
        raise ConfigError("a --run is given twice; each member counts once in the mean")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty; pick a new directory")
    check_same_start(run_dirs)
    members = [load_checkpoint_embedder(run_dir) for run_dir in run_dirs]
    described = [_description(run_dir) for run_dir in run_dirs]
    _check_same_model(run_dirs, described)
    base = members[0]
    base.backbone.load_state_dict(
        average_state_dicts([m.backbone.state_dict() for m in members]), strict=True
    )
    for head in base.heads:
        base.heads[head].load_state_dict(
            average_state_dicts([m.heads[head].state_dict() for m in members]), strict=True
        )
    meta, classes = described[0]
    save_embedding_model(
        out,
        f"soup:{'+'.join(r.name for r in run_dirs)}",
        meta["backbone"]["name"],
        meta["backbone"]["size"],
        base.backbone,
        dict(base.heads),
        meta["head"],
        classes,
        float(meta.get("embed_window_s", 0.0)),
    )
    provenance = {"members": [str(r.resolve()) for r in run_dirs], "weights": "uniform mean"}
    atomic_write_text(out / SOUP_FILE, json.dumps(provenance, indent=2) + "\n")
    log.info("soup of %d runs written to %s", len(run_dirs), out)
    return out
