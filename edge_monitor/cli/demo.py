"""`edge-monitor demo`: the real pipeline end to end on a synthetic machine with faults.

    edge-monitor demo                      # 300 s of audio, as fast as the box can
    edge-monitor demo --realtime --seconds 600 --keep /tmp/demo
    edge-monitor demo --web                # and browse http://127.0.0.1:8080/ (Ctrl-C ends)

Needs no microphone, broker or model; see `edge_monitor.demo.scenario` for what runs.
Exit 0 when the demo ran (whatever it detected), 1 when the daemon failed, 2 on bad options.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_monitor.demo.scenario import BROKERS, DemoSettings, run_demo

_DEFAULTS = DemoSettings()
WEB_PORT = 8080


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=_DEFAULTS.seconds,
                        help=f"length of the synthetic audio (default {_DEFAULTS.seconds:g})")
    parser.add_argument("--realtime", action="store_true",
                        help="replay at the audio's own pace (default: as fast as possible)")
    parser.add_argument("--speed", type=float, default=0.0, metavar="X",
                        help="print at X times real time (the pipeline runs ahead); "
                             "0 = no pacing (default)")
    parser.add_argument("--broker", choices=BROKERS, default="auto",
                        help="auto: a private mosquitto when installed, else none; "
                             "none: print what the daemon hands its MQTT client")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="work in DIR and keep the clip, config, learned bank and alarm "
                             "clips (default: a temporary directory, removed at the end)")
    parser.add_argument("--learning-seconds", type=float, default=_DEFAULTS.learning_s,
                        help=f"audio learned as normal first (default {_DEFAULTS.learning_s:g})")
    parser.add_argument("--severity", type=float, default=_DEFAULTS.severity,
                        help=f"fault severity in (0, 1] (default {_DEFAULTS.severity:g})")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed,
                        help="seed of the synthetic machine")
    parser.add_argument("--web", action="store_true",
                        help="serve the daemon's web view on 127.0.0.1 and keep it up after "
                             "the replay until Ctrl-C")
    parser.add_argument("--web-port", type=int, default=WEB_PORT, metavar="PORT",
                        help=f"port of the web view (default {WEB_PORT})")
    parser.add_argument("--web-hold", type=float, default=None, metavar="S",
                        help="with --web: stop S seconds after the replay (default: Ctrl-C)")


def run(args: argparse.Namespace) -> int:
    settings = DemoSettings(
        seconds=args.seconds, learning_s=args.learning_seconds, severity=args.severity,
        seed=args.seed, realtime=args.realtime, speed=args.speed, broker=args.broker,
        keep=args.keep, web_port=args.web_port if args.web else None,
        web_hold_s=args.web_hold,
    )
    result = run_demo(settings)
    return 0 if result.daemon_exit == 0 else 1
