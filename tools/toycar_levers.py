"""Score models x scoring variants x k on a DCASE tree, with 90% bootstrap intervals.

    .venv/bin/python tools/toycar_levers.py --data ../shared/data/toycar \
        --model frozen=../shared/weights/efficientat/mn04_as_mAP_432.pt --model ft=runs/r1 \
        [--k 1,3] [--variants knn,dads,...] [--window-s 4 --hop-s 2] [--out runs/levers.json]

A model is any spec `trainer.model_spec` reads (builtin, run directory, release file, student,
export.json:NAME). Embeddings go through the product's path (read_audio, preprocess, embedder)
and its cache; with --window-s the bank holds one entry per window of each training clip
instead of one per clip, and a test clip scores the max / mean of its windows
(trainer.window_bank). The table has one row per model, variant and k; the last lines say
what picking the best row on half the test clips is worth on the other half (split-half
validation), which is the honest figure for a choice made on these clips.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.scoring_config import VARIANTS, ScoringConfig
from trainer.bootstrap import bootstrap_figures, validated_choice
from trainer.cli_commands.eval import default_cache_dir
from trainer.dcase_data import Clip, read_dataset
from trainer.embed_cache import EmbeddingCache, EmbedOptions
from trainer.evaluate import evaluate_embeddings
from trainer.model_spec import load_embedder
from trainer.window_bank import evaluate_window_level


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]SPEC")
    parser.add_argument("--k", default="1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trim-db", type=float, default=EmbedOptions().trim_quiet_db,
                        help="trim quiet ends this far under the median level (0 = off)")
    parser.add_argument("--cache", type=Path, default=default_cache_dir())
    parser.add_argument("--window-s", type=float, default=0.0,
                        help="window-level bank: window length in seconds (0 = one entry a clip)")
    parser.add_argument("--hop-s", type=float, default=None, help="window hop (default half)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    clips = read_dataset(args.data)
    train = [c for c in clips if c.split == "train"]
    test = [c for c in clips if c.split == "test" and c.label is not None]
    is_anomaly = np.array([c.is_anomaly for c in test])
    domains = np.array([c.domain for c in test])
    ks = [int(k) for k in args.k.split(",")]
    variants = {v: VARIANTS[v] for v in args.variants.split(",")}
    rows, candidates = [], {}
    for spec in args.model:
        embedder = load_embedder(spec)
        options = EmbedOptions(trim_quiet_db=args.trim_db)
        for label, scores in clip_scores(embedder, train, test, variants, ks, options, args):
            figures = bootstrap_figures(scores, is_anomaly, domains)
            candidates[f"{embedder.name} {label}"] = scores
            rows.append({"model": embedder.name, "variant": label,
                         **{n: [i.value, i.low, i.high] for n, i in figures.items()}})
            print(f"| {embedder.name} | {label} | {figures['auc_source'].value:.1f} "
                  f"| {figures['auc_target'].value:.1f} | {figures['pauc'].value:.1f} "
                  f"| {figures['hmean']} |", flush=True)
    validated, picks = validated_choice(candidates, is_anomaly, domains)
    best_in_sample = max(rows, key=lambda r: r["hmean"][0])
    print(f"best in-sample: {best_in_sample['model']} {best_in_sample['variant']} "
          f"{best_in_sample['hmean'][0]:.1f}; picked on one half, scored on the other: "
          f"{validated:.1f} (picks: {', '.join(f'{n} x{c}' for n, c in picks.items() if c)})")
    if args.out is not None:
        args.out.write_text(json.dumps({"rows": rows, "split_half_validated": validated,
                                        "picks": picks}, indent=2) + "\n")
    return 0


def clip_scores(
    embedder: Embedder, train: list[Clip], test: list[Clip],
    variants: dict[str, ScoringConfig], ks: list[int], options: EmbedOptions,
    args: argparse.Namespace,
) -> list[tuple[str, np.ndarray]]:
    """(label, test clip scores) for every variant and k, clip- or window-level bank."""
    out = []
    for k in ks:
        chosen = {f"{name}/k{k}": config.replace(k=k) for name, config in variants.items()}
        if args.window_s > 0:
            hop = args.hop_s or args.window_s / 2
            scores = evaluate_window_level(embedder, train, test, chosen, args.window_s, hop,
                                           options)
            out += [(f"{label} w{args.window_s:g}s", s) for label, s in scores.items()]
            continue
        cache = EmbeddingCache(args.cache, embedder, options)
        train_emb = cache.embed_paths([c.path for c in train], progress=False)
        test_emb = cache.embed_paths([c.path for c in test], progress=False)
        result = evaluate_embeddings(train, train_emb, test, test_emb, chosen)
        out += [(section.variant, section.scores) for section in result.sections]
    return out


if __name__ == "__main__":
    sys.exit(main())
