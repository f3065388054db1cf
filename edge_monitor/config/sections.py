"""The daemon's configuration: one typed model per section.

Each section forbids unknown keys and gives every field a default, a description and bounds,
so a typo is an error rather than a setting that silently does nothing. Rules that span
fields (k <= n, a machine's channel inside the source's channel count, ...) are validators.
The MQTT password is a secret: it is read from a file (a systemd credential when
`CREDENTIALS_DIRECTORY` is set and the path is relative) or from an environment variable,
never written in the YAML. Loading and error reporting live in edge_monitor.config.loader.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_monitor.core.audio_io import MAX_AUDIO_RATE_HZ, MIN_AUDIO_RATE_HZ
from edge_monitor.core.errors import BadInputError, ConfigError
from edge_monitor.core.preprocess import PreprocessSettings
from edge_monitor.core.scoring_config import VARIANTS
from edge_monitor.core.windowing import MAX_WINDOW_S, MIN_WINDOW_S
from edge_monitor.mqtt.topics import COMMAND_NAMES, DEFAULT_PREFIX, HA_DEFAULT_PREFIX, check_prefix

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
DEFAULT_STATE_DIR = Path("/var/lib/edge-monitor")
PROVIDERS = ("CPU", "CUDA", "TensorRT")
SEGMENT_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
IMPORT_DIR_NAME = "enrol-inbox"  # under state_dir: `edge-monitor enroll` copies files here
DEFAULT_KEEP = 5  # bank versions kept per model (the current and the previous always stay)
PENDING_TIMEOUT_S = 3600.0  # an uncommitted enrolment older than this may be discarded
MAX_PATH_CHARS = 4096  # Linux PATH_MAX; longer paths fail with OSError when opened
MAX_NAME_CHARS = 255  # NAME_MAX: one path component
# MQTT 3.1.1 allows 23 bytes and brokers accept more; paho packs it in 16 bits (struct.error
# past 65 535 bytes). 256 characters is room for any naming scheme and never near that.
MAX_CLIENT_ID_CHARS = 256


def check_path(path: Path) -> Path:
    """Refuse paths the OS would reject when the daemon opens them (a NUL byte: ValueError;
    too long: OSError), so the config names the key instead of `run` tracebacking."""
    text = str(path)
    if "\x00" in text:
        raise ValueError("the path contains a NUL byte; remove it")
    if len(text) > MAX_PATH_CHARS:
        raise ValueError(f"the path has {len(text)} characters, over the limit of "
                         f"{MAX_PATH_CHARS}; give a shorter path")
    longest = max((len(part) for part in path.parts), default=0)
    if longest > MAX_NAME_CHARS:
        raise ValueError(f"a path component has {longest} characters, over the limit of "
                         f"{MAX_NAME_CHARS}; give a shorter name")
    return path


ConfigPath = Annotated[Path, AfterValidator(check_path)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors; values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplayConfig(Section):
    paths: list[ConfigPath] = Field(
        default_factory=list,
        description="WAV/FLAC files or directories (played in name order) for the replay source",
    )
    realtime: bool = Field(
        default=True, description="pace playback at the audio's own speed; false = as fast as "
        "processing allows (tests, back-testing)"
    )
    loop: bool = Field(default=False, description="start again from the first file at the end")
    contiguous: bool = Field(
        default=False,
        description="treat the files as one recording (windows may span two files); false = "
        "each file is a separate recording",
    )
    hold: bool = Field(
        default=False,
        description="after the last file, keep the daemon up (web view, MQTT, commands) "
        "until it is stopped, to browse a back-test; false = exit at the end",
    )


class SourceConfig(Section):
    kind: Literal["sounddevice", "replay"] = Field(
        default="sounddevice", description="where audio comes from: a live input or file replay"
    )
    device: str | int | None = Field(
        default=None,
        description="input device by index or (part of) its name; null = the system default",
    )
    channels: int = Field(default=1, ge=1, le=32, description="input channels to open")
    sample_rate_hz: int | None = Field(
        default=None, ge=MIN_AUDIO_RATE_HZ, le=MAX_AUDIO_RATE_HZ,
        description="device rate; null = the model's rate (audio is resampled when they differ)",
    )
    block_s: float = Field(
        default=0.1, ge=0.005, le=1.0, description="audio callback block length in seconds"
    )
    buffer_s: float = Field(
        default=5.0, ge=0.5, le=120.0,
        description="capture queue length in seconds; audio beyond it is dropped and counted",
    )
    reopen_s: float = Field(
        default=2.0, ge=0.1, le=300.0,
        description="seconds between attempts to reopen a lost input device",
    )
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="replay settings")

    @model_validator(mode="after")
    def _replay_needs_paths(self) -> SourceConfig:
        if self.kind == "replay" and not self.replay.paths:
            raise ValueError(
                "source.kind is 'replay' but source.replay.paths is empty: list audio files "
                "or directories to play"
            )
        return self


class MachineConfig(Section):
    name: str = Field(
        description="machine name, one MQTT topic level: letters, digits, '_' or '-'",
        pattern=SEGMENT_PATTERN,
    )
    channel: int = Field(default=0, ge=0, le=31, description="input channel (0-based)")
    bundle_machine: str | None = Field(
        default=None,
        description="the machine's key in the bundle's manifest; null = the same as name",
    )


class ModelConfig(Section):
    bundle: ConfigPath | None = Field(
        default=None,
        description="model bundle directory or .tar; null = the built-in logmel-stats model "
        "that learns its bank from the first minutes of audio",
    )
    providers: list[Literal["CPU", "CUDA", "TensorRT"]] = Field(
        default_factory=lambda: ["CPU"],
        min_length=1,
        description="onnxruntime execution providers in order of preference; unavailable "
        "ones fall back to CPU with a warning",
    )
    sample_rate_hz: int = Field(
        default=16000, ge=MIN_AUDIO_RATE_HZ, le=48000,
        description="sample rate of the built-in model (a bundle brings its own)",
    )
    trusted_keys: list[ConfigPath] = Field(
        default_factory=list,
        description="public keys (.pub from `edge-trainer keygen`) whose signed bundles this "
        "box accepts; a bundle signed by any other key is refused",
    )
    require_signature: bool = Field(
        default=False,
        description="refuse bundles that are not signed by one of model.trusted_keys",
    )

    @model_validator(mode="after")
    def _keys_for_signatures(self) -> ModelConfig:
        if self.require_signature and not self.trusted_keys:
            raise ValueError(
                "model.require_signature is true but model.trusted_keys is empty: list the "
                "operator's public key files (edge-trainer keygen writes NAME.pub)"
            )
        return self

    @field_validator("providers")
    @classmethod
    def _unique_providers(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"providers {value} lists a provider twice; list each once")
        return value


class WindowsConfig(Section):
    window_s: float | None = Field(
        default=None, ge=MIN_WINDOW_S, le=MAX_WINDOW_S,
        description="analysis window; null = the model's (10 s for the built-in model)",
    )
    hop_s: float = Field(default=1.0, ge=0.05, le=60.0, description="seconds between windows")

    @model_validator(mode="after")
    def _hop_within_window(self) -> WindowsConfig:
        if self.window_s is not None and self.hop_s > self.window_s:
            raise ValueError(
                f"windows.hop_s ({self.hop_s}) is longer than windows.window_s "
                f"({self.window_s}): audio between windows would never be heard; "
                "make hop_s <= window_s"
            )
        return self


class PreprocessSection(PreprocessSettings, Section):
    """Window conditioning; its fields and bounds are core's, shared with bundle manifests."""


