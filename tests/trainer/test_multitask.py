"""Multi-task heads (data.tasks): one margin loss per task on the same embedding, trained on
their mean, in every strategy; resume and the saved run work; bad task lists fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from finetune_fixtures import RATE, REPO, seeded_strategy, tiny_recipe, tone
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_monitor.core.errors import ConfigError, DatasetError
from trainer.checkpoint_embedder import load_checkpoint_embedder
from trainer.cli import main
from trainer.recipe import Recipe, parse_recipe
from trainer.train_data import step_rng
from trainer.train_loop import STATE_FILE, Trainer

TASKS = ["combined", "car", "spd"]
CARS = {"A1": 220.0, "B2": 330.0}
SPEEDS = {"10": 1.0, "20": 2.0}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ToyCar/train with two attributes, car x spd x 2 clips (a tone per car, its harmonic
    weight per speed), plus one test clip."""
    root = tmp_path_factory.mktemp("data")
    train = root / "ToyCar" / "train"
    test = root / "ToyCar" / "test"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    index = 0
    for car, freq in CARS.items():
        for speed, weight in SPEEDS.items():
            for _ in range(2):
                index += 1
                wave = tone(1.0, freq, index) + weight * tone(1.0, 2 * freq, index, 0.0) / 3
                name = f"section_00_source_train_normal_{index:04d}_car_{car}_spd_{speed}.wav"
                sf.write(train / name, wave, RATE)
    sf.write(
        test / "section_00_source_test_normal_0000_car_A1_spd_10.wav", tone(1.0, 220.0, 50), RATE
    )
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _with_tasks(name: str, tasks: list[str] = TASKS, **overrides) -> Recipe:
    values = yaml.safe_load((REPO / "conf" / "train" / f"tiny_{name}.yaml").read_text())
    return tiny_recipe(name, data={**values["data"], "tasks": tasks}, **overrides)


def test_each_task_has_its_loss_and_classes_per_machine_and_section(tree, cache, tmp_path):
    recipe = _with_tasks("full")
    strategy = seeded_strategy(recipe, [tree], cache)
    assert {k for k in strategy.modules if k.startswith("loss")} == {
        "loss_combined", "loss_car", "loss_spd"
    }
    assert strategy.task_classes["car"].names == (
        "ToyCar/section_00/car=A1", "ToyCar/section_00/car=B2"
    )
    assert strategy.task_classes["spd"].names == (
        "ToyCar/section_00/spd=10", "ToyCar/section_00/spd=20"
    )
    assert len(strategy.task_classes["combined"]) == 4
    assert strategy.data.targets.shape == (len(strategy.clips), 3)
    before = {k: v.detach().clone() for k, v in strategy.modules.state_dict().items()}
    Trainer(strategy, recipe, tmp_path, torch.device("cpu")).run(progress=False)
    after = strategy.modules.state_dict()
    for task in TASKS:  # every task's loss trained (its centres moved)
        assert not torch.equal(before[f"loss_{task}.weight"], after[f"loss_{task}.weight"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*records)
    assert {"loss_cls", "loss_combined", "loss_car", "loss_spd"} <= logged
    assert {"acc_combined", "acc_car", "acc_spd"} & logged  # unmixed batches log accuracy
    for record in records:  # the class loss is the mean of the task losses
        mean = np.mean([record[f"loss_{t}"] for t in TASKS])
        assert record["loss_cls"] == pytest.approx(mean, abs=1e-4)


def test_one_task_loss_is_the_single_loss_of_the_same_classes(tree, cache) -> None:
    """tasks [combined] trains exactly what no tasks trains: same classes, same loss value."""
    plain = seeded_strategy(tiny_recipe("full"), [tree], cache)
    single = seeded_strategy(_with_tasks("full", ["combined"]), [tree], cache)
    assert single.task_classes["combined"] == plain.classes
    assert set(plain.modules) == {"backbone", "head", "loss"}
    for strategy in (plain, single):
        strategy.train(True)
    plain_loss, _ = plain.loss(0, step_rng(0, 0))
    single_loss, metrics = single.loss(0, step_rng(0, 0))
    torch.testing.assert_close(plain_loss, single_loss)
    assert metrics["loss_cls"] == pytest.approx(metrics["loss_combined"])


def test_finetune_with_tasks_resumes_and_saves_an_embedder(tree, tmp_path, capsys) -> None:
    recipe_path = tmp_path / "tasks.yaml"
    values = yaml.safe_load((REPO / "conf" / "train" / "tiny_full.yaml").read_text())
    values["data"]["tasks"] = TASKS
    recipe_path.write_text(yaml.safe_dump(values))

    def finetune(out: Path, *extra: str) -> None:
        common = ["finetune", "--recipe", str(recipe_path), "--data", str(tree), "--out",
                  str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]
        assert main([*common, *extra]) == 0, capsys.readouterr().err

    finetune(tmp_path / "straight")
    finetune(tmp_path / "split", "--max-steps", "2")
    finetune(tmp_path / "split", "--resume")
    straight = torch.load(tmp_path / "straight" / STATE_FILE, weights_only=True)
    split = torch.load(tmp_path / "split" / STATE_FILE, weights_only=True)
    assert split["step"] == straight["step"] == 4
    assert {k.split(".")[0] for k in split["modules"]} >= {"loss_car", "loss_spd"}
    for key, value in straight["modules"].items():
        torch.testing.assert_close(split["modules"][key], value, rtol=0, atol=0, msg=key)

    run = tmp_path / "split"
    classes = json.loads((run / "classes.json").read_text())
    assert set(classes) == {"head:combined", "head:car", "head:spd"}
    assert classes["head:car"] == ["ToyCar/section_00/car=A1", "ToyCar/section_00/car=B2"]
    saved = torch.load(run / "model.pt", weights_only=True)
    assert set(saved) == {"backbone", "heads"} and set(saved["heads"]) == {"head"}
    embedder = load_checkpoint_embedder(run)
    vector = embedder.embed(tone(1.0, 220.0, 3))
    assert vector.shape == (8,) and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-4)


