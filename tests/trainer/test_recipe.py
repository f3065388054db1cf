"""Recipes: every shipped recipe validates; mistakes fail with the key path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_monitor.core.errors import ConfigError
from trainer.recipe import STRATEGIES, load_recipe, parse_recipe

CONF = Path(__file__).resolve().parents[2] / "conf" / "train"


def _tiny() -> dict:
    return yaml.safe_load((CONF / "tiny_full.yaml").read_text())


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem


def test_every_strategy_has_a_recipe_and_a_tiny_one() -> None:
    strategies = {load_recipe(p).strategy for p in CONF.glob("*.yaml")}
    tiny = {load_recipe(p).strategy for p in CONF.glob("tiny_*.yaml")}
    assert strategies == tiny == set(STRATEGIES)


def test_unknown_key_names_its_path() -> None:
    values = _tiny()
    values["optim"]["lrr"] = 0.1
    with pytest.raises(ConfigError, match=r"optim\.lrr.*Extra inputs"):
        parse_recipe(values, "my.yaml")


def test_wrong_type_names_path_and_value() -> None:
    values = _tiny()
    values["data"]["batch_size"] = "many"
    with pytest.raises(ConfigError, match=r"my\.yaml.*data\.batch_size.*'many'"):
        parse_recipe(values, "my.yaml")


def test_strategy_needs_its_section_and_refuses_others() -> None:
    values = _tiny()
    values["strategy"] = "lora"
    with pytest.raises(ConfigError, match="needs a 'lora' section"):
        parse_recipe(values, "r")
    values = _tiny()
    values["lora"] = {"rank": 4}
    with pytest.raises(ConfigError, match="section 'lora' belongs to strategy 'lora'"):
        parse_recipe(values, "r")


def test_dual_head_stage_must_end_before_training() -> None:
    values = yaml.safe_load((CONF / "tiny_dual_head.yaml").read_text())
    values["dual_head"]["stage1_steps"] = values["optim"]["steps"]
    with pytest.raises(ConfigError, match="stage1_steps"):
        parse_recipe(values, "r")


def test_reversed_range_is_refused() -> None:
    values = _tiny()
    values["augment"]["snr_db"] = [15, -5]
    with pytest.raises(ConfigError, match="snr_db"):
        parse_recipe(values, "r")


@settings(max_examples=60, deadline=None)
@given(
    decay=st.one_of(st.none(), st.floats(-1, 2), st.just(float("nan")), st.text(max_size=3)),
    start=st.one_of(st.integers(-3, 8), st.floats(-1, 9)),
)
def test_weight_average_settings_are_checked(decay, start) -> None:
    """Any average_decay / average_start either validates to a usable pair or is refused with
    the key named."""
    values = _tiny()  # steps: 4
    values["optim"].update(average_decay=decay, average_start=start)
    try:
        optim = parse_recipe(values, "r").optim
    except ConfigError as exc:
        assert "optim.average_" in str(exc) or "average_start" in str(exc)
        return
    assert optim.average_start >= 0
    if optim.average_decay is not None:
        assert 0 < optim.average_decay < 1
        assert optim.average_start < optim.steps


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not readable YAML"):
        load_recipe(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_recipe(bad)


def test_relative_paths_are_taken_from_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    recipe = folder / "r.yaml"
    recipe.write_text(
        "name: t\nstrategy: tats\n"
        "backbone: {name: resnet, size: tiny, checkpoint: ../ckpt/model.pt}\n"
        "tats: {extra_roots: [data/a, /abs/b]}\n"
    )
    monkeypatch.chdir(tmp_path.parent)
    loaded = load_recipe(recipe)
    assert loaded.backbone.checkpoint == folder / "../ckpt/model.pt"
    assert loaded.tats.extra_roots == [folder / "data/a", Path("/abs/b")]


def test_every_strategy_name_has_a_class() -> None:
    from trainer.recipe import STRATEGY_CLASSES

    assert set(STRATEGY_CLASSES) == set(STRATEGIES)
