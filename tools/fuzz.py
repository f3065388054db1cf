"""Long fuzz profile: every fuzzed surface, with counts of inputs tried and failures.

Uses the strategies and contracts of tests/edge_monitor/fuzz_support.py and fuzz_files.py
(the same ones the bounded CI suites test_fuzz.py and test_fuzz_files.py run) but does not
stop at the first failure: every input is checked, a SIGALRM guard counts hangs, and at the
end it prints per surface the inputs tried, how many passed, were refused or put into
`fault`, and the failures by kind (tracebacks, hangs, wrong exit codes, dead threads,
changed states, unclear errors), with the first few failing inputs of each kind. Exit 1
when any failure was seen. The `-near` surfaces start from valid input (the example
config, well-formed commands) so the checks past the first are reached; the bundle
surfaces start from a real bundle, the audio surfaces from real files soundfile writes
(`audio-daemon` back-tests each with a real daemon: exit 2 and the machine in `fault`);
`control` sends requests to a real running control server.

    .venv/bin/python tools/fuzz.py                  # the default counts below
    .venv/bin/python tools/fuzz.py --examples config=2000 bundle-files=500
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "edge_monitor")]
os.environ.setdefault("HYPOTHESIS_PROFILE", "long")

import fuzz_files  # noqa: E402
import fuzz_support  # noqa: E402  (after the path and the profile are set)
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

HANG_S = 30  # one input taking this long is counted as a hang
SHOWN_PER_KIND = 3
DEFAULT_EXAMPLES = {"config": 5000, "config-near": 5000, "commands": 5000, "commands-near": 5000,
                    "bundle-manifest": 2000, "bundle-files": 3000, "audio-files": 5000,
                    "audio-daemon": 400, "control": 5000}
FAILURE_KINDS = ("tracebacks", "hangs", "wrong exit codes", "dead threads", "changed states",
                 "unclear errors")


class Hang(BaseException):
    """Raised by the alarm when one input runs past HANG_S (not an Exception, so that no
    contract's `except Exception` takes it for a traceback)."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang


def _kind(message: str) -> str:
    prefixes = {"traceback": "tracebacks", "exit code": "wrong exit codes",
                "wrong exit codes": "wrong exit codes", "hang": "hangs",
                "dead thread": "dead threads", "changed state": "changed states"}
    for prefix, kind in prefixes.items():
        if message.startswith(prefix):
            return kind
    return "unclear errors"


def run_surface(
    examples: int, strategies: tuple[st.SearchStrategy[Any], ...],
    check: Callable[..., str],
) -> tuple[Counter[str], dict[str, list[str]]]:
    counts: Counter[str] = Counter()
    failures: dict[str, list[str]] = {}

    @settings(max_examples=examples)
    @given(st.tuples(*strategies))
    def one(args: tuple[Any, ...]) -> None:
        counts["tried"] += 1
        signal.alarm(HANG_S)
        try:
            counts[check(*args)] += 1
        except fuzz_support.ContractBroken as exc:
            kind = _kind(str(exc))
            counts[kind] += 1
            failures.setdefault(kind, []).append(f"{exc} <- {repr(args)[:300]}")
        except Exception as exc:  # outside every contract: the harness's or the code's bug
            counts["tracebacks"] += 1
            failures.setdefault("tracebacks", []).append(
                f"uncaught {type(exc).__name__}: {str(exc)[:200]} <- {repr(args)[:300]}")
        except Hang:
            counts["hangs"] += 1
            failures.setdefault("hangs", []).append(f"hang over {HANG_S} s <- {repr(args)[:300]}")
        finally:
            signal.alarm(0)

    one()
    return counts, failures


def _config_check(directory: Path) -> Callable[[str], str]:
    return lambda text: fuzz_support.check_config_text(text, directory)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="*", default=[], metavar="SURFACE=N",
                        help="inputs per surface (" + ", ".join(
                            f"{k} {v}" for k, v in DEFAULT_EXAMPLES.items()) + " by default)")
    args = parser.parse_args()
    wanted = dict(DEFAULT_EXAMPLES)
    for item in args.examples:
        surface, _, count = item.partition("=")
        if surface not in wanted or not count.isdigit():
            parser.error(f"--examples {item!r}: give SURFACE=N with SURFACE one of "
                         f"{', '.join(wanted)}")
        wanted[surface] = int(count)
    faulthandler.enable()  # a crash in a native library prints where it happened
    signal.signal(signal.SIGALRM, _alarm)
    logging.disable(logging.ERROR)  # refusals are logged by design; the counts say it all
    warnings.filterwarnings("ignore", message="Generating overly large repr")
    total_failures = total_tried = 0
    with tempfile.TemporaryDirectory() as directory:
        control = fuzz_support.ControlTarget(Path(directory) / "control")
        surfaces = {
            "config": ((fuzz_support.config_texts(),), _config_check(Path(directory))),
            "config-near": ((fuzz_support.near_config_texts(),),
                            _config_check(Path(directory))),
            "commands": ((fuzz_support.command_names, fuzz_support.command_payloads),
                         fuzz_support.check_command_payload),
            "commands-near": ((fuzz_support.nearly_right_commands,),
                                      lambda pair: fuzz_support.check_command_payload(*pair)),
            "bundle-manifest": ((fuzz_files.manifest_texts(),), fuzz_files.check_manifest_text),
            "bundle-files": ((fuzz_files.damaged_bundles,), fuzz_files.check_damaged_bundle),
            "audio-files": ((fuzz_files.audio_specs,), fuzz_files.check_audio_spec),
            "audio-daemon": ((fuzz_files.audio_specs,), fuzz_files.check_audio_daemon),
            "control": ((fuzz_support.control_payloads(control.paths()),),
                        lambda payload: fuzz_support.check_control_request(control, payload)),
        }
        for name, (strategies, check) in surfaces.items():
            if wanted[name] == 0:
                continue
            started = time.monotonic()
            print(f"{name}: running {wanted[name]} inputs", file=sys.stderr, flush=True)
            counts, failures = run_surface(wanted[name], strategies, check)
            failed = sum(counts[k] for k in FAILURE_KINDS)
            total_failures += failed
            total_tried += counts["tried"]
            print(f"{name}: {counts['tried']} inputs tried in {time.monotonic() - started:.0f} s"
                  f" ({counts['ok']} accepted, {counts['refused']} refused, {counts['fault']} "
                  "fault); " + ", ".join(f"{k} {counts[k]}" for k in FAILURE_KINDS), flush=True)
            for kind, examples_of_kind in failures.items():
                for failure in examples_of_kind[:SHOWN_PER_KIND]:
                    print(f"  {kind}: {failure}")
        control.close()
    print(f"all surfaces: {total_tried} inputs tried, {total_failures} failures")
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
