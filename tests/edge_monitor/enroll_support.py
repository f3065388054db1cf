"""Tiny detectors and machine audio for the enrolment tests: 1 s windows, seconds of audio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_monitor.config.sections import QualityGateConfig
from edge_monitor.core.detector import Detector, Member
from edge_monitor.core.embedders.logmel_stats import LogMelStatsEmbedder
from edge_monitor.core.preprocess import PreprocessConfig, preprocess
from edge_monitor.core.scoring import SOURCE, build_bank
from edge_monitor.core.scoring_config import variant
from edge_monitor.demo.synth import MachineSpec, synthesize, write_audio

RATE = 16000
WINDOW_S = 1.0
OLD_SPEC = MachineSpec(seed=3)
NEW_SPEC = MachineSpec(seed=4, shaft_hz=71.0, gear_teeth=13)  # after a repair: other speed
GATE = QualityGateConfig(min_seconds=3.0, min_windows=3)


def machine_audio(spec: MachineSpec, seconds: float) -> np.ndarray:
    return synthesize(spec, seconds, RATE)


def windows(audio: np.ndarray) -> list[np.ndarray]:
    n = int(WINDOW_S * RATE)
    return [audio[i:i + n] for i in range(0, len(audio) - n + 1, n)]


def embedder(name: str = "logmel-stats") -> LogMelStatsEmbedder:
    e = LogMelStatsEmbedder(sample_rate_hz=RATE, window_s=WINDOW_S, n_fft=512, hop=256,
                            n_mels=32)
    e.name = name
    return e


def make_detector(members: tuple[str, ...] = ("logmel-stats",), scoring: str = "dads",
                  seconds: float = 20.0) -> Detector:
    """A detector whose banks hold `seconds` of the old machine sound (source domain)."""
    audio = machine_audio(OLD_SPEC, seconds)
    built = []
    for name in members:
        e = embedder(name)
        vectors = np.stack([e.embed(preprocess(w, RATE).audio) for w in windows(audio)])
        ids = [f"old-{i}" for i in range(len(vectors))]
        bank = build_bank(vectors, [SOURCE] * len(ids), ids, variant(scoring),
                          {"embedder": name, "machine": "pump"})
        built.append(Member(name, e, bank))
    return Detector("pump", built, 0.05, PreprocessConfig(), model_version="test-model")


def write_clips(directory: Path, spec: MachineSpec, count: int, seconds: float = 1.0) -> list[Path]:
    """`count` clips of `seconds` each, cut from one recording of `spec`."""
    directory.mkdir(parents=True, exist_ok=True)
    audio = machine_audio(spec, count * seconds + 0.5)
    n = int(seconds * RATE)
    return [write_audio(directory / f"clip_{i:02d}.flac", audio[i * n:(i + 1) * n], RATE)
            for i in range(count)]


def mean_score(detector: Detector, audio: np.ndarray) -> float:
    return float(np.mean([detector.score(w).score for w in windows(audio)]))


def looping_replay(tmp_path: Path, **overrides: Any) -> tuple[Path, dict[str, Any]]:
    """A daemon config (path and dict) replaying 6 s of the old machine sound in real time,
    looping, with a learned bank of it on disk so the daemon judges at once."""
    from daemon_support import small_config, write_config

    clip = write_audio(tmp_path / "old.flac", machine_audio(OLD_SPEC, 6.0), RATE)
    config = small_config(tmp_path, [clip],
                          source={"replay": {"paths": [str(clip)], "realtime": True,
                                             "loop": True}},
                          learning={"seconds": 10, "scoring": "dads"}, **overrides)
    path = write_config(tmp_path, config)
    prelearn(path)
    return path, config


def prelearn(config_path: Path, seconds: float = 12.0) -> None:
    """Give every machine of a built-in-model daemon config a learned bank of the old sound,
    exactly as the daemon's learning would save it, so the daemon starts judging at once."""
    from edge_monitor.config.loader import load_config
    from edge_monitor.pipeline.learning import BankLearner, builtin_embedder

    config = load_config(config_path)
    window_s = config.windows.window_s or 10.0
    audio = machine_audio(OLD_SPEC, seconds)
    n = int(window_s * RATE)
    for m in config.machines:
        learner = BankLearner(m.name, builtin_embedder(RATE, window_s), config.state_dir,
                              seconds, config.learning.scoring,
                              config.preprocess.to_preprocess_config())
        for start in range(0, len(audio) - n + 1, n):
            learner.add(audio[start:start + n], start, start + n)
        learner.build()