class LearningConfig(Section):
    seconds: float = Field(
        default=300.0, ge=1.0, le=86400.0,
        description="built-in model only: seconds of audio learned as normal at first start",
    )
    scoring: str = Field(
        default="knn", description=f"scoring variant of the learned bank: one of {sorted(VARIANTS)}"
    )

    @field_validator("scoring")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        if value not in VARIANTS:
            raise ValueError(f"unknown scoring variant {value!r}: use one of {sorted(VARIANTS)}")
        return value


class DecisionSection(Section):
    false_alarm_rate: float = Field(
        default=0.01, gt=0.0, lt=0.5,
        description="per-window false-alarm rate that sets the threshold from the bank's "
        "leave-one-out scores",
    )
    threshold_scale: float = Field(
        default=1.0, ge=0.1, le=10.0,
        description="multiplies the detector's threshold: above 1 fewer false alarms, below 1 "
        "more sensitive",
    )
    smoothing: int = Field(
        default=1, ge=1, le=60,
        description="median over this many consecutive window scores; 1 = no smoothing",
    )
    k: int = Field(default=3, ge=1, le=100, description="windows above threshold, of n, to alarm")
    n: int = Field(default=5, ge=1, le=100, description="the last n windows k-of-n looks at")
    hysteresis_ratio: float = Field(
        default=0.9, gt=0.0, le=1.0,
        description="an alarm ends when fewer than k of n windows exceed threshold * ratio",
    )
    cooldown_s: float = Field(
        default=60.0, ge=0.0, le=86400.0,
        description="no new alarm for this long after one ends",
    )
    update_interval_s: float = Field(
        default=10.0, ge=0.0, le=3600.0,
        description="at most one `update` event per alarm in this time, sent when the peak rises",
    )

    @model_validator(mode="after")
    def _k_within_n(self) -> DecisionSection:
        if self.k > self.n:
            raise ValueError(
                f"decision.k ({self.k}) is larger than decision.n ({self.n}): an alarm could "
                "never start; make k <= n"
            )
        return self


