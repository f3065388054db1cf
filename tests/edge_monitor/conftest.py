"""A real PulseAudio server with a null sink, so tests record real audio through PortAudio.

The `pulse` fixture starts `pulseaudio` (HOME and XDG_RUNTIME_DIR in a private temp dir)
with one null sink `vsink` (16 kHz, mono, s16le). Audio played into the sink with
`pulse.play(path)` (paplay: real time, bit-exact) comes out of its monitor source
`vsink.monitor`, the server's default source. The test process gets the environment
(PULSE_SERVER, PULSE_SOURCE, HOME, XDG_RUNTIME_DIR) so that sounddevice's ALSA device
`pulse` (`PulseServer.device`) records from that monitor. `pulse.stop()` kills the server
(a lost input device) and `pulse.start()` brings it back on the same socket;
`pulse.remove_sink()` / `pulse.add_sink()` take the source away with the server still up,
as unplugging a USB microphone would.

Pad played clips with ~0.5 s of silence: the stream needs a moment before audio flows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web_support import chromium  # noqa: F401  (fixture: a headless Debian Chromium)

from edge_monitor.audio_in.capture import refresh_devices

PULSE_WAIT_S = 10.0


class PulseServer:
    """A pulseaudio process owned by one test; `stop()` / `start()` reuse its socket."""

    sink = "vsink"
    monitor = "vsink.monitor"
    device = "pulse"  # the sounddevice (ALSA) input that reaches this server

    def __init__(self, root: Path, sample_rate_hz: int = 16000) -> None:
        self.root = root
        self.sample_rate_hz = sample_rate_hz
        self.runtime_dir = root / "rt"
        self.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        self.log_path = root / "pulseaudio.log"
        self.env = {
            "HOME": str(root),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PULSE_SERVER": f"unix:{self.runtime_dir}/pulse/native",
            "PULSE_SOURCE": self.monitor,
            "PULSE_SINK": self.sink,
        }
        self._process: subprocess.Popen[bytes] | None = None

    def _child_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _sink_args(self) -> list[str]:
        return [
            "module-null-sink", f"sink_name={self.sink}", f"rate={self.sample_rate_hz}",
            "channels=1", "format=s16le",
        ]

    def start(self) -> None:
        if self.running:
            return
        sink = " ".join(self._sink_args())
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                [
                    "pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1",
                    "--use-pid-file=no", "--disallow-exit", "--log-target=stderr",
                    "--load=module-native-protocol-unix", f"--load={sink}",
                ],
                env=self._child_env(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + PULSE_WAIT_S
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"pulseaudio exited; see {self.log_path}")
            if self.pactl("info", check=False).returncode == 0:
                self.pactl("set-default-source", self.monitor)
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"pulseaudio did not answer within {PULSE_WAIT_S} s; see {self.log_path}"
        )

    def stop(self) -> None:
        """Kill the server at once, as a crash or an unplugged device would."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=PULSE_WAIT_S)
        self._process = None

    def remove_sink(self) -> None:
        """Unload the null sink and so its monitor: like unplugging the microphone."""
        modules = self.pactl("list", "short", "modules").stdout.splitlines()
        for line in modules:
            if "module-null-sink" in line and f"sink_name={self.sink}" in line:
                self.pactl("unload-module", line.split()[0])

    def add_sink(self) -> None:
        """Load the null sink again (the microphone is back) and make it the default source."""
        self.pactl("load-module", *self._sink_args())
        self.pactl("set-default-source", self.monitor)

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pactl", *args], env=self._child_env(), capture_output=True, text=True,
            check=check, timeout=PULSE_WAIT_S,
        )

    def play(self, path: Path) -> None:
        """Play a sound file into the sink; returns when it has been played (real time)."""
        self.play_async(path).wait()

    def play_async(self, path: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["paplay", f"--device={self.sink}", str(path)], env=self._child_env()
        )


@pytest.fixture
def pulse(monkeypatch: pytest.MonkeyPatch) -> Iterator[PulseServer]:
    """A running PulseAudio null-sink server; this test process is pointed at it."""
    for tool in ("pulseaudio", "pactl", "paplay"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install pulseaudio pulseaudio-utils)")
    # A short path: the server's unix socket path must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="pa-"))
    server = PulseServer(root)
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    server.start()
    # PortAudio lists devices once; an earlier test may have listed them with no server up.
    refresh_devices()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
