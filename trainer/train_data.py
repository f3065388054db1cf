"""Training examples: clips decoded once into a cache, then random crops drawn per step.

Decoding FLAC every epoch would dominate a CPU run; the cache keeps one float16 `.npy` per clip
keyed by the file's path, size, modification time and preprocessing, so a changed file is
decoded again. Clips are conditioned by `edge_monitor.core.preprocess` (loudness normalisation, DC
removal) exactly as evaluation and the daemon condition them before embedding. The batch for
step `s` is drawn from a generator seeded with (seed, s, rank): a resumed run sees exactly the
batches the interrupted one would have seen, and each DDP rank sees its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edge_monitor.core.atomic import atomic_path
from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.errors import DatasetError
from edge_monitor.core.preprocess import PreprocessConfig, preprocess, trim_quiet_ends
from trainer.dcase_data import Clip, read_dataset
from trainer.embed_cache import DEFAULT_TRIM_QUIET_DB

log = logging.getLogger(__name__)

CACHE_ENV = "EDGE_TRAINER_CACHE"


def default_cache_dir() -> Path:
    """$EDGE_TRAINER_CACHE, else ~/.cache/edge-trainer/waves."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "edge-trainer" / "waves"


def _cache_key(path: Path, sample_rate_hz: int, config: PreprocessConfig, trim_db: float) -> str:
    stat = path.stat()
    token = (
        f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{sample_rate_hz}|"
        f"{json.dumps(dataclasses.asdict(config), sort_keys=True)}|trim{trim_db:g}"
    )
    return hashlib.sha1(token.encode()).hexdigest()


def load_wave(
    path: Path,
    sample_rate_hz: int,
    cache_dir: Path,
    config: PreprocessConfig | None = None,
    trim_quiet_db: float = DEFAULT_TRIM_QUIET_DB,
) -> np.ndarray:
    """The conditioned clip as float16 at `sample_rate_hz`, decoded once, then cached.

    Quiet ends are trimmed as in evaluation (trainer.embed_cache), so crops are machine sound.
    """
    config = config or PreprocessConfig()
    cached = cache_dir / f"{_cache_key(path, sample_rate_hz, config, trim_quiet_db)}.npy"
    if cached.is_file():
        return np.load(cached)
    audio = read_audio(path, sample_rate_hz)
    if trim_quiet_db > 0:
        audio = trim_quiet_ends(audio, sample_rate_hz, trim_quiet_db)
    audio = preprocess(audio, sample_rate_hz, config).audio
    wave = audio.astype(np.float16)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as tmp, open(tmp, "wb") as handle:
        np.save(handle, wave)
    return wave


def training_clips(roots: Sequence[Path]) -> list[Clip]:
    """Normal training clips under every root (train split only)."""
    clips = [c for root in roots for c in read_dataset(root) if c.split == "train"]
    if not clips:
        raise DatasetError(
            f"no training clips under {', '.join(map(str, roots))}; expected <machine>/train/"
        )
    return clips


@dataclass
class WaveSet:
    """Decoded clips with one integer target per clip (-1 where a clip has none)."""

    waves: list[np.ndarray]
    targets: np.ndarray

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[Path],
        targets: Sequence[int],
        sample_rate_hz: int,
        cache_dir: Path,
        trim_quiet_db: float = DEFAULT_TRIM_QUIET_DB,
    ) -> WaveSet:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        log.info("loading %d clips (cache %s)", len(paths), cache_dir)
        waves = [load_wave(Path(p), sample_rate_hz, cache_dir, trim_quiet_db=trim_quiet_db)
                 for p in paths]
        return cls(waves, np.asarray(targets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.waves)

    def crop_batch(
        self,
        rng: np.random.Generator,
        batch_size: int,
        crop_samples: int,
        indices: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Random crops [B, crop_samples] (float32), their targets and clip indices.

        Clips shorter than the crop are tiled; `indices` picks clips instead of drawing them.
        """
        if indices is None:
            indices = rng.integers(0, len(self.waves), size=batch_size)
        batch = np.empty((len(indices), crop_samples), dtype=np.float32)
        for row, index in enumerate(indices):
            wave = self.waves[index]
            if wave.shape[0] < crop_samples:
                wave = np.tile(wave, crop_samples // wave.shape[0] + 1)
            start = int(rng.integers(0, wave.shape[0] - crop_samples + 1))
            batch[row] = wave[start : start + crop_samples]
        return (
            torch.from_numpy(batch),
            torch.from_numpy(self.targets[indices]),
            np.asarray(indices),
        )


def step_rng(seed: int, step: int, rank: int = 0, stream: int = 0) -> np.random.Generator:
    """The generator for one step: same seed and step give the same batch after a resume."""
    return np.random.default_rng([seed, step, rank, stream])
