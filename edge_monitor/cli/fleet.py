"""`edge-monitor fleet --broker HOST [--json]`: every box and machine the broker knows.

    edge-monitor fleet --broker mqtt.plant.local
    edge-monitor fleet --broker central --tls --username ops --password-env OPS_PW --json

Reads retained topics only (availability, each machine's state, each box's bundle): one
line per machine with the box, online or not, bundle version and signer, last seen, state
and score/threshold ratio. No state of its own: what the broker holds is the fleet.
"""

from __future__ import annotations

import argparse
import json
import os

from edge_monitor.core.errors import BadInputError
from edge_monitor.fleet.view import collect, table
from edge_monitor.mqtt.topics import DEFAULT_PREFIX


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", required=True, metavar="HOST", help="broker host")
    parser.add_argument("--port", type=int, default=None, help="default 1883, 8883 with --tls")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="the boxes' mqtt.prefix")
    parser.add_argument("--username", default=None)
    parser.add_argument("--password-env", default=None, metavar="VAR",
                        help="environment variable holding the password")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca-file", default=None, help="CA bundle for --tls (default: system)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    password = None
    if args.password_env is not None:
        password = os.environ.get(args.password_env)
        if password is None:
            raise BadInputError(f"--password-env {args.password_env}: that variable is not set")
    port = args.port or (8883 if args.tls else 1883)
    boxes = collect(args.broker, port, args.prefix, args.username, password, args.ca_file,
                    args.tls)
    if args.json:
        print(json.dumps({"boxes": [b.to_dict() for b in boxes]}, indent=1))
    elif boxes:
        print(table(boxes))
    else:
        print(f"no boxes under {args.prefix}/ on {args.broker}:{port}")
    return 0