@pytest.mark.parametrize(
    "name", ["extra_classes", "lora", "dual_head", "tats", "masked_consistency"]
)
def test_every_strategy_trains_every_task(name, tree, cache, tmp_path) -> None:
    overrides: dict = {}
    if name == "extra_classes":
        (tmp_path / "noise").mkdir()
        sf.write(tmp_path / "noise" / "noise.wav", tone(1.0, 50.0, 7, 0.5), RATE)
        overrides["extra_classes"] = {"noise_dirs": [str(tmp_path / "noise")], "clean_dirs": []}
    recipe = _with_tasks(name, **overrides)
    strategy = seeded_strategy(recipe, [tree], cache)
    if name == "extra_classes":  # an extra directory is a class of its own in every task
        assert all("extra/noise-only:noise" in c.names for c in strategy.task_classes.values())
    if name == "tats":
        assert strategy.task_classes["car"].names[0] == "root0:ToyCar/section_00/car=A1"
    strategy.train(True)
    step = recipe.dual_head.stage1_steps if name == "dual_head" else 0  # the joint stage
    strategy.modules.zero_grad(set_to_none=True)
    loss, metrics = strategy.loss(step, step_rng(0, step))
    loss.backward()
    assert torch.isfinite(loss)
    assert {f"loss_{t}" for t in TASKS} <= set(metrics)
    for task in TASKS:
        grad = strategy.modules[f"loss_{task}"].weight.grad
        assert grad is not None and grad.abs().sum() > 0, task
    heads = strategy.embedding_model()
    assert {"head:combined", "head:car", "head:spd"} <= set(heads.classes)


def test_a_task_no_clip_has_names_the_field(tree, cache) -> None:
    with pytest.raises(DatasetError, match=r"attribute 'mic' missing.*data\.tasks"):
        seeded_strategy(_with_tasks("full", ["combined", "mic"]), [tree], cache)


def _recipe_with(**data) -> dict:
    values = yaml.safe_load((REPO / "conf" / "train" / "tiny_full.yaml").read_text())
    values["data"] = {**values["data"], **data}
    return values


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tasks": []}, r"data: .*tasks: empty"),
        ({"tasks": ["car", "spd", "car"]}, r"data: .*tasks: \['car'\] named more than once"),
        ({"tasks": ["car", "a.b"]}, r"data: .*tasks: \['a\.b'\] are not task names"),
        ({"tasks": ["car"], "attributes": ["car"]}, r"attributes only shape the 'combined'"),
        ({"tasks": "car"}, r"data\.tasks: Input should be a valid list"),
    ],
)
def test_bad_task_lists_are_refused_with_the_fix(data, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_recipe(_recipe_with(**data), "r.yaml")


def test_shipped_multitask_recipe_is_the_cpu_recipe_plus_tasks() -> None:
    conf = REPO / "conf" / "train"
    cpu = yaml.safe_load((conf / "efficientat_cpu.yaml").read_text())
    multitask = yaml.safe_load((conf / "efficientat_multitask.yaml").read_text())
    assert multitask["data"].pop("tasks") == ["combined", "car", "spd", "mic"]
    assert {**multitask, "name": cpu["name"]} == cpu


task_names = st.one_of(
    st.sampled_from(["combined", "car", "spd", "mic", "", "a.b", " car", "car\n"]),
    st.text(max_size=6),
)


@settings(max_examples=80, deadline=None, database=None, derandomize=True)
@given(st.lists(task_names, max_size=5), st.none() | st.lists(st.sampled_from(["car", "spd"])))
def test_any_task_list_validates_or_is_refused_naming_data_tasks(tasks, attributes) -> None:
    values = _recipe_with(tasks=tasks, attributes=attributes)
    try:
        recipe = parse_recipe(values, "r.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("r.yaml: invalid recipe: data: ") and "tasks" in str(exc)
        return
    accepted = recipe.data.tasks
    assert accepted == tasks and len(set(tasks)) == len(tasks) > 0
    assert all(t and "." not in t and not any(c.isspace() for c in t) for t in tasks)
    assert attributes is None or "combined" in tasks
