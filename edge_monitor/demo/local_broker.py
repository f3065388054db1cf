"""A mosquitto process of our own on loopback, for the demo and the test suite.

Both need the same thing: a broker on a free port, started and stopped on demand, that
reports clearly when it cannot start. What the broker allows (anonymous, passwords, ACL,
TLS) is the caller's mosquitto.conf.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from edge_monitor.core.errors import EdgeMonitorError

LOOPBACK = "127.0.0.1"
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str | None:
    """The mosquitto executable (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if Path(p).is_file()), None)


class LocalMosquitto:
    """Runs mosquitto with `conf_lines`; `start()` returns once every port accepts."""

    host = LOOPBACK

    def __init__(
        self,
        workdir: Path,
        conf_lines: list[str],
        ports: list[int],
        executable: str | None = None,
        wait_s: float = 10.0,
        verbose: bool = False,
    ) -> None:
        found = executable or find_mosquitto()
        if found is None:
            raise EdgeMonitorError(
                "mosquitto is not installed: `apt-get install mosquitto` (or tools/setup.sh)"
            )
        self.executable = found
        self.ports = list(ports)
        self.wait_s = wait_s
        self.verbose = verbose
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        lines = list(conf_lines)
        if os.geteuid() == 0:
            # As root mosquitto drops to the `mosquitto` user, who cannot read our temp files.
            lines.append("user root")
        self.conf_path.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The first (plain) listener's port."""
        return self.ports[0]

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (benchmarks read its CPU from /proc)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        command = [self.executable, "-c", str(self.conf_path), *(["-v"] if self.verbose else [])]
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EdgeMonitorError(
                    f"mosquitto exited with code {self._proc.returncode}: "
                    f"{self.log_path.read_text(errors='replace').strip()[-400:]}"
                )
            try:
                for port in self.ports:
                    socket.create_connection((self.host, port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise EdgeMonitorError(
            f"mosquitto did not listen on {self.host}:{self.ports} within {self.wait_s:.0f} s; "
            f"see {self.log_path}"
        )

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut would: nothing is saved (the fault soak)."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait(5)
        self._proc = None

    def stop(self) -> None:
        """Stop gracefully (persistence is saved), or kill after 5 s."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None
