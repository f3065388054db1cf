"""Write a synthetic machine clip with scheduled faults, and the schedule as CSV.

    .venv/bin/python tools/make_demo_audio.py --out runs/demo.flac --seconds 300
    .venv/bin/python tools/make_demo_audio.py --out runs/bearing.wav --seconds 30 \
        --fault bearing:10:25:0.5

Without --fault the demo schedule is used (normal first, then each fault in turn).
The CSV (beside the audio unless --schedule is given) covers the whole clip, normal
stretches included, so a replay of the clip can be checked against it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge_monitor.core.errors import BadInputError
from edge_monitor.demo.synth import (
    FaultSegment,
    MachineSpec,
    demo_timeline,
    schedule_rows,
    synthesize,
    write_audio,
    write_schedule_csv,
)


def _parse_fault(text: str) -> FaultSegment:
    """Parse KIND:START_S:END_S[:SEVERITY] into a FaultSegment."""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise BadInputError(
            f"--fault {text!r} is not KIND:START_S:END_S[:SEVERITY], e.g. bearing:10:25:0.5"
        )
    try:
        numbers = [float(p) for p in parts[1:]]
    except ValueError:
        raise BadInputError(
            f"--fault {text!r} has a time or severity that is not a number"
        ) from None
    return FaultSegment(parts[0], *numbers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="audio file, .flac or .wav")
    parser.add_argument("--schedule", type=Path, help="CSV path (default: OUT with .csv)")
    parser.add_argument("--seconds", type=float, default=300.0, help="clip length")
    parser.add_argument("--sample-rate-hz", type=int, default=16000)
    parser.add_argument("--shaft-hz", type=float, default=MachineSpec.shaft_hz)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--severity", type=float, default=1.0, help="of the demo faults")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND:START_S:END_S[:SEVERITY]",
        help="inject this fault instead of the demo schedule (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = MachineSpec(shaft_hz=args.shaft_hz, seed=args.seed)
        if args.fault:
            faults = [_parse_fault(text) for text in args.fault]
        else:
            faults = demo_timeline(args.seconds, severity=args.severity)
        audio = synthesize(spec, args.seconds, args.sample_rate_hz, faults)
        write_audio(args.out, audio, args.sample_rate_hz)
        schedule = args.schedule or args.out.with_suffix(".csv")
        write_schedule_csv(schedule, faults, args.seconds)
    except BadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {args.out} ({args.seconds:g} s at {args.sample_rate_hz} Hz) and {schedule}")
    for lo, hi, label, severity in schedule_rows(faults, args.seconds):
        print(f"  {lo:8.1f} - {hi:8.1f} s  {label:<18} severity {severity:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
