"""Benchmark k-NN search backends on real embeddings: matmul, usearch exact, usearch HNSW.

Real embeddings are logmel-stats vectors of ToyCar windows (1 s crops at random offsets);
banks larger than the number of real windows are filled with real vectors plus small
Gaussian jitter (re-normalised), which keeps their local geometry realistic.

    .venv/bin/python tools/bench_bank_search.py --data ../shared/data/toycar \
        --sizes 500,5000,20000,100000,1000000
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.embedders.base import l2_normalise
from edge_monitor.core.embedders.logmel_stats import LogMelStatsEmbedder
from edge_monitor.core.neighbours import NeighbourIndex

CROP_S = 1.0


def real_embeddings(data: Path, crops_per_clip: int, seed: int) -> np.ndarray:
    """Embed random 1 s crops of every clip under `data`."""
    rng = np.random.default_rng(seed)
    embedder = LogMelStatsEmbedder()
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".wav", ".flac"))
    crop = int(CROP_S * embedder.sample_rate_hz)
    vectors = []
    for path in tqdm(files, desc="embedding crops", unit="clip"):
        audio = read_audio(path, embedder.sample_rate_hz)
        for start in rng.integers(0, len(audio) - crop, size=crops_per_clip):
            vectors.append(embedder.embed(audio[start : start + crop]))
    return np.asarray(vectors, dtype=np.float32)


def bank_of_size(real: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.choice(len(real), size=size, replace=size > len(real))
    jitter = rng.normal(scale=0.01, size=(size, real.shape[1])).astype(np.float32)
    bank = real[rows] + (jitter if size > len(real) else 0)
    return l2_normalise(bank)


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/toycar"))
    parser.add_argument("--sizes", default="500,5000,20000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--crops-per-clip", type=int, default=12)
    parser.add_argument("--max-matmul", type=int, default=200_000, help="skip matmul above")
    parser.add_argument(
        "--blas-threads", type=int, default=1, help="BLAS threads (the daemon uses 1)"
    )
    parser.add_argument("--backends", default="matmul,exact,hnsw")
    args = parser.parse_args()
    threadpool_limits(limits=args.blas_threads)

    rng = np.random.default_rng(0)
    real = real_embeddings(args.data, args.crops_per_clip, seed=1)
    queries = bank_of_size(real, args.queries, rng)
    print(f"real windows: {len(real)}, dim {real.shape[1]}, queries {len(queries)}, k {args.k}")
    header = (
        f"{'entries':>9} {'backend':>7} {'build_s':>8} {'batch_ms/q':>11} "
        f"{'single_ms':>10} {'recall@k':>9} {'peak_rss_MB':>12}"
    )
    print(header)
    for size in (int(s) for s in args.sizes.split(",")):
        bank = bank_of_size(real, size, rng)
        exact_rows = None
        for backend in args.backends.split(","):
            if backend == "matmul" and size > args.max_matmul:
                continue
            build_s, index = timed(lambda b=backend, x=bank: NeighbourIndex(x, backend=b), 1)
            repeats = 3 if size <= 100_000 else 1
            batch_s, (_, rows) = timed(lambda i=index: i.search(queries, args.k), repeats)
            single_s, _ = timed(lambda i=index: [i.search(q, args.k) for q in queries[:20]], 1)
            if exact_rows is None:
                exact_rows = rows
            pairs = zip(rows, exact_rows, strict=True)
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in pairs])
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"{size:>9} {backend:>7} {build_s:>8.3f} {1e3 * batch_s / len(queries):>11.4f} "
                f"{1e3 * single_s / 20:>10.4f} {recall:>9.3f} {rss_mb:>12.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
