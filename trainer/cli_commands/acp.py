"""`edge-trainer acp`: fuse several models' scores with ACP weights, validated honestly.

    edge-trainer acp --data ROOT --model logmel-stats --model resnet=runs/resnet \
        --out DIR [--variant knn] [--folds 5]

Each model's test scores come from one bank per machine section (as `edge-trainer eval`), are
standardised with that bank's leave-one-out statistics, and fused. Prints single models, the
uniform ensemble and the ACP ensemble (k-fold validated and in-sample) and writes
DIR/acp.json, whose `weights` `edge-trainer bundle --weights` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.detector import ScoreNorm
from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.errors import ConfigError
from edge_monitor.core.scoring_config import VARIANTS, ScoringConfig, variant
from trainer.acp import AcpSettings, Labelled, run_acp
from trainer.dcase_data import Clip, read_dataset
from trainer.embed_cache import EmbeddingCache, EmbedOptions
from trainer.evaluate import SectionScores, evaluate_embeddings
from trainer.model_spec import load_embedder

NAME = "acp"
HELP = "Fuse models' scores with Adaptive Combination Perturbation weights (k-fold validated)."
log = logging.getLogger(__name__)
ACP_JSON = "acp.json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, metavar="ROOT")
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]SPEC",
                        help="builtin, run dir, student .pt or export.json[:MODEL]; repeat")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--variant", default="knn", help=f"scoring variant {sorted(VARIANTS)}")
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--folds", type=int, default=5, help="k of the k-fold validation")
    parser.add_argument("--restarts", type=int, default=AcpSettings.restarts)
    parser.add_argument("--iterations", type=int, default=AcpSettings.iterations)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache directory")


def model_sections(
    embedder: Embedder, clips: list[Clip], scoring: ScoringConfig, cache: Path | None
) -> list[SectionScores]:
    """One model's labelled test sections, with the banks' LOO scores, as eval computes them."""
    paths = [c.path for c in clips]
    options = EmbedOptions()
    if cache is not None:
        embeddings = EmbeddingCache(cache, embedder, options).embed_paths(paths, progress=False)
    else:
        from trainer.export import embed_clips

        embeddings = embed_clips(embedder, clips, options)
    train = [i for i, c in enumerate(clips) if c.split == "train"]
    test = [i for i, c in enumerate(clips) if c.split == "test" and c.label is not None]
    result = evaluate_embeddings(
        [clips[i] for i in train], embeddings[train], [clips[i] for i in test], embeddings[test],
        {"model": scoring},
    )
    return result.sections


def standardised_scores(per_model: dict[str, list[SectionScores]]) -> tuple[np.ndarray, Labelled]:
    """(M, N) scores, each standardised per section by its bank's LOO statistics."""
    names = list(per_model)
    first = per_model[names[0]]
    ids = [c.clip_id for s in first for c in s.clips]
    rows = []
    for name in names:
        sections = per_model[name]
        if [c.clip_id for s in sections for c in s.clips] != ids:
            raise ConfigError(f"model {name!r} scored other clips than {names[0]!r}")
        rows.append(np.concatenate(
            [ScoreNorm.from_loo(s.loo_scores).apply(s.scores) for s in sections]
        ))
    clips = [c for s in first for c in s.clips]
    labelled = Labelled(
        is_anomaly=np.array([c.is_anomaly for c in clips], bool),
        domains=np.array([c.domain for c in clips], str),
        sections=np.array([f"{c.machine}/{c.section}" for c in clips], str),
    )
    return np.vstack(rows), labelled


def run(args: argparse.Namespace) -> int:
    scoring = variant(args.variant)
    if args.k is not None:
        scoring = scoring.replace(k=args.k)
    clips = read_dataset(args.data)
    per_model: dict[str, list[SectionScores]] = {}
    for spec in args.model:
        embedder = load_embedder(spec)
        if embedder.name in per_model:
            raise ConfigError(f"model name {embedder.name!r} repeats; rename one as NAME=SPEC")
        per_model[embedder.name] = model_sections(embedder, clips, scoring, args.cache)
    scores, labelled = standardised_scores(per_model)
    settings = AcpSettings(restarts=args.restarts, iterations=args.iterations, seed=args.seed)
    report = run_acp(list(per_model), scores, labelled, args.folds, settings)
    print(report.table())
    blob = {
        "weights": dict(zip(report.names, map(float, report.weights), strict=True)),
        "variant": args.variant,
        "scoring": scoring.to_dict(),
        "folds": args.folds,
        "hmean": {
            "acp_validated": report.acp_hmean_validated,
            "acp_in_sample": report.acp_hmean_in_sample,
            "uniform": report.uniform_hmean,
            **{f"single:{k}": v for k, v in report.single_hmean.items()},
        },
        "fold_weights": [list(map(float, w)) for w in report.fold_weights],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / ACP_JSON, json.dumps(blob, indent=2) + "\n")
    return 0
