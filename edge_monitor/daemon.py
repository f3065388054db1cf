"""The one place that wires the daemon's threads: source, processing, MQTT; one stop event.

Threads: the audio source's own (PortAudio callback and its supervisor, or the replay
reader), the processing thread (`edge_monitor.pipeline.processing`), paho's network thread and the
MQTT outbox and command workers. The main thread only waits: on SIGTERM/SIGINT it sets the
stop event and shuts down in order (processing, source, MQTT: `offline` is published and the
journal flushed); on SIGHUP (or the `reload` command) it reloads the config and the
bundle and applies them between two windows. A source whose settings did not change keeps
running, so a reload loses no audio. A bad config on reload is logged and the running one
kept: the daemon never goes deaf because of a typo.

With `web.enabled`, the web view (`edge_monitor.web.server.WebServer`) runs on a thread and
event loop of its own; the processing loop only appends to its live feed
(`edge_monitor.pipeline.live`); its enrolment and "this alarm was normal" requests go to the
enrolment manager, as the control socket's and the MQTT commands do.

Enrolment (`edge_monitor.enrolment.control.EnrolmentService`) plugs in through `Daemon.processor`
(audio taps, `set_enrolling`, `swap_detector`), `Daemon.register_command` and the local
control socket; at start and reload each machine's detector gets the banks its enrolment
store points at (`BankStore.apply`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import signal
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from threadpoolctl import threadpool_limits

from edge_monitor.audio_in.capture import AudioSource, SoundDeviceSource
from edge_monitor.audio_in.replay import ReplaySource
from edge_monitor.config.directories import prepare_dir
from edge_monitor.config.loader import load_config
from edge_monitor.config.sections import Config
from edge_monitor.core.bundle import Bundle, load_bundle
from edge_monitor.core.detector import Detector
from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.errors import (
    EXIT_BAD_INPUT,
    EXIT_RUNTIME_FAILURE,
    BadInputError,
    ConfigError,
    EdgeMonitorError,
)
from edge_monitor.core.preprocess import PreprocessConfig
from edge_monitor.core.signing import Signer, TrustPolicy
from edge_monitor.enrolment.bank_store import BankStore
from edge_monitor.enrolment.control import EnrolmentService, check_socket_path, socket_path
from edge_monitor.fleet.rollout import RolloutService
from edge_monitor.fleet.store import BundleStore
from edge_monitor.mqtt.client import MqttClient
from edge_monitor.mqtt.commands import Command
from edge_monitor.mqtt.topics import BundleStatus
from edge_monitor.pipeline.clip_store import ClipStore
from edge_monitor.pipeline.learning import (
    BankLearner,
    LearnedModel,
    builtin_embedder,
    bundle_model,
    load_learned,
)
from edge_monitor.pipeline.live import LiveFeed
from edge_monitor.pipeline.machine import MachineSetup
from edge_monitor.pipeline.processing import Processor
from edge_monitor.pipeline.service import Notifier
from edge_monitor.pipeline.settings import ProcessingSettings

if TYPE_CHECKING:
    from edge_monitor.web.context import WebContext
    from edge_monitor.web.server import WebServer

log = logging.getLogger(__name__)

MAIN_WAIT_S = 0.2
JOIN_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 60.0
BUILTIN_WINDOW_S = 10.0
MB = 1_000_000
# One window at a time is far too little work for a multi-threaded BLAS: its worker threads
# only spin. One thread halves the CPU cost of embedding a window on a small box.
BLAS_THREADS = 1
DAY_S = 86400.0


@dataclass(frozen=True)
class Serving:
    """Which bundle serves: origin installed (bundle/install), config or builtin."""

    origin: str
    version: str | None = None
    signer: Signer | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "version": self.version,
                "signer": self.signer.name if self.signer else None,
                "key_id": self.signer.key_id if self.signer else None}


@dataclass
class Plan:
    """What a config turns into before anything starts: settings and per-machine setups."""

    settings: ProcessingSettings
    machines: list[MachineSetup]
    model_rate_hz: int
    serving: Serving = Serving("builtin")


def trust_policy(config: Config) -> TrustPolicy:
    return TrustPolicy.from_files(config.model.trusted_keys, config.model.require_signature)


def _bundle_detectors(
    config: Config, path: Path
) -> tuple[dict[str, Detector], Bundle, dict[str, Embedder]]:
    """Load and verify the bundle; a .tar is unpacked into a temporary directory that is
    removed once the runtime sessions hold the models, so restarts leave nothing behind.
    The embedders are the detectors' own, for machines that learn their bank on site."""
    providers = [p.lower() for p in config.model.providers]
    with tempfile.TemporaryDirectory(prefix="edge-monitor-bundle-") as unpacked:
        bundle = load_bundle(path, unpacked, trust_policy(config))
        embedders = bundle.embedders(providers)
        return bundle.detectors(providers, embedders=embedders), bundle, embedders


