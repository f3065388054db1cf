"""Auxiliary classes for fine-tuning: machine type, section and attributes combined into one label.

Only normal clips exist, so the model learns to tell operating conditions apart (car model,
speed, microphone, ...); an anomaly is whatever the embedding cannot place among them. The
attributes come from `trainer.dcase_data` (attributes CSV merged over the file-name pairs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_monitor.core.errors import DatasetError
from trainer.dcase_data import Clip


def class_name(
    clip: Clip, attribute_names: Sequence[str] | None = None, source: str = "data.attributes"
) -> str:
    """`machine/section/name=value/...`, over `attribute_names` (all of the clip's when None).

    A clip that lacks a requested attribute is an error naming the recipe key `source` that
    asked for it: silently merging it into another class would teach the model a wrong condition.
    """
    names = sorted(clip.attributes) if attribute_names is None else list(attribute_names)
    parts = [clip.machine, f"section_{clip.section}"]
    for name in names:
        if name not in clip.attributes:
            raise DatasetError(
                f"{clip.path}: attribute {name!r} missing (has {sorted(clip.attributes)}); add it "
                f"to the attributes CSV or drop it from the recipe's {source}"
            )
        parts.append(f"{name}={clip.attributes[name]}")
    return "/".join(parts)


def has_attributes(clip: Clip) -> bool:
    """Whether a clip carries any attribute (clips without any count as unlabelled)."""
    return bool(clip.attributes)


@dataclass(frozen=True)
class ClassMap:
    """A fixed, sorted list of class names and their indices."""

    names: tuple[str, ...]

    @classmethod
    def from_names(cls, names: Iterable[str]) -> ClassMap:
        unique = tuple(sorted(set(names)))
        if not unique:
            raise DatasetError("no classes: the training set has no clips; check --data")
        return cls(unique)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise DatasetError(
                f"class {name!r} is not among the {len(self.names)} training classes"
            ) from None


def targets_from_names(names: Sequence[str]) -> tuple[ClassMap, list[int]]:
    """The class map over `names` and the index of each name."""
    classes = ClassMap.from_names(names)
    lookup = {name: i for i, name in enumerate(classes.names)}
    return classes, [lookup[name] for name in names]
