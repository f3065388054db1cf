"""(b) Extra classes: noise-only and clean clips join training as classes of their own.

A model that must tell "just the factory background" and "just the machine, recorded clean"
apart from the operating conditions learns to separate machine sound from its surroundings.
Each directory of such clips is one class; the noise-only clips also feed the noise
augmentation instead of white noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_monitor.core.errors import DatasetError
from trainer.dcase_data import AUDIO_SUFFIXES, Clip
from trainer.labels import class_name
from trainer.strategies.base import Strategy, StrategyContext
from trainer.train_data import load_wave

EXTRA_MACHINE = "extra"


def audio_files(directory: Path) -> list[Path]:
    """The .wav/.flac files of one directory, or an error naming it when there are none."""
    if not directory.is_dir():
        raise DatasetError(f"extra_classes: {directory} is not a directory; fix the recipe path")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DatasetError(f"extra_classes: {directory} holds no .wav or .flac clips")
    return files


class ExtraClasses(Strategy):
    """Full fine-tuning with one more class per noise-only and per clean directory."""

    def __init__(self, context: StrategyContext) -> None:
        section = context.recipe.extra_classes
        assert section is not None  # the recipe validator guarantees it
        self.extra: list[tuple[Path, str]] = [
            (path, f"noise-only:{directory.name}")
            for directory in section.noise_dirs
            for path in audio_files(Path(directory))
        ] + [
            (path, f"clean:{directory.name}")
            for directory in section.clean_dirs
            for path in audio_files(Path(directory))
        ]
        super().__init__(context)

    def labelled_clips(self) -> list[Clip]:
        clips = super().labelled_clips()
        for index, (path, kind) in enumerate(self.extra):
            clips.append(
                Clip(path, EXTRA_MACHINE, "00", "train", None, "normal", index, {"kind": kind})
            )
        return clips

    def class_names(
        self, clips: list[Clip], attributes: Sequence[str] | None, source: str
    ) -> list[str]:
        """An extra directory is one class of its own in every task, whatever the attributes."""
        return [
            f"{EXTRA_MACHINE}/{c.attributes['kind']}"
            if c.machine == EXTRA_MACHINE
            else class_name(c, attributes, source)
            for c in clips
        ]

    def noise_bank(self) -> list[np.ndarray]:
        return [
            load_wave(path, self.sample_rate_hz, self.context.cache_dir).astype(np.float32)
            for path, kind in self.extra
            if kind.startswith("noise-only:")
        ]
