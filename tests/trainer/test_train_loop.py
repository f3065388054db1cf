"""The training loop: resume continues exactly where it stopped; the finetune command's run
directory life cycle; data-parallel training under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from finetune_fixtures import REPO, make_tree, tiny_recipe

from edge_monitor.demo.local_broker import free_port
from trainer.cli import main
from trainer.strategies import StrategyContext, build_strategy
from trainer.train_loop import METRICS_FILE, STATE_FILE, Trainer

RECIPE = REPO / "conf" / "train" / "tiny_full.yaml"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("data"))


def _trainer(tree: Path, run_dir: Path, cache: Path, **optim: float) -> Trainer:
    recipe = tiny_recipe("full", optim=optim) if optim else tiny_recipe("full")
    torch.manual_seed(0)
    strategy = build_strategy(StrategyContext(recipe, [tree], cache))
    return Trainer(strategy, recipe, run_dir, torch.device("cpu"))


def test_resume_continues_exactly_where_it_stopped(tree, tmp_path) -> None:
    cache = tmp_path / "cache"
    straight = _trainer(tree, tmp_path / "straight", cache)
    straight.run(progress=False)

    first = _trainer(tree, tmp_path / "split", cache)
    first.run(max_steps=2, progress=False)
    saved_optimizer = first.optimizer.state_dict()
    resumed = _trainer(tree, tmp_path / "split", cache)
    resumed.resume()
    assert resumed.step == 2
    assert resumed.scheduler.last_epoch == 2
    restored = resumed.optimizer.state_dict()
    assert restored["state"].keys() == saved_optimizer["state"].keys()
    for index, state in saved_optimizer["state"].items():
        torch.testing.assert_close(restored["state"][index]["exp_avg"], state["exp_avg"])
        assert float(restored["state"][index]["step"]) == 2.0
    resumed.run(progress=False)

    assert resumed.step == straight.step == 4
    expected = straight.strategy.modules.state_dict()
    for key, value in resumed.strategy.modules.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "split" / METRICS_FILE).read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.strategy.modules.state_dict().items()}


def test_weight_average_follows_its_decay_and_survives_resume(tree, tmp_path) -> None:
    cache = tmp_path / "cache"
    trainer = _trainer(tree, tmp_path / "avg", cache, average_decay=0.25, average_start=1)
    trainer.run(max_steps=1, progress=False)
    assert trainer.averaged_modules() is None  # not started yet
    trainer.run(max_steps=2, progress=False)
    second = _weights(trainer)
    average = trainer.averaged_modules()
    assert average is not None
    for key, value in average.state_dict().items():
        torch.testing.assert_close(value, second[key], rtol=0, atol=0, msg=key)  # a copy
    trainer.run(max_steps=3, progress=False)
    third = _weights(trainer)
    for key, value in trainer.averaged_modules().state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.25 * second[key] + 0.75 * third[key], msg=key)
        else:
            assert torch.equal(value, third[key]), key
    assert any(not torch.equal(second[k], third[k]) for k in second)

    resumed = _trainer(tree, tmp_path / "avg", cache, average_decay=0.25, average_start=1)
    resumed.resume()
    resumed.run(progress=False)
    straight = _trainer(tree, tmp_path / "straight", cache, average_decay=0.25, average_start=1)
    straight.run(progress=False)
    expected = straight.averaged_modules().state_dict()
    for key, value in resumed.averaged_modules().state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_finetune_writes_the_average_and_keeps_the_last_weights(tree, tmp_path) -> None:
    recipe = tmp_path / "avg.yaml"
    recipe.write_text(
        RECIPE.read_text().replace("seed: 0}", "seed: 0, average_decay: 0.5, average_start: 1}")
    )
    run_dir = tmp_path / "run"
    args = ["finetune", "--recipe", str(recipe), "--data", str(tree), "--out", str(run_dir)]
    assert main([*args, "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    state = torch.load(run_dir / STATE_FILE, weights_only=True)
    averaged = torch.load(run_dir / "model.pt", weights_only=True)
    raw = torch.load(run_dir / "raw" / "model.pt", weights_only=True)
    assert (run_dir / "raw" / "embedder.json").is_file()
    assert averaged["backbone"].keys() == raw["backbone"].keys()
    last = raw["backbone"]
    assert any(not torch.equal(averaged["backbone"][k], last[k]) for k in last)
    for key, value in averaged["backbone"].items():
        assert torch.equal(value, state["average"][f"backbone.{key}"]), key
        assert torch.equal(raw["backbone"][key], state["modules"][f"backbone.{key}"]), key


def test_finetune_command_life_cycle(tree, tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    common = [
        "finetune",
        "--recipe",
        str(RECIPE),
        "--data",
        str(tree),
        "--out",
        str(run_dir),
        "--cache",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert main([*common, "--max-steps", "2"]) == 0
    assert "stopped at step 2 of 4" in capsys.readouterr().out
    assert (run_dir / STATE_FILE).is_file() and (run_dir / "embedder.json").is_file()
    early_model = (run_dir / "model.pt").read_bytes()  # an early stop can be evaluated too

    assert main(common) == 2  # a run is there: refuse to overwrite it
    assert "pass --resume" in capsys.readouterr().err
    saved = run_dir / "recipe.yaml"  # as a trainer before optim.init_seed wrote it
    lines = saved.read_text().splitlines(True)
    saved.write_text("".join(line for line in lines if "init_seed" not in line))
    assert main([*common, "--resume"]) == 0
    assert (run_dir / "embedder.json").is_file()
    assert (run_dir / "model.pt").read_bytes() != early_model
    assert torch.load(run_dir / STATE_FILE, weights_only=True)["step"] == 4

    other = tmp_path / "other.yaml"
    other.write_text(RECIPE.read_text().replace("lr: 0.01", "lr: 0.02"))
    changed = [*common, "--resume"]
    changed[changed.index(str(RECIPE))] = str(other)
    assert main(changed) == 2
    assert "differs from --recipe" in capsys.readouterr().err
    fresh = [*common, "--resume"]
    fresh[fresh.index(str(run_dir))] = str(tmp_path / "empty")
    assert main(fresh) == 2


def test_data_parallel_under_torchrun(tree, tmp_path) -> None:
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "trainer.cli",
            "finetune",
            "--recipe",
            str(RECIPE),
            "--data",
            str(tree),
            "--out",
            str(run_dir),
            "--cache",
            str(tmp_path / "cache"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert (run_dir / "model.pt").is_file()
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # rank 0 alone logs
