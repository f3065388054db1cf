"""`edge-trainer keygen --out keys/ops`: an Ed25519 key pair for signing bundles.

Writes keys/ops.key (private, mode 0600: keep it on the workstation) and keys/ops.pub
(public: copy it to each box and list it in `model.trusted_keys`). Existing files are never
overwritten. The key id printed here is the one refusals and the fleet view name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_monitor.core.signing import generate_keypair

NAME = "keygen"
HELP = "Write an Ed25519 key pair (PREFIX.key, PREFIX.pub) for signing bundles."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="PREFIX",
                        help="writes PREFIX.key (mode 0600) and PREFIX.pub")


def run(args: argparse.Namespace) -> int:
    private, public, kid = generate_keypair(args.out)
    print(f"key id {kid}")
    print(f"  private key {private} (mode 0600; keep it on the workstation)")
    print(f"  public key  {public} (list it in model.trusted_keys on each box)")
    return 0
