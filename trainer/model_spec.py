"""One way to name a model on the command line, for acp, distill and benchmarks.

    [NAME=]logmel-stats           a builtin embedder
    [NAME=]runs/beats-lora        a fine-tuned run directory (trainer.checkpoint_embedder)
    [NAME=]student.pt             a distilled student file (trainer.student)
    [NAME=]mn04_as_mAP_432.pt     a pretrained release file used frozen (default pooling)
    [NAME=]exports/export.json[:MODEL]   an exported model, run through its edge runtime

NAME renames the model (the name that ACP weights and bundles refer to).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.errors import ConfigError
from trainer.bundle_builder import ModelEntry
from trainer.embedder_factory import BUILTIN, make_embedder
from trainer.pretrained_embedder import is_release_file, load_pretrained_embedder

_NAMED = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)=(?P<spec>.+)$")


def split_name(spec: str) -> tuple[str | None, str]:
    match = _NAMED.match(spec)
    return (match["name"], match["spec"]) if match else (None, spec)


def export_entry(spec: str) -> ModelEntry:
    """One model of an export.json written by `edge-trainer export`."""
    file_part, _, name = spec.partition(":")
    path = Path(file_part)
    try:
        models: list[dict[str, Any]] = json.loads(path.read_text())["models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"model {spec!r}: {path} is not an export.json of `edge-trainer export` ({exc})"
        ) from exc
    chosen = [m for m in models if m["name"] == name] if name else models
    if len(chosen) != 1:
        raise ConfigError(f"model {spec!r}: pick one of {[m['name'] for m in models]} as "
                          f"{path}:NAME")
    m = chosen[0]
    return ModelEntry(m["name"], m["runtime"], int(m["sample_rate_hz"]), float(m["window_s"]),
                      int(m["dim"]), file=path.parent / m["file"], precision=m["precision"])


def load_embedder(spec: str) -> Embedder:
    """The embedder a command-line model spec names (see the module docstring)."""
    name, body = split_name(spec)
    embedder: Embedder
    if body in BUILTIN:
        embedder = make_embedder(body)
    elif body.split(":")[0].endswith(".json"):
        embedder = export_entry(body).embedder()
    elif body.endswith((".pt", ".pth")) and is_release_file(Path(body)):
        embedder = load_pretrained_embedder(Path(body))
    elif body.endswith(".pt"):
        from trainer.student import load_student, student_embedder

        embedder = student_embedder(load_student(body))
    elif Path(body).is_dir():
        embedder = make_embedder(checkpoint=Path(body))
    else:
        raise ConfigError(
            f"model {spec!r}: not a builtin {sorted(BUILTIN)}, export.json, student .pt or run "
            "directory"
        )
    if name:
        embedder.name = name
    return embedder
