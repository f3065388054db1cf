"""Learning a machine's normal sound on site, from its first minutes of audio.

With no bundle configured, each machine gets the weight-free `logmel-stats` embedder and a
bank learned on site; with a model-only bundle (models, no bank for the machine), the
bundle's model is the embedder instead (`bundle_model`). Either way the first
`learning.seconds` of audio (state `learning`) are embedded window by window, built into a
bank with the scoring contract's `build_bank`, and saved under the state directory. A
restart reuses the saved bank instead of learning again, unless what shaped it changed:
the model (the builtin's settings, or the bundle model's sha256), rate, window, scoring or
preprocessing.

Learned windows do not overlap: a live window is never scored against audio it shares
samples with, so the bank's leave-one-out scores (and the threshold drawn from them) must
not see overlapping neighbours either. Silent and clipped windows are not learned.

The learned bank seeds the machine's versioned bank store (`edge_monitor.enrolment.
bank_store`, the one store that enrolment, feedback and rollback write too) as its base; a
restart finds it there. Writing needs no store lock: while a machine learns it has no
detector, so no enrolment, feedback or rollback can touch its banks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_monitor.core.bank import Bank
from edge_monitor.core.bundle import ModelSpec
from edge_monitor.core.detector import Detector, Member
from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.embedders.logmel_stats import LogMelStatsEmbedder
from edge_monitor.core.errors import BankError, EdgeMonitorError
from edge_monitor.core.preprocess import PreprocessConfig, preprocess
from edge_monitor.core.scoring import SOURCE, build_bank
from edge_monitor.core.scoring_config import variant
from edge_monitor.enrolment.bank_store import BankStore

log = logging.getLogger(__name__)

MEMBER_NAME = "logmel-stats"
MODEL_VERSION = "builtin-logmel-stats"
# Fewer windows than this give no usable leave-one-out statistics for a threshold.
MIN_LEARNING_WINDOWS = 5


def builtin_embedder(sample_rate_hz: int, window_s: float) -> LogMelStatsEmbedder:
    return LogMelStatsEmbedder(sample_rate_hz=sample_rate_hz, window_s=window_s)


@dataclass(frozen=True)
class LearnedModel:
    """The model a bank is learned with: the member name and model version its detector
    reports (alarms carry the version), and what identifies the model in the fingerprint."""

    name: str
    version: str
    identity: Mapping[str, Any] = field(default_factory=dict)


def builtin_model(embedder: LogMelStatsEmbedder) -> LearnedModel:
    identity = {"embedder": embedder.name, "n_fft": embedder.n_fft, "hop": embedder.hop,
                "n_mels": embedder.n_mels}
    return LearnedModel(MEMBER_NAME, MODEL_VERSION, identity)


def bundle_model(name: str, spec: ModelSpec) -> LearnedModel:
    """A bundle's model: identified by its file's sha256 (a builtin by name and settings),
    so a bundle with another model learns again, and one with the same model does not."""
    if spec.sha256 is not None:
        identity: dict[str, Any] = {"embedder": name, "runtime": spec.runtime,
                                    "model_sha256": spec.sha256, "dim": spec.dim}
        return LearnedModel(name, f"{name}-{spec.sha256[:16]}", identity)
    identity = {"embedder": name, "runtime": spec.runtime, "builtin": spec.builtin,
                "params": dict(spec.params), "dim": spec.dim}
    return LearnedModel(name, f"{name}-builtin", identity)


def fingerprint(
    embedder: Embedder, scoring: str, preprocess_config: PreprocessConfig,
    model: LearnedModel | None = None,
) -> dict[str, Any]:
    """What a learned bank depends on; a saved bank with another fingerprint is relearned.
    `model` defaults to the builtin `embedder`'s own settings."""
    if model is None:
        assert isinstance(embedder, LogMelStatsEmbedder)
        model = builtin_model(embedder)
    return {
        **model.identity,
        "sample_rate_hz": embedder.sample_rate_hz,
        "window_s": embedder.window_s,
        "scoring": scoring,
        "preprocess": asdict(preprocess_config),
    }