def learning_amount(learner: BankLearner) -> str:
    """What a learner waits for, in seconds and windows (the daemon's log and `check`)."""
    window_s = learner.embedder.window_s
    return (f"{learner.target_windows * window_s:g} s of usable audio "
            f"({learner.target_windows} windows of {window_s:g} s)")


def _banked(config: Config, name: str, channel: int, detector: Detector,
            origin: str, enrolled: bool = True) -> MachineSetup:
    """A machine with a detector, its enrolled banks applied when it has some (and
    `enrolled`: an offline rollback plans without them)."""
    applied = BankStore(config.state_dir, name).apply(detector) if enrolled else detector
    origin = origin if applied is detector else "enrolled on site"
    return MachineSetup(name, channel, detector=applied, bank_origin=origin)


def learned_setup(
    config: Config, name: str, channel: int, embedder: Embedder,
    preprocess_config: PreprocessConfig, model: LearnedModel | None = None,
    enrolled: bool = True,
) -> MachineSetup:
    """A machine whose bank is learned on site: its saved bank when it still fits the model
    and settings (with enrolled banks applied), else a learner. `model` defaults to the
    built-in one."""
    learner = BankLearner(name, embedder, config.state_dir, config.learning.seconds,
                          config.learning.scoring, preprocess_config, model)
    bank = load_learned(config.state_dir, name, learner.fingerprint)
    if bank is not None:
        log.info("machine %s: using the learned bank %s", name, bank.version)
        return _banked(config, name, channel,
                       learner.detector(bank, config.decision.false_alarm_rate),
                       "learned on site", enrolled)
    log.info("machine %s: no learned bank of model %s yet; learning from the next %s",
             name, learner.model.name, learning_amount(learner))
    return MachineSetup(name, channel, learner=learner)


def plan_machines(config: Config, bundle_path: Path | None = None,
                  enrolled: bool = True) -> Plan:
    """Detectors (from the bundle, or learned banks on disk) or learners, per machine.

    The bundle is `bundle_path` when given (a rollout checking a candidate), else the one
    `bundle/install` made current (edge_monitor.fleet.store), else `model.bundle`.
    `enrolled` False leaves the enrolled banks out (an offline rollback of a bad one).
    Raises ConfigError/BundleError/BankError when the config and the models disagree.
    """
    preprocess_config = config.preprocess.to_preprocess_config()
    setups: list[MachineSetup] = []
    origin = "installed"
    if bundle_path is None:
        bundle_path = BundleStore(config.state_dir).active_dir()
    if bundle_path is None and config.model.bundle is not None:
        bundle_path, origin = config.model.bundle, "config"
    serving = Serving("builtin")
    if bundle_path is not None:
        detectors, bundle, embedders = _bundle_detectors(config, bundle_path)
        serving = Serving(origin, bundle.version, bundle.signer)
        manifest = bundle.manifest
        for m in config.machines:
            key = m.bundle_machine or m.name
            if key in detectors:
                setups.append(_banked(config, m.name, m.channel, detectors[key],
                                      "from the bundle", enrolled))
            elif manifest.learns(key):
                model, spec = next(iter(manifest.models.items()))
                setups.append(learned_setup(config, m.name, m.channel, embedders[model],
                                            bundle.preprocess, bundle_model(model, spec),
                                            enrolled))
            else:
                raise ConfigError(
                    f"machines: {m.name!r} looks for {key!r} in the bundle, which has "
                    f"{sorted(manifest.machines)}; set machines[].bundle_machine to one of them"
                )
        first = next(iter(embedders.values()))
        model_rate, window_s = first.sample_rate_hz, first.window_s
        if config.windows.window_s is not None and config.windows.window_s != window_s:
            raise ConfigError(
                f"windows.window_s = {config.windows.window_s}: the bundle's model takes "
                f"{window_s} s windows; remove windows.window_s or set it to {window_s}"
            )
    else:
        model_rate = config.model.sample_rate_hz
        window_s = config.windows.window_s or BUILTIN_WINDOW_S
        for m in config.machines:
            setups.append(learned_setup(config, m.name, m.channel,
                                        builtin_embedder(model_rate, window_s), preprocess_config,
                                        enrolled=enrolled))
    if config.windows.hop_s > window_s:
        raise ConfigError(
            f"windows.hop_s = {config.windows.hop_s} is longer than the {window_s} s window: "
            "make hop_s <= window_s"
        )
    settings = ProcessingSettings(config, window_s, model_rate)
    return Plan(settings, setups, model_rate, serving)


