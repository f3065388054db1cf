"""What the processing loop is configured with, and what it counts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_monitor.config.sections import Config, DecisionSection, FaultsConfig, PreprocessSection


@dataclass(frozen=True)
class ProcessingSettings:
    """What the loop needs besides the machines: the config's sections as loaded, and what
    the models decide (window length, model rate). Nothing here restates a default."""

    config: Config
    window_s: float
    model_rate_hz: int

    @property
    def hop_s(self) -> float:
        return self.config.windows.hop_s

    @property
    def decision(self) -> DecisionSection:
        return self.config.decision

    @property
    def faults(self) -> FaultsConfig:
        return self.config.faults

    @property
    def preprocess(self) -> PreprocessSection:
        return self.config.preprocess

    @property
    def disk_paths(self) -> tuple[Path, ...]:
        """Directories written to; probed while a disk fault lasts."""
        c = self.config
        return (c.state_dir, c.clip_dir) if c.alarm_audio.enabled else (c.state_dir,)

    @property
    def realtime(self) -> bool:
        return self.config.source.kind == "sounddevice" or self.config.source.replay.realtime


@dataclass
class Counters:
    """Totals over the loop's life, for the stats log line and the `status` command."""

    frames: int = 0  # source frames taken from the source and processed
    windows: int = 0
    scored_windows: int = 0
    late_windows: int = 0
    unjudged_windows: int = 0
    windower_gaps: int = 0  # audio lost (dropped chunks, a device reopened, a file cut short)
    file_boundaries: int = 0  # a replay going on to its next file: not a fault
    clip_errors: int = 0
    max_lag_s: float = 0.0
