"""`edge-trainer eval`: DCASE evaluation of every scoring variant on a data set tree.

    edge-trainer eval --data ROOT --out DIR

embeds every clip under ROOT (cached), builds one bank per machine section from its training
clips, scores the test clips with each variant, writes the DCASE CSVs and `results.csv` into
DIR and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.errors import ConfigError
from edge_monitor.core.preprocess import PreprocessConfig
from edge_monitor.core.scoring_config import VARIANTS, ScoringConfig, variant
from trainer.dcase_data import read_dataset
from trainer.embed_cache import CROP_FULL, CROP_POLICIES, EmbeddingCache, EmbedOptions, cache_key
from trainer.embedder_factory import BUILTIN, DEFAULT_EMBEDDER, make_embedder
from trainer.evaluate import (
    DEFAULT_FALSE_ALARM_RATE,
    evaluate_embeddings,
    format_table,
    write_results,
)

NAME = "eval"
HELP = "Evaluate scoring variants on a DCASE data set tree (AUC, pAUC, DCASE CSVs)."
log = logging.getLogger(__name__)
# Overrides that only make sense for density-aware variants (they would turn KNN into DADS).
DADS_OPTIONS = {"alpha": "--alpha", "n_syn": "--n-syn", "lambda_max": "--lambda-max"}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-monitor" / "embeddings"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, metavar="ROOT",
                        help="DCASE tree: ROOT/<machine>/train|test/section_..., or one machine")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="where results.csv, the DCASE CSVs and plots go")
    parser.add_argument("--embedder", default=None,
                        help=f"built-in embedder {sorted(BUILTIN)} (default {DEFAULT_EMBEDDER})")
    parser.add_argument("--checkpoint", type=Path, default=None, metavar="RUN",
                        help="a fine-tuned run directory, or a pretrained release file "
                        "(EfficientAT mn<XX>_as*.pt) used frozen")
    parser.add_argument("--pooling", default=None, metavar="LAYER:STAT,...",
                        help="layers and statistics of a frozen release file's embedding "
                        "(default 16:mean+max,12:mean)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated scoring variants (default: all of {list(VARIANTS)})")
    parser.add_argument("--k", type=int, default=None, help="neighbours per score (all variants)")
    parser.add_argument("--alpha", type=float, default=None, help="DADS density exponent")
    parser.add_argument("--n-syn", type=int, default=None, help="DADS synthetic entries per target")
    parser.add_argument("--lambda-max", type=float, default=None,
                        help="DADS interpolation factor upper bound")
    parser.add_argument("--false-alarm-rate", type=float, default=DEFAULT_FALSE_ALARM_RATE,
                        help="threshold for decision_result files, from bank leave-one-out scores")
    parser.add_argument("--crop", choices=CROP_POLICIES, default=CROP_FULL,
                        help="embed the whole clip or its centred 10 s (one daemon window)")
    parser.add_argument("--no-loudness-norm", action="store_true",
                        help="skip BS.1770 loudness normalisation before embedding")
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR",
                        help=f"embedding cache (default {default_cache_dir()})")
    parser.add_argument("--plots", action="store_true",
                        help="write ROC curves and per-domain score histograms as PNG")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def selected_variants(args: argparse.Namespace) -> dict[str, ScoringConfig]:
    """The named variants with the command line's parameter overrides applied."""
    names = [n.strip() for n in str(args.variants).split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--variants is empty; choose from {sorted(VARIANTS)}")
    chosen = {name: variant(name) for name in names}
    dads_overrides = {
        key: getattr(args, key) for key in DADS_OPTIONS if getattr(args, key) is not None
    }
    dads_names = [n for n, c in chosen.items() if c.alpha > 0 or c.n_syn > 0]
    if dads_overrides and not dads_names:
        flags = ", ".join(DADS_OPTIONS[k] for k in dads_overrides)
        raise ConfigError(f"{flags} only apply to DADS variants; add dads or dads-dwmin to "
                          "--variants")
    out = {}
    for name, config in chosen.items():
        changes = {} if args.k is None else {"k": args.k}
        if name in dads_names:
            changes.update(dads_overrides)
        out[name] = config.replace(**changes) if changes else config
    return out


def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.false_alarm_rate < 1.0:
        raise ConfigError(f"--false-alarm-rate {args.false_alarm_rate}: must lie in (0, 1)")
    variants = selected_variants(args)
    clips = read_dataset(args.data)
    embedder = make_embedder(args.embedder, args.checkpoint, args.pooling)
    options = EmbedOptions(
        crop=args.crop, preprocess=PreprocessConfig(normalise_loudness=not args.no_loudness_norm)
    )
    cache = EmbeddingCache(args.cache or default_cache_dir(), embedder, options)
    embeddings = cache.embed_paths([c.path for c in clips], progress=not args.no_progress)
    train = [i for i, c in enumerate(clips) if c.split == "train"]
    test = [i for i, c in enumerate(clips) if c.split == "test"]
    result = evaluate_embeddings(
        [clips[i] for i in train], embeddings[train],
        [clips[i] for i in test], embeddings[test],
        variants, args.false_alarm_rate,
        bank_info={"embedder": embedder.name},
    )
    written = write_results(result, args.out)
    settings = {
        "data": str(args.data.resolve()),
        "embedder": embedder.name,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "embedding_cache_key": cache_key(embedder, options),
        "crop": options.crop,
        "preprocess": dataclasses.asdict(options.preprocess),
        "false_alarm_rate": args.false_alarm_rate,
        "variants": {name: config.to_dict() for name, config in variants.items()},
    }
    atomic_write_text(args.out / "settings.json", json.dumps(settings, indent=2) + "\n")
    if args.plots:
        from trainer.plots import write_plots

        written += write_plots(result, args.out)
    log.info("wrote %d files under %s", len(written) + 1, args.out)
    print(format_table(result))
    return 0
