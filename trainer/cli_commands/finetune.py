"""`edge-trainer finetune`: train one recipe on a DCASE data tree into a run directory.

    edge-trainer finetune --recipe conf/train/<name>.yaml --data ROOT --out RUN
        [--resume] [--device cpu|cuda] [--max-steps N] [--cache DIR] [--threads N]

RUN receives recipe.yaml, metrics.jsonl and train_state.pt while training, and the embedding
model (model.pt, embedder.json, classes.json) whenever it stops (done or --max-steps); then
`edge-trainer eval --checkpoint RUN` evaluates it. With the recipe's optim.average_decay that
model is the weight average and RUN/raw holds the last step's weights. Under torchrun every
rank runs this command.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import yaml

from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.errors import ConfigError
from trainer.checkpoint_embedder import RECIPE_FILE, save_embedding_model
from trainer.recipe import Recipe, load_recipe, parse_recipe
from trainer.strategies import StrategyContext, build_strategy
from trainer.strategies.base import Strategy
from trainer.train_data import default_cache_dir
from trainer.train_loop import (
    STATE_FILE,
    Distributed,
    Trainer,
    barrier,
    init_distributed,
    resolve_device,
    shutdown_distributed,
)

NAME = "finetune"
HELP = "Fine-tune a backbone with a training recipe (conf/train/*.yaml) on a DCASE data tree."
RAW_DIR = "raw"
"""With optim.average_decay, RUN holds the averaged model and RUN/raw the last step's."""
log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", type=Path, required=True, help="recipe YAML (conf/train/)")
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="ROOT",
        help="DCASE root (or one machine directory) with train/ clips",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="RUN", help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/train_state.pt")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop after N optimizer steps in total (the LR schedule still "
        "spans the recipe's steps; --resume continues later)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="decoded-audio cache (default $EDGE_TRAINER_CACHE or ~/.cache/edge-trainer/waves)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _check_run_dir(run_dir: Path, recipe: Recipe, resume: bool) -> None:
    saved = run_dir / RECIPE_FILE
    if resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {run_dir} holds no {RECIPE_FILE}; start without --resume")
        # Compared as parsed recipes, so a key added since (with its default) is no change.
        saved_values = yaml.safe_load(saved.read_text(encoding="utf-8"))
        if parse_recipe(saved_values, str(saved)).to_dict() != recipe.to_dict():
            raise ConfigError(
                f"--resume: {saved} differs from --recipe; resume with the same recipe or "
                "start a new --out"
            )
        return
    if (run_dir / STATE_FILE).exists() or saved.exists():
        raise ConfigError(
            f"--out {run_dir} already holds a run; pass --resume to continue it or pick a new --out"
        )


def run(args: argparse.Namespace) -> int:
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError(f"--max-steps {args.max_steps}: must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    layout = init_distributed(args.device)
    device = resolve_device(args.device, layout)
    run_dir: Path = args.out
    _check_run_dir(run_dir, recipe, args.resume)
    barrier(layout)  # every rank has checked RUN before rank 0 writes into it
    try:
        return _train(args, recipe, layout, device, run_dir)
    finally:
        shutdown_distributed(layout)


def _save_model(out: Path, recipe: Recipe, strategy: Strategy) -> None:
    """Write the strategy's embedding model as an `eval`/`export` checkpoint into `out`."""
    model = strategy.embedding_model()
    head = recipe.head
    save_embedding_model(
        out,
        f"finetuned:{recipe.name}",
        recipe.backbone.name,
        recipe.backbone.size,
        model.backbone,
        model.heads,
        {
            "attention_dim": head.attention_dim,
            "hidden_dim": head.hidden_dim,
            "embed_dim": head.embed_dim,
        },
        model.classes,
        recipe.data.embed_window_s,
    )


def _train(
    args: argparse.Namespace,
    recipe: Recipe,
    layout: Distributed,
    device: torch.device,
    run_dir: Path,
) -> int:
    torch.manual_seed(recipe.optim.weights_seed)
    roots = [args.data, *(recipe.tats.extra_roots if recipe.tats else [])]
    context = StrategyContext(recipe, roots, args.cache or default_cache_dir())
    strategy = build_strategy(context)
    if layout.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            atomic_write_text(
                run_dir / RECIPE_FILE, yaml.safe_dump(recipe.to_dict(), sort_keys=False)
            )
    trainer = Trainer(strategy, recipe, run_dir, device, layout)
    if args.resume:
        trainer.resume()
    result = trainer.run(args.max_steps, progress=not args.no_progress)
    if not layout.is_main:
        return 0
    # The embedding model is written at every stop, so an early stop can be evaluated too.
    average = trainer.averaged_modules()
    if average is not None:
        # The last step's weights stay beside the average, for a paired comparison.
        _save_model(run_dir / RAW_DIR, recipe, strategy)
        strategy.modules.load_state_dict(average.state_dict(), strict=True)
    _save_model(run_dir, recipe, strategy)
    if not result.finished:
        print(
            f"{run_dir}: stopped at step {result.step} of {recipe.optim.steps} (model of this "
            "step saved); continue with --resume"
        )
        return 0
    print(
        f"{run_dir}: trained {result.step} steps, last loss "
        f"{result.last_metrics.get('loss', 0.0):.4f}."
        f" Evaluate with: edge-trainer eval --checkpoint {run_dir} --data ROOT --out DIR"
    )
    return 0
