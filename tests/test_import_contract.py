"""The layout's contract, enforced: which package may import which.

- `trainer` imports only `edge_monitor.core` (and the package root, for `__version__`), so
  what is evaluated on the workstation is exactly what runs on the edge;
- `edge_monitor` never imports `trainer` or torch;
- `edge_monitor.core` imports nothing else of edge_monitor; `edge_monitor.config` nothing
  of the runtime; nothing outside the demo harness (and its own subcommand) imports
  `edge_monitor.demo`;
- `edge-monitor run` loads neither the demo nor torch, checked in a fresh interpreter.

Imports are read from the source with ast, those inside functions included, so a lazy
import cannot slip past.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import statement in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: use absolute imports")
            for alias in node.names:
                # `from edge_monitor import demo` imports the module edge_monitor.demo.
                yield node.lineno, f"{node.module}.{alias.name}"


def files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(paths: list[Path], allowed) -> list[str]:
    return [f"{path.relative_to(REPO)}:{line}: imports {module}"
            for path in paths for line, module in imported_modules(path) if not allowed(module)]


def test_trainer_imports_only_the_core() -> None:
    def allowed(module: str) -> bool:
        if not within(module, "edge_monitor"):
            return True
        return module == "edge_monitor.__version__" or within(module, "edge_monitor.core")

    assert violations(files("trainer"), allowed) == []


def test_edge_monitor_never_imports_trainer_or_torch() -> None:
    def allowed(module: str) -> bool:
        return not (within(module, "trainer") or within(module, "torch"))

    assert violations(files("edge_monitor"), allowed) == []


def test_the_core_imports_nothing_else_of_edge_monitor() -> None:
    def allowed(module: str) -> bool:
        return (not within(module, "edge_monitor") or module == "edge_monitor.__version__"
                or within(module, "edge_monitor.core"))

    assert violations(files("edge_monitor/core"), allowed) == []


def test_config_imports_nothing_of_the_runtime() -> None:
    # Runtime classes take the section models; the models need only the core and the topic
    # tree's names (prefix rules, command names), never a runtime class.
    def allowed(module: str) -> bool:
        return (not within(module, "edge_monitor") or within(module, "edge_monitor.core")
                or within(module, "edge_monitor.config")
                or within(module, "edge_monitor.mqtt.topics"))

    assert violations(files("edge_monitor/config"), allowed) == []


def test_only_the_demo_harness_imports_the_demo() -> None:
    outside = [p for p in files("edge_monitor")
               if "demo" not in p.relative_to(REPO / "edge_monitor").parts
               and p != REPO / "edge_monitor" / "cli" / "demo.py"]

    assert violations(outside, lambda m: not within(m, "edge_monitor.demo")) == []


def test_one_resampler_for_every_path() -> None:
    # Live audio, replayed files, enrolment, trainer banks and evaluation all convert rates
    # through edge_monitor.core.audio_io, so no second resampler can creep in.
    resamplers = ("soxr", "scipy.signal.resample_poly", "scipy.signal.resample",
                  "librosa", "torchaudio.functional.resample", "torchaudio.transforms.Resample")
    owner = REPO / "edge_monitor" / "core" / "audio_io.py"
    paths = [p for p in files("edge_monitor") + files("trainer") + files("tools") if p != owner]

    assert violations(paths, lambda m: not any(within(m, r) for r in resamplers)) == []


# What `edge-monitor run -c CONF` has imported by the time the daemon would start.
RUN_IMPORTS = """
import json, sys
from edge_monitor.cli import COMMANDS
from edge_monitor.core.subcommands import build_parser
build_parser("edge-monitor", "", "0", COMMANDS, ["run", "-c", "conf.yaml"])
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("command", ["run", "check", "enroll", "score"])
def test_a_runtime_subcommand_loads_neither_the_demo_nor_torch(command: str) -> None:
    code = RUN_IMPORTS.replace('["run",', f'["{command}",')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=REPO).stdout
    loaded = json.loads(out)

    assert f"edge_monitor.cli.{command}" in loaded  # the subcommand itself was imported
    assert [m for m in loaded if within(m, "edge_monitor.demo") or within(m, "torch")
            or within(m, "trainer") or within(m, "edge_monitor.cli.demo")] == []
