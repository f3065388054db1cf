"""The processing thread: source chunks in, decisions, MQTT messages and alarm clips out.

One thread owns everything that changes per window, so nothing here needs a lock: it drains
the source and hands each chunk to every machine (`edge_monitor.pipeline.machine`: windows,
judgement, decision), checks the shared input health (`edge_monitor.pipeline.health`) and
reports what changed (`edge_monitor.pipeline.reporting`). Other threads talk to it only
through `submit(fn)`: the function runs on this thread between two chunks, which is how a
reload, an enrolment commit or a rollback swaps a detector atomically between windows
without losing audio.

The watchdog is pinged from this loop only, so a stuck loop gets the service restarted.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_monitor.audio_in.capture import AudioSource, Chunk
from edge_monitor.core.detector import Detector
from edge_monitor.core.errors import EdgeMonitorError
from edge_monitor.pipeline.health import InputHealth
from edge_monitor.pipeline.live import LiveFeed
from edge_monitor.pipeline.machine import AudioTap, Machine, MachineSetup
from edge_monitor.pipeline.reporting import ClipSaver, Publisher, Reporter, utc_now
from edge_monitor.pipeline.service import Notifier
from edge_monitor.pipeline.settings import Counters, ProcessingSettings

log = logging.getLogger(__name__)

GET_TIMEOUT_S = 0.2

Future = concurrent.futures.Future


class Processor:
    """Runs the processing loop on its own thread; see the module docstring."""

    def __init__(
        self,
        source: AudioSource,
        settings: ProcessingSettings,
        machines: list[MachineSetup],
        publisher: Publisher | None,
        clips: ClipSaver | None,
        notifier: Notifier,
        stop: threading.Event,
        live: LiveFeed | None = None,
        clip_base_url: str | None = None,
    ) -> None:
        self.source = source
        self.settings = settings
        self.notifier = notifier
        self.stop_event = stop
        self.counters = Counters()
        self.finished = threading.Event()
        self.health = InputHealth(source, settings)
        self.reporter = Reporter(publisher, clips, self.health, self.counters)
        self.reporter.live, self.reporter.clip_base_url = live, clip_base_url
        self._machines = [self._new_machine(m, settings) for m in machines]
        self._configure_reporter()
        self._calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._last_stats_log = time.monotonic()
        self.error: BaseException | None = None

    # Thread control -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="processing", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on the processing thread between chunks; the future holds its result."""
        future: Future[Any] = Future()
        if not self.alive:
            future.set_exception(RuntimeError("the processing loop is not running"))
            return future
        self._calls.put((fn, future))
        return future

    # Operations for other threads (each runs on the processing thread via submit) ------

    def swap_detector(self, machine: str, detector: Detector) -> Future[Any]:
        """Replace a machine's detector between two windows (enrolment commit, rollback)."""
        return self.submit(lambda: self._swap_detector(machine, detector))

    def detector(self, machine: str) -> Future[Any]:
        """The machine's current detector (None while learning)."""
        return self.submit(lambda: self._machine(machine).setup.detector)

    def add_tap(self, machine: str, tap: AudioTap) -> Future[Any]:
        """Send the machine's captured audio to `tap` from the next chunk on."""
        return self.submit(lambda: self._machine(machine).taps.append(tap))

    def remove_tap(self, machine: str, tap: AudioTap) -> Future[Any]:
        def remove() -> None:
            taps = self._machine(machine).taps
            if tap in taps:
                taps.remove(tap)
        return self.submit(remove)

    def set_enrolling(self, machine: str, enrolling: bool) -> Future[Any]:
        """Suspend (True) or resume (False) decisions while a technician records the machine."""
        def apply() -> None:
            m = self._machine(machine)
            m.enrolling = enrolling
            m.settle(utc_now())
        return self.submit(apply)

    def set_publisher(self, publisher: Publisher | None) -> Future[Any]:
        """Publish to another client from the next window on (a reload moved MQTT)."""
        return self.submit(lambda: setattr(self.reporter, "publisher", publisher))

    def set_clips(self, clips: ClipSaver | None) -> Future[Any]:
        """Save alarm clips to another store (a reload changed alarm_audio)."""
        return self.submit(lambda: setattr(self.reporter, "clips", clips))

    def set_live(self, live: LiveFeed | None, clip_base_url: str | None) -> Future[Any]:
        """Feed another web view (a reload turned it on, off or moved it)."""
        def apply() -> None:
            self.reporter.live, self.reporter.clip_base_url = live, clip_base_url
        return self.submit(apply)

    def reconfigure(
        self, settings: ProcessingSettings, machines: list[MachineSetup],
        source: AudioSource | None = None,
    ) -> Future[Any]:
        """Apply a reloaded config between chunks; buffered audio is kept where it can be."""
        return self.submit(lambda: self._reconfigure(settings, machines, source))

    def snapshot(self) -> dict[str, Any]:
        """A copy of the latest per-machine states and counters (any thread)."""
        return self.reporter.snapshot()

    # The loop -------------------------------------------------------------------------

    def _main(self) -> None:
        reporter = self.reporter
        try:
            self._publish_all_states()
            self.notifier.ready(reporter.status_line())  # READY=1 carries the first status
            reporter.status_changed = False
            while not self.stop_event.is_set():
                self._run_calls()
                chunk = self.source.get(GET_TIMEOUT_S)
                if chunk is not None:
                    self._on_chunk(chunk)
                self._check_faults()
                if reporter.status_changed:
                    reporter.status_changed = False
                    self.notifier.status(reporter.status_line())
                self.notifier.ping_watchdog_if_due()
                self._periodic()
                if chunk is None and self.source.finished:
                    log.info("the source has no more audio")
                    break
        except BaseException as exc:  # the daemon must learn that its loop died
            log.exception("the processing loop failed")
            self.error = exc
            self.stop_event.set()
        finally:
            self._run_calls()
            at = utc_now()
            for m in self._machines:
                m.close_alarm(at)
            reporter.update_snapshot()
            reporter.log_stats(final=True)
            self.finished.set()

    def _run_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:  # reported to the caller, never kills the loop
                future.set_exception(exc)

    def _on_chunk(self, chunk: Chunk) -> None:
        self.health.chunk_arrived(chunk.fault)
        if chunk.fault is not None:
            return
        self.counters.frames += chunk.frames.shape[0]
        for m in self._machines:
            m.feed(chunk)

    def _check_faults(self) -> None:
        self.health.check()
        at = utc_now()
        for m in self._machines:
            m.settle(at)

    def _periodic(self) -> None:
        now = time.monotonic()
        self.reporter.update_snapshot()
        if now - self._last_stats_log >= self.settings.config.logging.stats_interval_s:
            self._last_stats_log = now
            self.reporter.log_stats()

    def _publish_all_states(self) -> None:
        """Every machine's state once: settling may already have published a changed one."""
        at = utc_now()
        for m in self._machines:
            before = (m.decision.status, m.decision.reason)
            m.settle(at)
            if (m.decision.status, m.decision.reason) == before:
                self.reporter.publish_state(m)

    # Changes applied on this thread ----------------------------------------------------

    def _machine(self, name: str) -> Machine:
        for m in self._machines:
            if m.name == name:
                return m
        raise EdgeMonitorError(f"unknown machine {name!r}: configured are "
                               f"{[m.name for m in self._machines]}")

    def _swap_detector(self, name: str, detector: Detector) -> None:
        m = self._machine(name)
        old = m.setup.detector
        m.setup.detector = detector
        m.setup.learner = None
        log.info("machine %s: detector swapped (bank %s -> %s, threshold %.5f)", name,
                 old.bank_version if old else "none", detector.bank_version, detector.threshold)
        self.reporter.update_snapshot()

    def _new_machine(self, setup: MachineSetup, settings: ProcessingSettings) -> Machine:
        return Machine(setup, settings, self.health, self.reporter, self.counters)

    def _configure_reporter(self) -> None:
        self.reporter.machines = self._machines
        self.reporter.score_telemetry = self.settings.config.mqtt.score_telemetry
        self.reporter.score_interval_s = self.settings.config.mqtt.score_interval_s
        self.reporter.threshold_scale = self.settings.decision.threshold_scale

    def _reconfigure(
        self, settings: ProcessingSettings, machines: list[MachineSetup],
        source: AudioSource | None,
    ) -> None:
        old_machines = {m.name: m for m in self._machines}
        same_windows = (settings.window_s, settings.hop_s, settings.model_rate_hz) == (
            self.settings.window_s, self.settings.hop_s, self.settings.model_rate_hz)
        fresh = []
        for setup in machines:
            m = self._new_machine(setup, settings)
            old = old_machines.pop(setup.name, None)
            if old is not None:
                m.carry_over(old, same_windows, source_kept=source is None)
            fresh.append(m)
        at = utc_now()
        for gone in old_machines.values():
            for transition in gone.decision.close(at):
                self.reporter.publish_event(gone, transition, None)
        self._machines = fresh
        self.settings = settings
        self.health.settings = settings
        if source is not None:
            self.source = source
            self.health.replace_source(source)
        self._configure_reporter()
        self._publish_all_states()
        log.info("configuration applied: %s", self.reporter.status_line())
