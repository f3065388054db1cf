"""The one training loop: AdamW, warm-up + cosine, AMP on CUDA, accumulation, resume, DDP.

Everything method-specific lives in the strategy; this loop only turns its micro-batch losses
into optimizer steps. `train_state.pt` holds every piece of state a resume needs (modules,
optimizer, scheduler, scaler, RNGs, the strategy's extras, the step), written atomically; a
resumed run continues at the saved step and draws the same batches it would have drawn.
With `optim.average_decay` the loop also keeps an exponential moving average of the weights
(a smoother point than the last step's, which still moves with the last batches); it is part of
the resume state, and `averaged_modules()` hands it to whoever writes the model.
Under torchrun (WORLD_SIZE > 1) each rank draws its own batches and gradients are averaged
with all-reduce before every optimizer step (data-parallel training).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from tqdm import tqdm

from edge_monitor.core.atomic import atomic_path
from edge_monitor.core.errors import ConfigError
from trainer.recipe import Recipe
from trainer.schedule import warmup_cosine
from trainer.strategies.base import Strategy
from trainer.strategies.ema import ema_update, make_teacher
from trainer.train_data import step_rng

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class Distributed:
    """Rank layout of this process (one process = rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def barrier(layout: Distributed) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if layout.world_size > 1:
        dist.barrier()


def shutdown_distributed(layout: Distributed) -> None:
    """Leave the process group cleanly at the end of a torchrun job."""
    if layout.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(requested: str, layout: Distributed) -> torch.device:
    """cpu or cuda (one GPU per local rank); asking for cuda without one is an input error."""
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu")
        torch.cuda.set_device(layout.local_rank)
        return torch.device("cuda", layout.local_rank)
    if requested != "cpu":
        raise ConfigError(f"--device {requested!r}: use cpu or cuda")
    return torch.device("cpu")


def _autocast(
    device: torch.device, enabled: bool
) -> tuple[contextlib.AbstractContextManager[Any], torch.amp.GradScaler]:
    """bfloat16 autocast where the GPU supports it (no scaler needed), else float16 + scaler."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext(), torch.amp.GradScaler("cuda", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return torch.autocast("cuda", dtype=dtype), scaler


def _average_gradients(parameters: list[torch.nn.Parameter], layout: Distributed) -> None:
    if layout.world_size == 1:
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad)
        parameter.grad /= layout.world_size


def _broadcast_parameters(strategy: Strategy, layout: Distributed) -> None:
    if layout.world_size == 1:
        return
    for tensor in strategy.modules.state_dict().values():
        dist.broadcast(tensor, src=0)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainResult:
    """Where a run ended and its last logged numbers."""

    step: int
    finished: bool
    last_metrics: dict[str, float]


class Trainer:
    """Runs a strategy's optimisation from step 0 (or a saved step) to the recipe's total."""

    def __init__(
        self,
        strategy: Strategy,
        recipe: Recipe,
        run_dir: Path,
        device: torch.device,
        layout: Distributed | None = None,
    ) -> None:
        self.strategy = strategy.to(device)
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.device = device
        self.layout = layout or Distributed()
        self.optimizer = torch.optim.AdamW(
            strategy.parameter_groups(), weight_decay=recipe.optim.weight_decay
        )
        self.scheduler = warmup_cosine(
            self.optimizer, recipe.optim.steps, recipe.optim.warmup_steps, recipe.optim.min_lr_ratio
        )
        self.autocast, self.scaler = _autocast(device, recipe.optim.amp)
        self.step = 0
        self.average: torch.nn.Module | None = None
        _broadcast_parameters(strategy, self.layout)

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "modules": self.strategy.modules.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "strategy": self.strategy.extra_state(),
            "rng": _rng_state(),
            "average": None if self.average is None else self.average.state_dict(),
        }

    def save(self) -> None:
        """Write the resume state atomically (rank 0 only)."""
        if not self.layout.is_main:
            return
        with atomic_path(self.state_path) as tmp:
            torch.save(self.state_dict(), tmp)
        log.info("checkpoint at step %d: %s", self.step, self.state_path)

    def resume(self) -> None:
        """Load the saved state; the next step is the one after the saved one."""
        if not self.state_path.is_file():
            raise ConfigError(f"--resume: {self.state_path} does not exist; start without --resume")
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        self.strategy.modules.load_state_dict(state["modules"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.strategy.load_extra_state(state["strategy"])
        _set_rng_state(
            {
                k: v.cpu() if torch.is_tensor(v) else [t.cpu() for t in v]
                for k, v in state["rng"].items()
            }
        )
        self.step = int(state["step"])
        if state.get("average") is not None:
            self.average = make_teacher(self.strategy.modules)
            self.average.load_state_dict(state["average"], strict=True)
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def _update_average(self) -> None:
        """Fold the weights of the step just taken into the average, once it has started."""
        optim = self.recipe.optim
        if optim.average_decay is None or self.step <= optim.average_start:
            return
        if self.average is None:
            self.average = make_teacher(self.strategy.modules)
        else:
            ema_update(self.average, self.strategy.modules, optim.average_decay)

    def averaged_modules(self) -> torch.nn.Module | None:
        """The weight average (same keys as the strategy's modules), or None when the recipe
        keeps none or the run stopped before it started."""
        return self.average

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _optimizer_step(self) -> dict[str, float]:
        optim = self.recipe.optim
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for micro in range(optim.grad_accum):
            rng = step_rng(optim.seed, self.step, self.layout.rank, micro)
            with self.autocast:
                loss, metrics = self.strategy.loss(self.step, rng)
            self.scaler.scale(loss / optim.grad_accum).backward()
            for key, value in {"loss": float(loss.detach()), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
        totals = {key: sums[key] / counts[key] for key in sums}  # mean over micro-batches
        parameters = self._trainable()
        _average_gradients(parameters, self.layout)
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(parameters, optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.strategy.after_step(self.step)
        totals["grad_norm"] = float(norm)
        return totals

    def _log(self, handle: Any, metrics: dict[str, float], clips_per_s: float) -> None:
        record = {
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "clips_per_s": round(clips_per_s, 2),
            **{k: round(v, 6) for k, v in metrics.items()},
        }
        handle.write(json.dumps(record) + "\n")
        handle.flush()

    def run(self, max_steps: int | None = None, progress: bool = True) -> TrainResult:
        """Train up to the recipe's steps (or stop early after `max_steps` in total)."""
        total = self.recipe.optim.steps
        stop = total if max_steps is None else min(total, max_steps)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        logging_cfg = self.recipe.logging
        clips_per_step = (
            self.recipe.data.batch_size * self.recipe.optim.grad_accum * self.layout.world_size
        )
        last: dict[str, float] = {}
        self.strategy.train(True)
        with (
            self._metrics_handle() as handle,
            tqdm(
                total=stop,
                initial=self.step,
                disable=not (progress and self.layout.is_main),
                desc=self.recipe.name,
                mininterval=2.0,
                dynamic_ncols=True,
            ) as bar,
        ):
            started, started_step = time.perf_counter(), self.step
            while self.step < stop:
                last = self._optimizer_step()
                self.step += 1
                self._update_average()
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}")
                if handle is not None and (
                    self.step % logging_cfg.log_every == 0 or self.step == stop
                ):
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    self._log(handle, last, clips_per_step * (self.step - started_step) / elapsed)
                    started, started_step = time.perf_counter(), self.step
                if self.step % logging_cfg.checkpoint_every == 0 and self.step < stop:
                    self.save()
        self.save()
        self.strategy.train(False)
        return TrainResult(self.step, self.step >= total, last)

    @contextlib.contextmanager
    def _metrics_handle(self) -> Iterator[Any]:
        if not self.layout.is_main:
            yield None
            return
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
            yield handle