def build_source(config: Config, model_rate_hz: int) -> AudioSource:
    s = config.source
    rate = s.sample_rate_hz or model_rate_hz
    if s.kind == "replay":
        return ReplaySource(
            s.replay.paths, rate, s.channels, s.replay.realtime, s.block_s, s.replay.loop,
            queue_s=s.buffer_s, contiguous=s.replay.contiguous,
        )
    return SoundDeviceSource(
        s.device, s.channels, rate, s.block_s, s.buffer_s,
        stall_s=config.faults.no_audio_s, retry_min_s=s.reopen_s,
        retry_max_s=max(10.0, s.reopen_s),
    )


def build_clip_store(config: Config) -> ClipStore | None:
    a = config.alarm_audio
    if not a.enabled:
        return None
    return ClipStore(config.clip_dir, a.max_clips, int(a.max_mb * MB), a.max_age_days * DAY_S)


def build_mqtt(config: Config) -> MqttClient | None:
    """The MQTT client (not started, no commands registered), or None when MQTT is off."""
    if not config.mqtt.enabled:
        return None
    machines = [m.name for m in config.machines]
    return MqttClient(config.mqtt, config.device_id, config.journal_path, machines)


def daemon_directories(config: Config) -> list[tuple[str, Path, bool]]:
    """(key, path, written) of every directory the daemon uses: the state directory, the
    clip directory when clips are saved, and the enrolment import directory (only read)."""
    dirs = [("state_dir", config.state_dir, True)]
    if config.alarm_audio.enabled:
        dirs.append(("alarm_audio.dir", config.clip_dir, True))
    dirs.append(("enrolment.import_dir", config.import_dir, False))
    return dirs


def prepare_directories(config: Config, create: bool) -> dict[str, str]:
    """Check (`check`) or create (`run`) every directory of the config the same way; returns
    key -> how it stands (edge_monitor.config.directories)."""
    try:
        check_socket_path(socket_path(config.state_dir))
    except BadInputError as exc:
        raise ConfigError(f"state_dir = {str(config.state_dir)!r}: {exc}") from None
    return {key: prepare_dir(key, path, create, written)
            for key, path, written in daemon_directories(config)}


@dataclass
class Assembly:
    """What `run` builds from a config before any thread starts; `check` builds the same
    and starts nothing, so whatever `run` would refuse, `check` refuses."""

    directories: dict[str, str]
    plan: Plan
    mqtt: MqttClient | None
    source: AudioSource
    clips: ClipStore | None
    processor: Processor


def assemble(
    config: Config, create: bool,
    mqtt_factory: Callable[[Config], MqttClient | None] = build_mqtt,
    notifier: Notifier | None = None, stop: threading.Event | None = None,
    live: LiveFeed | None = None, clip_base_url: str | None = None,
) -> Assembly:
    """Directories (created when `create`), plan, MQTT client (password read, TLS loaded,
    not connected), audio source (not opened), clip store and the processing loop with every
    machine's window buffers (not started; `live` and `clip_base_url` are the web view's)."""
    directories = prepare_directories(config, create)
    plan = plan_machines(config)
    mqtt = mqtt_factory(config)
    if mqtt is not None:
        mqtt.prepare()
    source = build_source(config, plan.model_rate_hz)
    clips = build_clip_store(config)
    try:
        processor = Processor(source, plan.settings, plan.machines, mqtt, clips,
                              notifier or Notifier(), stop or threading.Event(), live,
                              clip_base_url)
    except MemoryError as exc:
        where = "the bundle's models[].window_s" if plan.serving.origin != "builtin" else \
            "windows.window_s"
        raise ConfigError(
            f"window {plan.settings.window_s:g} s at {plan.model_rate_hz} Hz ({where}): its "
            f"buffers do not fit in memory ({exc}); use a model that takes windows of seconds"
        ) from None
    return Assembly(directories, plan, mqtt, source, clips, processor)


