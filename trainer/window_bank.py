"""Window-level banks: every clip cut into short windows, one bank entry per window.

A clip-level bank holds one embedding per training clip; a short fault (a click, a rub of a
fraction of a second) is then averaged over the whole clip. A window-level bank holds one
entry per `window_s` window (hop `hop_s`), the way the daemon enrols continuous recordings,
and a test clip's score is the max (or mean) of its windows' scores. Windows of one clip
are left out together in leave-one-out scoring (they are one recording).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.errors import ConfigError
from edge_monitor.core.preprocess import preprocess, trim_quiet_ends
from edge_monitor.core.scoring import BankScorer, build_bank
from edge_monitor.core.scoring_config import ScoringConfig
from trainer.dcase_data import Clip
from trainer.embed_cache import EmbedOptions

AGGREGATES = ("max", "mean")


def window_starts(samples: int, window: int, hop: int) -> list[int]:
    """Start samples of the windows covering a clip (one window when it is shorter)."""
    if window <= 0 or hop <= 0:
        raise ConfigError(f"window {window} and hop {hop} samples must be positive")
    return list(range(0, max(samples - window, 0) + 1, hop))


def embed_windows(path: Path, embedder: Embedder, options: EmbedOptions, window_s: float,
                  hop_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(windows, dim) embeddings of one clip and each window's start in seconds."""
    rate = int(embedder.sample_rate_hz)
    audio = read_audio(path, rate)
    if options.trim_quiet_db > 0:
        audio = trim_quiet_ends(audio, rate, options.trim_quiet_db)
    audio = preprocess(audio, rate, options.preprocess).audio
    window, hop = round(window_s * rate), round(hop_s * rate)
    starts = window_starts(len(audio), window, hop)
    vectors = np.stack([np.asarray(embedder.embed(audio[s:s + window]), np.float32)
                        for s in starts])
    return vectors, np.asarray(starts, np.float64) / rate


def evaluate_window_level(
    embedder: Embedder, train: Sequence[Clip], test: Sequence[Clip],
    variants: Mapping[str, ScoringConfig], window_s: float, hop_s: float,
    options: EmbedOptions | None = None,
) -> dict[str, np.ndarray]:
    """Clip scores per "variant aggregate" name, from one window-level bank per variant."""
    options = options or EmbedOptions()
    embs, domains, recordings, starts = [], [], [], []
    for clip in tqdm(train, desc=f"windows of training clips ({embedder.name})", unit="clip"):
        vectors, times = embed_windows(clip.path, embedder, options, window_s, hop_s)
        embs.append(vectors)
        domains += [clip.domain or "source"] * len(vectors)
        recordings += [clip.clip_id] * len(vectors)
        starts += list(times)
    tests = [embed_windows(c.path, embedder, options, window_s, hop_s)[0]
             for c in tqdm(test, desc=f"windows of test clips ({embedder.name})", unit="clip")]
    owner = np.concatenate([np.full(len(t), i) for i, t in enumerate(tests)])
    ids = [f"{r}@{s:.2f}" for r, s in zip(recordings, starts, strict=True)]
    longest = max(len(e) for e in embs) * hop_s + window_s
    scores: dict[str, np.ndarray] = {}
    for name, config in variants.items():
        bank = build_bank(np.concatenate(embs), domains, ids, config, recordings=recordings,
                          start_s=starts, overlap_s=longest)
        window_scores = BankScorer(bank).score(np.concatenate(tests)).astype(np.float64)
        for aggregate in AGGREGATES:
            reduce = np.max if aggregate == "max" else np.mean
            scores[f"{name} {aggregate}"] = np.array(
                [reduce(window_scores[owner == i]) for i in range(len(tests))])
    return scores

