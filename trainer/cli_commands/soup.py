"""`edge-trainer soup`: average the weights of runs fine-tuned from one start into one run.

    edge-trainer soup --run RUN_A --run RUN_B [--run ...] --out RUN

The members are `finetune` run directories of one recipe that share `optim.init_seed` and differ
in `optim.seed`; RUN is an ordinary run directory (model.pt, embedder.json, classes.json, and
soup.json naming the members) that eval, export and bundle read like any other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.soup import make_soup

NAME = "soup"
HELP = "Average the weights of runs fine-tuned from the same start (a uniform model soup)."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, action="append", required=True, metavar="RUN",
                        help="a member run directory (give two or more)")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN",
                        help="the soup's run directory (new)")


def run(args: argparse.Namespace) -> int:
    out = make_soup(args.run, args.out)
    print(f"{out}: soup of {len(args.run)} runs. Evaluate with: edge-trainer eval "
          f"--checkpoint {out} --data ROOT --out DIR")
    return 0