class Daemon:
    """Owns the threads of one `edge-monitor run`; `run()` returns the exit code."""

    def __init__(self, config_path: str | Path, notifier: Notifier | None = None) -> None:
        self.config_path = Path(config_path)
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()
        self.config: Config | None = None
        self.source: AudioSource | None = None
        self.processor: Processor | None = None
        self.mqtt: MqttClient | None = None
        self.enrolment: EnrolmentService | None = None
        self.rollout: RolloutService | None = None
        self.serving = Serving("builtin")
        self.live: LiveFeed | None = None
        self.web: WebServer | None = None
        self._reloads: queue.Queue[concurrent.futures.Future[dict[str, Any]]] = queue.Queue()
        self._extra_commands: dict[str, Callable[[Command], Mapping[str, Any] | None]] = {}

    # Public hooks ----------------------------------------------------------------------

    def register_command(
        self, name: str, handler: Callable[[Command], Mapping[str, Any] | None]
    ) -> None:
        """Add an MQTT command handler (e.g. enrolment); kept across MQTT reconnections."""
        self._extra_commands[name] = handler
        if self.mqtt is not None:
            self.mqtt.commands.register(name, handler)

    def request_reload(self) -> concurrent.futures.Future[dict[str, Any]]:
        """Ask the main thread to reload; the future holds the outcome."""
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._reloads.put(future)
        return future

    def request_stop(self) -> None:
        self.stop_event.set()

    def plan(self, bundle_path: Path) -> Plan:
        """Plan the running config on a candidate bundle: every check `check` makes."""
        assert self.config is not None
        return plan_machines(self.config, bundle_path)

    def publish_bundle(self, status: BundleStatus) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_bundle(status)

    # Lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        threadpool_limits(limits=BLAS_THREADS, user_api="blas")
        config = load_config(self.config_path)
        self._apply_log_level(config)
        e = config.enrolment
        # Built first: they register their MQTT commands, which _build_mqtt hands the client.
        enrolment = EnrolmentService(self, config.state_dir, e.gate(), e.keep_versions,
                                     e.session_expiry_s, config.import_dir)
        rollout = RolloutService(self, config.state_dir)
        self._start_web(config)  # first: a port in use fails before anything else runs
        try:
            built = assemble(config, True, self._build_mqtt, self.notifier, self.stop_event,
                             self.live, self._clip_base_url(config))
        except BaseException:
            self._stop_web()
            raise
        plan = built.plan
        self.config, self.serving = config, plan.serving
        self.enrolment, self.rollout = enrolment, rollout
        self._install_signals()
        self.mqtt, self.source, self.processor = built.mqtt, built.source, built.processor
        if self.mqtt is not None:
            self.mqtt.start()
            self.mqtt.end_open_alarms()  # the alarms a crash of the last run left open
        self.source.start()
        self.processor.start()
        self.enrolment.start()
        self.rollout.publish()
        log.info("edge-monitor running: device %s, %d machine(s), %s source at %d Hz, "
                 "window %.2f s, hop %.2f s", config.device_id, len(plan.machines),
                 config.source.kind, self.source.sample_rate_hz, plan.settings.window_s,
                 plan.settings.hop_s)
        try:
            holding = False
            while not self.stop_event.wait(MAIN_WAIT_S):
                self._serve_reloads()
                if self.processor.finished.is_set():
                    if not self._hold_after_replay():
                        break
                    if not holding:
                        log.info("replay finished; holding until stopped (source.replay.hold)")
                        holding = True
        finally:
            self._shutdown()
        if self.processor.error is not None:
            return EXIT_RUNTIME_FAILURE
        return self._replay_outcome()

    def _replay_outcome(self) -> int:
        """A replay (back-test) with files it could not read did not judge them: say how
        many, and exit 2 rather than 0."""
        if not isinstance(self.source, ReplaySource) or not self.source.unreadable:
            return 0
        bad = self.source.unreadable
        shown = "; ".join(list(bad.values())[:3])
        log.error("replay: %d of %d file(s) could not be read and were not judged (%s%s); "
                  "fix or remove them", len(bad), len(self.source.files), shown,
                  "; ..." if len(bad) > 3 else "")
        return EXIT_BAD_INPUT

    def _hold_after_replay(self) -> bool:
        c = self.config
        return (c is not None and c.source.kind == "replay" and c.source.replay.hold
                and self.processor is not None and self.processor.error is None)

    # The web view ----------------------------------------------------------------------

    @staticmethod
    def _clip_base_url(config: Config) -> str | None:
        return config.web.base_url if config.web.enabled else None

    def _start_web(self, config: Config) -> None:
        """Start the web view when configured (aiohttp is imported only then)."""
        if not config.web.enabled:
            self.live = None
            return
        from edge_monitor.web.server import WebServer

        w = config.web
        if self.live is None or (self.live.timeline_points, self.live.alarms_kept) != (
            w.timeline_points, w.alarms_kept
        ):
            self.live = LiveFeed(w.timeline_points, w.alarms_kept)
        server = WebServer(w, self._web_context(config.device_id, self.live))
        server.start()
        self.web = server

    def _stop_web(self) -> None:
        if self.web is not None:
            self.web.stop()
            self.web = None

    def _web_context(self, device_id: str, live: LiveFeed) -> WebContext:
        from edge_monitor.web.context import WebContext

        def snapshot() -> dict[str, Any]:
            return self.processor.snapshot() if self.processor is not None else {}

        def broker() -> dict[str, Any] | None:
            if self.mqtt is None:
                return None
            s = self.mqtt.stats()
            return {"connected": s.connected, "backlog": s.backlog, "in_flight": s.in_flight,
                    "dropped_events": s.dropped_events, "last_error": s.last_error}

        def clip_dir() -> Path | None:
            c = self.config
            return c.clip_dir if c is not None and c.alarm_audio.enabled else None

        def enrol(name: str, args: Mapping[str, Any], who: str) -> Mapping[str, Any]:
            if self.enrolment is None:
                raise EdgeMonitorError("enrolment is not running yet")
            return self.enrolment.manager.dispatch(name, args, who)

        def alarm_was_normal(machine: str, event_id: str, who: str) -> Mapping[str, Any]:
            if self.enrolment is None:
                raise EdgeMonitorError("enrolment is not running yet")
            return self.enrolment.manager.alarm_was_normal(machine, event_id, who)

        return WebContext(device_id, live, snapshot, broker, clip_dir,
                          lambda: self.serving.to_dict(), enrol, alarm_was_normal)

    def _apply_log_level(self, config: Config) -> None:
        root = logging.getLogger()
        if root.level != logging.DEBUG:
            root.setLevel(config.logging.level)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self.stop_event.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            log.info("SIGHUP: reloading %s", self.config_path)
            self._reloads.put(concurrent.futures.Future())

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def _build_mqtt(self, config: Config) -> MqttClient | None:
        """The client with every command registered, not started yet."""
        client = build_mqtt(config)
        if client is None:
            log.info("MQTT disabled (mqtt.enabled: false): states and alarms go to the log only")
            return None
        client.commands.register("status", self._status_command)
        client.commands.register("reload", self._reload_command)
        for name, handler in self._extra_commands.items():
            client.commands.register(name, handler)
        return client

    def _shutdown(self) -> None:
        self.notifier.stopping()
        if self.enrolment is not None:
            self.enrolment.stop()  # a recording in progress is cancelled; banks stay as they are
        self.stop_event.set()
        if self.processor is not None and not self.processor.join(JOIN_TIMEOUT_S):
            log.error("the processing thread did not stop within %.0f s", JOIN_TIMEOUT_S)
        if self.source is not None:
            self.source.stop()
        if self.mqtt is not None:
            self.mqtt.stop()
        self._stop_web()
        while not self._reloads.empty():
            self._reloads.get_nowait().set_result({"reloaded": False, "reason": "stopping"})
        log.info("edge-monitor stopped")

    # Reload ----------------------------------------------------------------------------

    def _serve_reloads(self) -> None:
        while True:
            try:
                future = self._reloads.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(self._reload())
            except Exception as exc:
                log.exception("reload failed")
                future.set_exception(exc)

    def _reload(self) -> dict[str, Any]:
        """Reload; whatever happens, systemd hears READY=1 again (it waits after RELOADING=1)."""
        self.notifier.reloading()
        try:
            return self._apply_reload()
        except BadInputError as exc:
            log.error("reload rejected, the running configuration stays: %s", exc)
            raise
        finally:
            self.notifier.ready()

    def _apply_reload(self) -> dict[str, Any]:
        assert self.config is not None and self.processor is not None
        if not self.processor.alive:
            raise BadInputError(
                "the replay has ended and the daemon only holds (source.replay.hold): there "
                "is nothing running to reload; restart the daemon to apply the config")
        new = load_config(self.config_path)
        prepare_directories(new, create=True)
        plan = plan_machines(new)
        old = self.config
        source = None
        if new.source != old.source or plan.model_rate_hz != self.processor.settings.model_rate_hz:
            source = build_source(new, plan.model_rate_hz)
        self._apply_log_level(new)
        if new.enrolment != old.enrolment and self.enrolment is not None:
            e = new.enrolment
            self.enrolment.manager.configure(e.gate(), e.keep_versions, e.session_expiry_s)
            self.enrolment.server.import_dir = new.import_dir
        if source is not None:
            source.start()
        if new.mqtt != old.mqtt or new.device_id != old.device_id or new.state_dir != old.state_dir:
            self._replace_mqtt(new)
        elif self.mqtt is not None:
            self.mqtt.set_machines([m.name for m in new.machines])
        if new.alarm_audio != old.alarm_audio or new.state_dir != old.state_dir:
            store = build_clip_store(new)
            self.processor.set_clips(store).result(RELOAD_TIMEOUT_S)
        if new.web != old.web or new.device_id != old.device_id:
            self._stop_web()
            self._start_web(new)
            self.processor.set_live(self.live, self._clip_base_url(new)).result(RELOAD_TIMEOUT_S)
        self.processor.reconfigure(plan.settings, plan.machines, source).result(RELOAD_TIMEOUT_S)
        if source is not None:
            assert self.source is not None
            self.source.stop()
            self.source = source
        self.config, self.serving = new, plan.serving
        if new.state_dir != old.state_dir and self.rollout is not None:
            self.rollout = RolloutService(self, new.state_dir)
        if self.rollout is not None:
            self.rollout.publish()
        log.info("reload done (source %s)", "restarted" if source else "kept running")
        return {"reloaded": True, "source_restarted": source is not None,
                "machines": [m.name for m in new.machines]}

    def _replace_mqtt(self, config: Config) -> None:
        """One connection at a time: both use the same client id and journal, and a second
        connection would make the broker drop the first (and, stopped afterwards, the old
        one would leave `offline` retained). The processor publishes to the new client
        at once (queued until it starts); a `reload` command still running on the old
        client replies through the new one."""
        assert self.processor is not None
        client = self._build_mqtt(config)
        if client is not None:
            client.prepare()  # a bad secret or TLS file fails here, the old client still up
        self.processor.set_publisher(client).result(RELOAD_TIMEOUT_S)
        old, self.mqtt = self.mqtt, client
        if old is not None:
            old.hand_over(client)
            old.stop()
        if client is not None:
            client.start()

    # Commands (on the MQTT command worker) ---------------------------------------------

    def _status_command(self, command: Command) -> Mapping[str, Any]:
        assert self.processor is not None
        status = self.processor.snapshot()
        if self.mqtt is not None:
            stats = self.mqtt.stats()
            status["mqtt"] = {"backlog": stats.backlog, "dropped_events": stats.dropped_events,
                              "client_restarts": stats.restarts}
        return status

    def _reload_command(self, command: Command) -> Mapping[str, Any]:
        try:
            return self.request_reload().result(RELOAD_TIMEOUT_S)
        except concurrent.futures.TimeoutError as exc:
            message = f"reload did not finish within {RELOAD_TIMEOUT_S:.0f} s"
            raise EdgeMonitorError(message) from exc


def run_daemon(config_path: str | Path) -> int:
    """Entry point of `edge-monitor run`."""
    return Daemon(config_path).run()
