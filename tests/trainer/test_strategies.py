"""Each strategy takes optimisation steps on a tiny tree and changes what it should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from finetune_fixtures import RATE, make_tree, seeded_strategy, tiny_recipe, tone

from edge_monitor.core.errors import ConfigError
from trainer.lora import LoRALinear
from trainer.recipe import Recipe
from trainer.strategies import Strategy
from trainer.strategies.masked_consistency import mask_waves, span_mask
from trainer.train_data import step_rng
from trainer.train_loop import Trainer


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def _train(strategy: Strategy, recipe: Recipe, run_dir: Path) -> None:
    Trainer(strategy, recipe, run_dir, torch.device("cpu")).run(progress=False)


def test_full_fine_tuning_moves_backbone_and_head(tree, cache, tmp_path) -> None:
    recipe = tiny_recipe("full")
    strategy = seeded_strategy(recipe, [tree], cache)
    assert strategy.classes.names == (
        "ToyFan/section_00/spd=10",
        "ToyFan/section_00/spd=20",
        "ToyFan/section_00/spd=30",
    )
    before = _snapshot(strategy.modules)
    _train(strategy, recipe, tmp_path)
    changed = _changed(before, strategy.modules)
    weights = {k for k in before if k.endswith("weight") and "num_batches" not in k}
    assert weights <= changed


def test_extra_classes_add_noise_only_and_clean(tree, cache, tmp_path) -> None:
    for kind, freq, noise in (("noise", 50.0, 0.5), ("clean", 300.0, 0.0)):
        (tmp_path / kind).mkdir()
        sf.write(tmp_path / kind / f"{kind}.wav", tone(1.0, freq, 7, noise), RATE)
    recipe = tiny_recipe(
        "extra_classes",
        extra_classes={
            "noise_dirs": [str(tmp_path / "noise")],
            "clean_dirs": [str(tmp_path / "clean")],
        },
    )
    strategy = seeded_strategy(recipe, [tree], cache)
    assert {"extra/noise-only:noise", "extra/clean:clean"} <= set(strategy.classes.names)
    assert len(strategy.augmenter.noise_bank) == 1
    before = _snapshot(strategy.modules)
    _train(strategy, recipe, tmp_path / "run")
    assert "loss.weight" in _changed(before, strategy.modules)


def test_lora_freezes_base_and_moves_adapters(tree, cache, tmp_path) -> None:
    recipe = tiny_recipe("lora")
    strategy = seeded_strategy(recipe, [tree], cache)
    adapted = [m for m in strategy.backbone.modules() if isinstance(m, LoRALinear)]
    assert len(adapted) == len(strategy.adapted) > 0
    before = _snapshot(strategy.modules)
    _train(strategy, recipe, tmp_path)
    changed = _changed(before, strategy.modules)
    backbone_changed = {k for k in changed if k.startswith("backbone.")}
    assert backbone_changed and all(".lora_" in k for k in backbone_changed)
    assert any(k.endswith("lora_b") for k in backbone_changed)
    assert any(k.startswith("head.") for k in changed)
    # The merged model for embedding computes what the adapted one does.
    model = strategy.embedding_model()
    assert not any(isinstance(m, LoRALinear) for m in model.backbone.modules())
    wave = torch.from_numpy(tone(1.0, 220.0, 1))[None]
    strategy.train(False)
    torch.testing.assert_close(model.backbone(wave), strategy.backbone(wave), atol=1e-4, rtol=1e-4)


def test_dual_head_gives_both_heads_gradients_in_the_joint_stage(tree, cache, tmp_path) -> None:
    recipe = tiny_recipe("dual_head")
    strategy = seeded_strategy(recipe, [tree], cache)
    strategy.train(True)

    def grads(step: int) -> tuple[bool, bool]:
        strategy.modules.zero_grad(set_to_none=True)
        loss, _ = strategy.loss(step, step_rng(0, step))
        loss.backward()
        has = {
            name: any(
                p.grad is not None and p.grad.abs().sum() > 0
                for p in strategy.modules[name].parameters()
            )
            for name in ("head", "pseudo_head")
        }
        return has["head"], has["pseudo_head"]

    assert grads(0) == (True, False)  # supervised stage
    assert not strategy.pseudo_ready
    assert grads(recipe.dual_head.stage1_steps) == (True, True)  # joint stage
    assert strategy.pseudo_ready
    labels = strategy.pool.targets
    assert labels.shape == (len(strategy.all_clips),) and len(set(labels.tolist())) > 1
    state = strategy.extra_state()
    fresh = seeded_strategy(recipe, [tree], cache)
    fresh.load_extra_state(state)
    assert fresh.pseudo_ready and np.array_equal(fresh.pool.targets, labels)
    assert set(strategy.embedding_model().heads) == {"head", "pseudo_head"}


def test_tats_teacher_follows_the_student(tree, cache, tmp_path_factory, tmp_path) -> None:
    second = make_tree(tmp_path_factory.mktemp("year2"), machine="ToyPump")
    recipe = tiny_recipe("tats", tats={"extra_roots": [str(second)], "ema_decay": 0.5})
    strategy = seeded_strategy(recipe, [tree, second], cache)
    assert any(n.startswith("root1:ToyPump") for n in strategy.classes.names)
    teacher_before = _snapshot(strategy.teacher)
    trainer = Trainer(strategy, recipe, tmp_path, torch.device("cpu"))
    trainer.run(max_steps=1, progress=False)
    student = dict(strategy.modules["backbone"].named_parameters())
    for name, parameter in strategy.teacher["backbone"].named_parameters():
        expected = 0.5 * teacher_before[f"backbone.{name}"] + 0.5 * student[name].detach()
        torch.testing.assert_close(parameter, expected)
    assert _changed(teacher_before, strategy.teacher)
    assert all(not p.requires_grad for p in strategy.teacher.parameters())


def test_masked_consistency_masks_thirty_percent_and_trains(tree, cache, tmp_path) -> None:
    recipe = tiny_recipe("masked_consistency")
    strategy = seeded_strategy(recipe, [tree], cache)
    strategy.train(True)
    loss, metrics = strategy.loss(0, step_rng(0, 0))
    assert metrics["masked_fraction"] == pytest.approx(0.3, abs=0.1)
    assert metrics["loss_masked_mse"] >= 0.0 and torch.isfinite(loss)
    before = _snapshot(strategy.modules)
    teacher_before = _snapshot(strategy.teacher)
    _train(strategy, recipe, tmp_path)
    assert any(k.startswith("backbone.") for k in _changed(before, strategy.modules))
    assert _changed(teacher_before, strategy.teacher)


def test_span_mask_ratio_and_wave_masking() -> None:
    mask = span_mask(np.random.default_rng(0), 4, 50, 0.3, 5)
    assert np.all(mask.sum(1) >= 15) and np.all(mask.sum(1) <= 19)
    waves = torch.ones(1, 100)
    frame_mask = np.zeros((1, 10), dtype=bool)
    frame_mask[0, 2] = True
    masked = mask_waves(waves, frame_mask)
    assert torch.all(masked[0, 20:30] == 0) and masked.sum() == 90


EFFICIENTAT_TINY = {"name": "efficientat", "size": "tiny", "freeze": ["features.0.", "features.1."]}


@pytest.mark.parametrize("name", ["full", "extra_classes", "dual_head", "tats"])
def test_every_cnn_strategy_trains_efficientat_with_frozen_early_blocks(
    name, tree, cache, tmp_path
) -> None:
    overrides: dict = {"backbone": EFFICIENTAT_TINY}
    if name == "extra_classes":
        (tmp_path / "noise").mkdir()
        sf.write(tmp_path / "noise" / "noise.wav", tone(1.0, 50.0, 7, 0.5), RATE)
        overrides["extra_classes"] = {"noise_dirs": [str(tmp_path / "noise")], "clean_dirs": []}
    strategy = seeded_strategy(tiny_recipe(name, **overrides), [tree], cache)
    before = _snapshot(strategy.modules)
    _train(strategy, strategy.recipe, tmp_path / "run")
    changed = _changed(before, strategy.modules)
    frozen = {k for k in before if k.startswith(("backbone.features.0.", "backbone.features.1."))}
    assert frozen and not frozen & changed, "frozen blocks (weights and BN statistics) moved"
    assert any(k.startswith("backbone.features.15.") for k in changed)
    assert strategy.sample_rate_hz == 32000


def test_freeze_prefix_that_matches_nothing_is_refused(tree, cache) -> None:
    recipe = tiny_recipe("full", backbone={**EFFICIENTAT_TINY, "freeze": ["feature.0."]})
    with pytest.raises(ConfigError, match=r"feature\.0\..*match no module"):
        seeded_strategy(recipe, [tree], cache)
