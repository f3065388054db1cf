"""Per-window inference time of exported models on this CPU, with 1 and 2 threads.

    .venv/bin/python tools/bench_inference.py exports/student/export.json exports/x/export.json \
        [--builtin logmel-stats] [--windows 20] [--threads 1,2]

Each model is run through the runtime embedder the daemon uses (onnxruntime, ai-edge-litert,
or the builtin numpy embedder) on 10 s windows of preprocessed noise; the preprocessing
(loudness normalisation) cost is printed on its own line. Figures are medians in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edge_monitor.core.bundle import BUILTIN_EMBEDDERS
from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.preprocess import preprocess
from trainer.bundle_builder import ModelEntry


def _time_ms(function, windows: list[np.ndarray], warmup: int = 2) -> float:
    for window in windows[:warmup]:
        function(window)
    times = []
    for window in windows:
        start = time.perf_counter()
        function(window)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _entries(exports: list[Path], builtins: list[str]) -> list[ModelEntry]:
    entries = []
    for name in builtins:
        embedder = BUILTIN_EMBEDDERS[name]()
        entries.append(ModelEntry(name, "builtin", embedder.sample_rate_hz, embedder.window_s,
                                  embedder.dim, builtin=name))
    for path in exports:
        for m in json.loads(path.read_text())["models"]:
            entries.append(ModelEntry(m["name"], m["runtime"], int(m["sample_rate_hz"]),
                                      float(m["window_s"]), int(m["dim"]),
                                      file=path.parent / m["file"], precision=m["precision"]))
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="*", type=Path, help="export.json files")
    parser.add_argument("--builtin", action="append", default=[], help="builtin embedder")
    parser.add_argument("--windows", type=int, default=20, help="timed windows per model")
    parser.add_argument("--threads", default="1,2", help="thread counts to measure")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rng = np.random.default_rng(0)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} "
          "(other work on the machine inflates the figures)")
    windows_raw = [0.1 * rng.standard_normal(160000).astype(np.float32)
                   for _ in range(args.windows)]
    prep = _time_ms(lambda w: preprocess(w, 16000), windows_raw)
    print(f"preprocess (DC, BS.1770 loudness) per 10 s window: {prep:.1f} ms")
    windows = [preprocess(w, 16000).audio for w in windows_raw]
    header = "".join(f"  {t} thread(s) ms" for t in threads)
    print("(builtin embedders run numpy, whose BLAS thread count is not set here)")
    print(f"{'model':<28}{'runtime':<9}{'precision':<14}{'size MB':>8}{header}")
    for entry in _entries(args.exports, args.builtin):
        cells = []
        for count in threads:
            embedder: Embedder = entry.embedder(threads=count)
            cells.append(_time_ms(embedder.embed, windows))
        size = entry.file.stat().st_size / 1e6 if entry.file else 0.0
        timing = "".join(f"{c:>18.1f}" for c in cells)
        print(f"{entry.name:<28}{entry.runtime:<9}{entry.precision:<14}{size:>8.2f}{timing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