class FaultsConfig(Section):
    silence_s: float = Field(
        default=30.0, ge=0.5, le=86400.0,
        description="input silent this long -> state fault (microphone dead or unplugged)",
    )
    clipping_windows: int = Field(
        default=3, ge=1, le=1000,
        description="this many consecutive clipped windows -> state fault (gain too high); "
        "0 is not allowed: lower the gain instead",
    )
    no_audio_s: float = Field(
        default=5.0, ge=0.5, le=600.0,
        description="no audio from the source this long -> state fault (device lost)",
    )
    disk_check_s: float = Field(
        default=30.0, ge=0.1, le=3600.0,
        description="seconds between write checks of the state directory while it is failing",
    )


class AlarmAudioConfig(Section):
    enabled: bool = Field(default=True, description="save the audio of every alarm as FLAC")
    dir: ConfigPath | None = Field(
        default=None, description="clip directory; null = <state_dir>/clips"
    )
    max_clips: int = Field(default=500, ge=1, le=1_000_000, description="keep at most this many")
    max_mb: float = Field(default=500.0, gt=0.0, le=1_000_000.0, description="total size cap")
    max_age_days: float = Field(default=90.0, gt=0.0, le=3650.0, description="delete older clips")


class MqttSection(Section):
    enabled: bool = Field(default=True, description="publish to an MQTT broker")
    host: str = Field(default="localhost", min_length=1, max_length=253,
                      description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="broker TCP port")
    prefix: str = Field(default=DEFAULT_PREFIX, description="first topic level(s)")
    client_id: str = Field(default="", max_length=MAX_CLIENT_ID_CHARS,
                           description="MQTT client id; empty = edge-monitor-<id>")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive seconds")
    username: str | None = Field(default=None, description="broker user name")
    password_file: ConfigPath | None = Field(
        default=None,
        description="file whose first line is the password; a relative path is looked up in "
        "$CREDENTIALS_DIRECTORY (systemd LoadCredential=) when set",
    )
    password_env: str | None = Field(
        default=None, description="environment variable holding the password"
    )
    tls: bool = Field(default=False, description="connect with TLS")
    tls_ca_file: ConfigPath | None = Field(
        default=None, description="CA bundle; null = system CAs"
    )
    tls_cert_file: ConfigPath | None = Field(default=None, description="client certificate (PEM)")
    tls_key_file: ConfigPath | None = Field(default=None, description="client key (PEM)")
    tls_insecure: bool = Field(default=False, description="skip the host-name check (tests only)")
    journal_max_events: int = Field(
        default=10_000, ge=1, le=10_000_000, description="events kept while the broker is away"
    )
    max_inflight: int = Field(
        default=20, ge=1, le=1000, description="unacknowledged QoS 1 messages"
    )
    stall_timeout_s: float = Field(
        default=60.0, ge=1.0, le=3600.0,
        description="connected with messages in flight and no PUBACK for this long: the "
        "client is stuck and is restarted (as when paho's network thread ends)",
    )
    reconnect_min_delay_s: float = Field(
        default=1.0, gt=0.0, le=3600.0,
        description="first reconnect delay, doubled after each failure",
    )
    reconnect_max_delay_s: float = Field(
        default=60.0, gt=0.0, le=3600.0, description="longest reconnect delay"
    )
    commands_enabled: bool = Field(default=True, description="accept commands under cmd/")
    commands_allowed: list[str] = Field(
        default_factory=list,
        description="accepted command names; empty = all but bundle/install and "
        "bundle/rollback, which are accepted only when listed",
    )
    ha_discovery: bool = Field(default=True, description="publish Home Assistant discovery")
    ha_prefix: str = Field(
        default=HA_DEFAULT_PREFIX, description="Home Assistant discovery prefix"
    )
    device_name: str = Field(default="", description="name shown in Home Assistant")
    score_telemetry: bool = Field(default=True, description="publish score telemetry")
    score_interval_s: float = Field(
        default=10.0, ge=0.0, le=3600.0,
        description="seconds of audio between score messages of a machine (0 = every "
        "window); a state change sends the next score at once",
    )

    @model_validator(mode="after")
    def _consistent(self) -> MqttSection:
        try:
            check_prefix(self.prefix)
            check_prefix(self.ha_prefix, "mqtt.ha_prefix")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("set only one of mqtt.password_file and mqtt.password_env")
        if (self.password_file or self.password_env) and not self.username:
            raise ValueError("a password is set but mqtt.username is not: set the user name")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("mqtt.tls_cert_file and mqtt.tls_key_file go together: set both")
        if not self.tls and (self.tls_ca_file or self.tls_cert_file):
            raise ValueError("TLS files are set but mqtt.tls is false: set tls: true")
        if self.reconnect_min_delay_s > self.reconnect_max_delay_s:
            raise ValueError("mqtt.reconnect_min_delay_s is above reconnect_max_delay_s")
        if self.password_env is not None and self.password_env not in os.environ:
            raise ValueError(
                f"environment variable {self.password_env} (mqtt.password_env) is not set: "
                "export it or use password_file"
            )
        unknown = sorted(set(self.commands_allowed) - set(COMMAND_NAMES))
        if unknown:
            raise ValueError(
                f"mqtt.commands_allowed names unknown command(s) {', '.join(unknown)}: "
                f"use names from {', '.join(COMMAND_NAMES)}"
            )
        return self

    def password(self) -> str | None:
        """Read the password now, so a rotated secret file is picked up on (re)connect."""
        if self.password_file is not None:
            try:
                lines = Path(self.password_file).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read mqtt.password_file {str(self.password_file)!r}: {exc}"
                ) from exc
            return lines[0] if lines else ""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"environment variable {self.password_env} (mqtt.password_env) is not set"
                )
            return value
        return None


