"""Training-speed benchmark: clips per second of a recipe's optimizer steps, and on a GPU its
utilisation (sampled with nvidia-smi) and peak memory (torch.cuda).

    .venv/bin/python tools/bench_train.py --recipe conf/train/resnet_scratch.yaml \
        --data ../shared/data/toycar [--device cpu|cuda] [--steps 20] [--warmup 3] [--threads 2]

Warm-up steps (cache loading, cuDNN autotuning, first allocations) are run first and not timed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainer.recipe import load_recipe
from trainer.strategies import StrategyContext, build_strategy
from trainer.train_data import default_cache_dir
from trainer.train_loop import Distributed, Trainer, resolve_device

SAMPLE_MS = 100


def start_gpu_sampler() -> subprocess.Popen[str] | None:
    """nvidia-smi printing GPU utilisation (%) every SAMPLE_MS, or None where it is missing."""
    if shutil.which("nvidia-smi") is None:
        return None
    return subprocess.Popen(
        [
            "nvidia-smi",
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
            f"-lms={SAMPLE_MS}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def stop_gpu_sampler(sampler: subprocess.Popen[str] | None) -> list[float]:
    if sampler is None:
        return []
    sampler.terminate()
    out, _ = sampler.communicate(timeout=10)
    values = []
    for line in out.splitlines():
        try:
            values.append(float(line.split(",")[0]))
        except ValueError:
            continue
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cache", type=Path, default=None, help="decoded-audio cache")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    total = args.warmup + args.steps
    optim = recipe.optim.model_copy(update={"steps": max(total, recipe.optim.steps)})
    logging_cfg = recipe.logging.model_copy(update={"checkpoint_every": 10**9})
    recipe = recipe.model_copy(update={"optim": optim, "logging": logging_cfg})
    device = resolve_device(args.device, Distributed())
    torch.manual_seed(recipe.optim.seed)
    strategy = build_strategy(
        StrategyContext(recipe, [args.data], args.cache or default_cache_dir())
    )
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(strategy, recipe, Path(run_dir), device)
        trainer.run(max_steps=args.warmup, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        sampler = start_gpu_sampler() if device.type == "cuda" else None
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer.run(max_steps=total, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        utilisation = stop_gpu_sampler(sampler)
    clips = args.steps * recipe.data.batch_size * recipe.optim.grad_accum
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"recipe {recipe.name} ({recipe.strategy}, backbone {recipe.backbone.name}) on {name}, "
        f"threads {torch.get_num_threads()}"
    )
    print(
        f"batch {recipe.data.batch_size} x accum {recipe.optim.grad_accum}, crop "
        f"{recipe.data.crop_s} s, {args.steps} timed steps after {args.warmup} warm-up"
    )
    print(
        f"{elapsed / args.steps * 1000:.1f} ms/step, {clips / elapsed:.1f} clips/s, "
        f"{clips * recipe.data.crop_s / elapsed:.1f} audio-s/s"
    )
    print(
        f"process CPU time {cpu_s / clips * 1000:.0f} ms/clip over all threads (on a shared "
        f"machine wall-clock figures depend on the load: {os.getloadavg()[0]:.1f} now)"
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        mean = sum(utilisation) / len(utilisation) if utilisation else float("nan")
        print(
            f"GPU utilisation mean {mean:.0f}% over {len(utilisation)} samples "
            f"(nvidia-smi, every {SAMPLE_MS} ms); peak memory {peak:.2f} GiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