def load_learned(state_dir: Path, machine: str, expected: dict[str, Any]) -> Bank | None:
    """The bank the machine learned on site (its store's base), or None when there is none
    or it no longer fits (another model or setting: `expected` is the fingerprint)."""
    store = BankStore(state_dir, machine)
    try:
        base = store.base()
    except BankError as exc:
        log.warning("machine %s: learned bank unusable (%s); learning again", machine, exc)
        return None
    if base is None or len(base) != 1:
        return None  # nothing yet, or the base is a bundle's ensemble
    bank = next(iter(base.values()))
    if bank.info.get("fingerprint") != expected:
        log.warning(
            "machine %s: bank %s in %s was not learned with these settings (%s); learning "
            "again", machine, bank.version, store.root, bank.info.get("fingerprint"),
        )
        return None
    return bank


def learned_detector(
    machine: str,
    embedder: Embedder,
    bank: Bank,
    false_alarm_rate: float,
    preprocess_config: PreprocessConfig,
    model: LearnedModel | None = None,
) -> Detector:
    """The detector of a learned bank; `model` defaults to the builtin one."""
    if model is None:
        assert isinstance(embedder, LogMelStatsEmbedder)
        model = builtin_model(embedder)
    member = Member(model.name, embedder, bank)
    return Detector(machine, [member], false_alarm_rate, preprocess_config, model.version)


class BankLearner:
    """Collects one machine's embeddings for `seconds` of usable audio, then builds its bank."""

    def __init__(
        self,
        machine: str,
        embedder: Embedder,
        state_dir: Path,
        seconds: float,
        scoring: str,
        preprocess_config: PreprocessConfig,
        model: LearnedModel | None = None,
    ) -> None:
        self.machine = machine
        self.embedder = embedder
        if model is None:
            assert isinstance(embedder, LogMelStatsEmbedder)
            model = builtin_model(embedder)
        self.model = model
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

    @property
    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.embedder, self.scoring, self.preprocess_config, self.model)

    def detector(self, bank: Bank, false_alarm_rate: float) -> Detector:
        """The detector of the bank this learner built."""
        return learned_detector(self.machine, self.embedder, bank, false_alarm_rate,
                                self.preprocess_config, self.model)

    def add(self, audio: np.ndarray, start_frame: int, end_frame: int) -> bool:
        """Offer one model-rate window (frames in the source's timeline); True when done.

        Windows overlapping the last learned one are ignored; silent or clipped ones are
        skipped and counted. A model that fails or gives non-finite values raises, and the
        window is not learned.
        """
        overlaps = self._next_start_frame is not None and start_frame < self._next_start_frame
        if self.done or overlaps:
            return self.done
        conditioned = preprocess(audio, self.embedder.sample_rate_hz, self.preprocess_config)
        if conditioned.silent or conditioned.clipped:
            self.skipped += 1
            return False
        vector = self.embedder.embed(conditioned.audio)
        if not np.all(np.isfinite(vector)):
            raise EdgeMonitorError("the model gave a non-finite embedding; nothing was learned")
        self._next_start_frame = end_frame
        self._vectors.append(vector)
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
            "embedder": self.model.name,
            "fingerprint": self.fingerprint,
        }
        bank = build_bank(
            np.vstack(self._vectors), [SOURCE] * len(self._vectors), self._ids,
            variant(self.scoring), info,
        )
        store = BankStore(self.state_dir, self.machine)
        store.seed({self.model.name: bank}, self.model.version,
                   {"action": "learn", "windows": len(self._vectors), "skipped": self.skipped})
        log.info(
            "machine %s: learned a bank of %d windows (%d skipped as silent or clipped): %s",
            self.machine, len(self._vectors), self.skipped, store.root,
        )
        return bank
