"""The built-in default: learn a machine's normal sound from its first minutes of audio.

With no bundle configured, each machine gets the weight-free `logmel-stats` embedder and a
bank learned on site: the first `learning.seconds` of audio (state `learning`) are embedded
window by window, built into a bank with the scoring contract's `build_bank`, and saved
under the state directory. A restart reuses the saved bank instead of learning again, unless
the settings that shaped it (rate, window, embedder, scoring, preprocessing) changed.

Learned windows do not overlap: a live window is never scored against audio it shares
samples with, so the bank's leave-one-out scores (and the threshold drawn from them) must
not see overlapping neighbours either. Silent and clipped windows are not learned.

Layout: <state_dir>/learned/<machine>/<bank version>/ (an immutable bank directory) and
<state_dir>/learned/<machine>/current naming the version in use, replaced atomically.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.bank import Bank, load_bank, save_bank
from edge_monitor.core.detector import Detector, Member
from edge_monitor.core.embedders.logmel_stats import LogMelStatsEmbedder
from edge_monitor.core.errors import BankError
from edge_monitor.core.preprocess import PreprocessConfig, preprocess
from edge_monitor.core.scoring import SOURCE, build_bank
from edge_monitor.core.scoring_config import variant

log = logging.getLogger(__name__)

LEARNED_DIR = "learned"
CURRENT_NAME = "current"
MEMBER_NAME = "logmel-stats"
MODEL_VERSION = "builtin-logmel-stats"
# Fewer windows than this give no usable leave-one-out statistics for a threshold.
MIN_LEARNING_WINDOWS = 5


def builtin_embedder(sample_rate_hz: int, window_s: float) -> LogMelStatsEmbedder:
    return LogMelStatsEmbedder(sample_rate_hz=sample_rate_hz, window_s=window_s)


def fingerprint(
    embedder: LogMelStatsEmbedder, scoring: str, preprocess_config: PreprocessConfig
) -> dict[str, Any]:
    """What a learned bank depends on; a saved bank with another fingerprint is relearned."""
    return {
        "embedder": embedder.name,
        "sample_rate_hz": embedder.sample_rate_hz,
        "window_s": embedder.window_s,
        "n_fft": embedder.n_fft,
        "hop": embedder.hop,
        "n_mels": embedder.n_mels,
        "scoring": scoring,
        "preprocess": asdict(preprocess_config),
    }


def machine_dir(state_dir: Path, machine: str) -> Path:
    return Path(state_dir) / LEARNED_DIR / machine


def load_learned(state_dir: Path, machine: str, expected: dict[str, Any]) -> Bank | None:
    """The machine's saved learned bank, or None when there is none or it no longer fits."""
    root = machine_dir(state_dir, machine)
    pointer = root / CURRENT_NAME
    if not pointer.is_file():
        return None
    version = pointer.read_text(encoding="utf-8").strip()
    try:
        bank = load_bank(root / version)
    except BankError as exc:
        log.warning("machine %s: learned bank unusable (%s); learning again", machine, exc)
        return None
    if bank.info.get("fingerprint") != expected:
        log.warning(
            "machine %s: learned bank %s was made with other settings (%s); learning again",
            machine, version, bank.info.get("fingerprint"),
        )
        return None
    return bank


def builtin_detector(
    machine: str,
    embedder: LogMelStatsEmbedder,
    bank: Bank,
    false_alarm_rate: float,
    preprocess_config: PreprocessConfig,
) -> Detector:
    member = Member(MEMBER_NAME, embedder, bank)
    return Detector(machine, [member], false_alarm_rate, preprocess_config, MODEL_VERSION)


class BankLearner:
    """Collects one machine's embeddings for `seconds` of usable audio, then builds its bank."""

    def __init__(
        self,
        machine: str,
        embedder: LogMelStatsEmbedder,
        state_dir: Path,
        seconds: float,
        scoring: str,
        preprocess_config: PreprocessConfig,
    ) -> None:
        self.machine = machine
        self.embedder = embedder
        self.state_dir = Path(state_dir)
        self.scoring = scoring
        self.preprocess_config = preprocess_config
        self.target_windows = max(MIN_LEARNING_WINDOWS, math.ceil(seconds / embedder.window_s))
        self._vectors: list[np.ndarray] = []
        self._ids: list[str] = []
        self._next_start_frame: int | None = None
        self.skipped = 0

    @property
    def progress(self) -> float:
        return len(self._vectors) / self.target_windows

    @property
    def done(self) -> bool:
        return len(self._vectors) >= self.target_windows

    def add(self, audio: np.ndarray, start_frame: int, end_frame: int) -> bool:
        """Offer one model-rate window (frames in the source's timeline); True when done.

        Windows overlapping the last learned one are ignored; silent or clipped ones are
        skipped and counted.
        """
        overlaps = self._next_start_frame is not None and start_frame < self._next_start_frame
        if self.done or overlaps:
            return self.done
        conditioned = preprocess(audio, self.embedder.sample_rate_hz, self.preprocess_config)
        if conditioned.silent or conditioned.clipped:
            self.skipped += 1
            return False
        self._next_start_frame = end_frame
        self._vectors.append(self.embedder.embed(conditioned.audio))
        self._ids.append(f"{self.machine}-learned-{start_frame}")
        return self.done

    def build(self) -> Bank:
        """Build the bank from what was learned and save it; the pointer moves atomically."""
        if len(self._vectors) < MIN_LEARNING_WINDOWS:
            raise BankError(
                f"machine {self.machine}: only {len(self._vectors)} windows learned, "
                f"{MIN_LEARNING_WINDOWS} needed"
            )
        info = {
            "machine": self.machine,
            "origin": "learned on site",
            "fingerprint": fingerprint(self.embedder, self.scoring, self.preprocess_config),
        }
        bank = build_bank(
            np.vstack(self._vectors), [SOURCE] * len(self._vectors), self._ids,
            variant(self.scoring), info,
        )
        root = machine_dir(self.state_dir, self.machine)
        target = root / bank.version
        if not target.exists():
            save_bank(bank, target)
        atomic_write_text(root / CURRENT_NAME, bank.version + "\n")
        log.info(
            "machine %s: learned a bank of %d windows (%d skipped as silent or clipped): %s",
            self.machine, len(self._vectors), self.skipped, target,
        )
        return bank