@dataclass(frozen=True)
class QualityGateConfig:
    """What an enrolment recording must offer; defaults suit 10 s windows and minutes of audio.

    The `enrolment:` section sets the first two; the fractions are the gate's own tuning.
    """

    min_seconds: float = 20.0  # usable audio, after dropping bad windows
    min_windows: int = 5  # fewer give no leave-one-out statistics for a threshold
    max_silent_fraction: float = 0.2
    max_clipped_fraction: float = 0.05
    max_unlike_fraction: float = 0.2  # stuck or tonal windows

    def __post_init__(self) -> None:
        if self.min_windows < 2:
            raise BadInputError(f"min_windows = {self.min_windows}: must be at least 2")
        for name in ("max_silent_fraction", "max_clipped_fraction", "max_unlike_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise BadInputError(f"{name} = {value}: must be a fraction in [0, 1]")


class EnrolmentSection(Section):
    min_seconds: float = Field(
        default=QualityGateConfig.min_seconds, ge=1.0, le=3600.0,
        description="usable audio an enrolment must offer after the quality gate drops bad "
        "windows; less is rejected",
    )
    min_windows: int = Field(
        default=QualityGateConfig.min_windows, ge=2, le=10000,
        description="usable windows an enrolment must offer (the threshold needs "
        "leave-one-out statistics)",
    )
    keep_versions: int = Field(
        default=DEFAULT_KEEP, ge=2, le=1000,
        description="bank versions kept per model (the current and previous always stay)",
    )
    session_expiry_s: float = Field(
        default=PENDING_TIMEOUT_S, ge=10.0, le=7 * 86400.0,
        description="an enrolment left uncommitted this long after its recording ended is "
        "discarded when another one starts",
    )
    import_dir: ConfigPath | None = Field(
        default=None,
        description="the only directory whose recordings `enroll/files` on the control socket "
        "may read (links and '..' resolved first); null = <state_dir>/enrol-inbox",
    )

    def gate(self) -> QualityGateConfig:
        return QualityGateConfig(min_seconds=self.min_seconds, min_windows=self.min_windows)


class RolloutSection(Section):
    max_bundle_mb: float = Field(
        default=1000.0, gt=0.0, le=100_000.0,
        description="largest bundle bundle/install downloads; a larger size_bytes is refused",
    )
    download_timeout_s: float = Field(
        default=60.0, ge=1.0, le=3600.0,
        description="a download that receives nothing for this long is abandoned",
    )
    tls_ca_file: ConfigPath | None = Field(
        default=None,
        description="CA bundle that https bundle URLs are checked against (a plant's own CA); "
        "null = the system CAs",
    )
    watch_windows: int = Field(
        default=5, ge=1, le=10_000,
        description="windows each machine must score cleanly after a swap; a model error "
        "or a new fault among them rolls the bundle back by itself",
    )
    watch_timeout_s: float = Field(
        default=300.0, ge=1.0, le=86_400.0,
        description="longest wait for those windows; an install not watched by then stays, "
        "reported as unwatched",
    )

def read_secret(file: Path | None, env: str | None, key: str) -> str | None:
    """A secret from a file (its first line; the loader made a relative path absolute) or
    an environment variable; None when neither is set. Read at each call, so a rotated
    secret file is picked up."""
    if file is not None:
        path = Path(file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read {key}_file {str(path)!r}: {exc}") from exc
        return lines[0] if lines else ""
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"environment variable {env} ({key}_env) is not set")
        return value
    return None


LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a server on this box (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebSection(Section):
    enabled: bool = Field(
        default=False,
        description="serve the local web view, clips and Prometheus /metrics from the daemon",
    )
    host: str = Field(
        default="127.0.0.1", min_length=1, max_length=253,
        description="address to bind; anything but loopback needs web.token_file or "
        "web.token_env",
    )
    port: int = Field(default=8080, ge=1, le=65535, description="TCP port to bind")
    public_url: str | None = Field(
        default=None,
        description="base URL others reach the view at (behind a proxy or a host name), for "
        "the clip_url of events; null = http://<host>:<port>",
    )
    token_file: ConfigPath | None = Field(
        default=None,
        description="file whose first line is the access token; a relative path is looked up "
        "in $CREDENTIALS_DIRECTORY (systemd LoadCredential=) when set",
    )
    token_env: str | None = Field(
        default=None, description="environment variable holding the access token"
    )
    commands_enabled: bool = Field(
        default=False,
        description="allow state-changing requests (enrolment, alarm feedback); false = "
        "the view is read-only",
    )
    metrics: bool = Field(default=True, description="serve Prometheus metrics on /metrics")
    timeline_points: int = Field(
        default=3600, ge=10, le=100_000,
        description="window scores kept per machine for the live timeline",
    )
    alarms_kept: int = Field(
        default=200, ge=1, le=10_000, description="alarms kept in memory for the alarm list"
    )

    @model_validator(mode="after")
    def _consistent(self) -> WebSection:
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("set only one of web.token_file and web.token_env")
        if self.token_env is not None and self.token_env not in os.environ:
            raise ValueError(
                f"environment variable {self.token_env} (web.token_env) is not set: "
                "export it or use token_file"
            )
        if self.enabled and not is_loopback(self.host) and not self.has_token:
            raise ValueError(
                f"web.host = {self.host!r} serves beyond this box without a token: set "
                "web.token_file or web.token_env, or bind 127.0.0.1"
            )
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or (
                parts.fragment
            ):
                raise ValueError(
                    f"web.public_url = {self.public_url!r}: give an absolute http(s) URL "
                    "such as https://box1.plant.example:8080 (no query or fragment)"
                )
        return self

    @property
    def has_token(self) -> bool:
        return self.token_file is not None or self.token_env is not None

    def token(self) -> str | None:
        """The access token now (None: no token configured, loopback only)."""
        value = read_secret(self.token_file, self.token_env, "web.token")
        if value is not None and not value:
            raise ConfigError("the web token is empty: write a token in web.token_file")
        return value

    @property
    def base_url(self) -> str:
        """Where clips are fetched from: public_url, else the bind address."""
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="log level (logs go to stderr for journald)"
    )
    stats_interval_s: float = Field(
        default=300.0, ge=1.0, le=86400.0,
        description="seconds between summary log lines (windows, drops, lateness)",
    )


class Config(Section):
    device_id: Annotated[str, Field(pattern=SEGMENT_PATTERN)] = Field(
        default="edge-box", description="this box's name, one MQTT topic level"
    )
    state_dir: ConfigPath = Field(
        default=DEFAULT_STATE_DIR,
        description="learned banks, the MQTT journal and clips live here",
    )
    source: SourceConfig = Field(default_factory=SourceConfig, description="audio input")
    machines: list[MachineConfig] = Field(
        default_factory=lambda: [MachineConfig(name="machine")],
        min_length=1, max_length=32, description="machines monitored, one per input channel",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="model and runtime")
    windows: WindowsConfig = Field(default_factory=WindowsConfig, description="windowing")
    preprocess: PreprocessSection = Field(
        default_factory=PreprocessSection, description="window conditioning"
    )
    learning: LearningConfig = Field(
        default_factory=LearningConfig, description="built-in model learning"
    )
    decision: DecisionSection = Field(
        default_factory=DecisionSection, description="alarm state machine"
    )
    faults: FaultsConfig = Field(
        default_factory=FaultsConfig, description="when the state becomes fault"
    )
    alarm_audio: AlarmAudioConfig = Field(
        default_factory=AlarmAudioConfig, description="alarm clips and their retention"
    )
    enrolment: EnrolmentSection = Field(
        default_factory=EnrolmentSection, description="re-enrolment on site"
    )
    mqtt: MqttSection = Field(
        default_factory=MqttSection, description="MQTT broker connection and topics"
    )
    rollout: RolloutSection = Field(
        default_factory=RolloutSection, description="bundle installs by MQTT command"
    )
    web: WebSection = Field(
        default_factory=WebSection, description="local web view, clip downloads and /metrics"
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="logging")

    @model_validator(mode="after")
    def _machines_fit_source(self) -> Config:
        names = [m.name for m in self.machines]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"machines: names {dupes} are used twice; give each a unique name")
        for i, m in enumerate(self.machines):
            if m.channel >= self.source.channels:
                raise ValueError(
                    f"machines.{i}.channel = {m.channel} but source.channels = "
                    f"{self.source.channels}: channels are 0-based, raise source.channels or "
                    "pick a lower channel"
                )
            if m.bundle_machine is not None and self.model.bundle is None:
                raise ValueError(
                    f"machines.{i}.bundle_machine is set but model.bundle is null: "
                    "configure a bundle or remove bundle_machine"
                )
        return self

    # Derived settings ---------------------------------------------------------------

    @property
    def clip_dir(self) -> Path:
        return self.alarm_audio.dir or self.state_dir / "clips"

    @property
    def import_dir(self) -> Path:
        return self.enrolment.import_dir or self.state_dir / IMPORT_DIR_NAME

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "mqtt-journal.sqlite"
