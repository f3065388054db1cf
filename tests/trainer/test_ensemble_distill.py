"""Ensemble distillation into a fine-tuned model (recipe section `distill`): teachers.npz from
`edge-trainer distill --teachers-only`, the extra loss on the strategy's embedding, and the
errors for a file that does not fit the training clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from finetune_fixtures import REPO, make_tree, seeded_strategy, tiny_recipe
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_monitor.core.errors import ConfigError
from trainer.augment import MixedBatch
from trainer.checkpoint_embedder import load_checkpoint_embedder
from trainer.cli import main as trainer_main
from trainer.distill import TeacherTargets, relational_loss
from trainer.recipe import DistillSection
from trainer.strategies.distillation import Distillation
from trainer.train_data import training_clips
from trainer.train_loop import Trainer


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("data"), per_class=4)


@pytest.fixture(scope="module")
def teachers(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teachers")
    argv = ["distill", "--data", str(tree), "--teacher", "logmel-stats", "--teachers-only",
            "--out", str(out)]
    assert trainer_main(argv) == 0
    return out / "teachers.npz"


def _distill(teachers: Path, **extra: float) -> dict:
    return {"distill": {"teachers": str(teachers), **extra}}


def test_teachers_only_writes_the_vectors_and_no_student(
    teachers: Path, tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = TeacherTargets.load(teachers)
    clips = training_clips([tree])
    assert {str(c.path.resolve()) for c in clips} <= set(stored.paths)
    assert all(Path(p).is_absolute() for p in stored.paths)
    assert not (teachers.parent / "student.pt").exists()
    figures = json.loads((teachers.parent / "distill.json").read_text())
    assert 0.0 <= figures["teachers_geometry_hmean"] <= 1.0


def test_the_term_pulls_the_embedding_geometry_toward_the_teachers(
    teachers: Path, tree: Path
) -> None:
    clips = training_clips([tree])
    section = DistillSection(teachers=teachers, weight=1.0, relational_weight=1.0)
    torch.manual_seed(0)
    term = Distillation(section, [c.path for c in clips], embed_dim=6)
    embeddings = torch.nn.Parameter(torch.randn(len(clips), 6))
    rows = np.arange(len(clips))
    optimiser = torch.optim.Adam([embeddings, *term.parameters()], lr=0.05)

    def mismatch() -> float:
        unit = torch.nn.functional.normalize(embeddings.detach(), dim=1)
        return float(relational_loss(unit, term.targets))

    before = mismatch()
    for _ in range(200):
        optimiser.zero_grad()
        term(embeddings, rows).backward()
        optimiser.step()
    assert mismatch() < 0.2 * before


@pytest.mark.parametrize("name", ["full", "feature_exchange"])
def test_a_strategy_with_the_section_trains_the_term(
    name: str, teachers: Path, tree: Path, tmp_path: Path
) -> None:
    recipe = tiny_recipe(name, **_distill(teachers), augment={"mixup_prob": 0.0})
    strategy = seeded_strategy(recipe, [tree], tmp_path / "cache")
    before = {k: v.clone() for k, v in strategy.modules.state_dict().items()}
    Trainer(strategy, recipe, tmp_path / "run", torch.device("cpu")).run(progress=False)
    after = strategy.modules.state_dict()
    assert not torch.equal(before["distill.projection.weight"], after["distill.projection.weight"])
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    distilled = [row["loss_distill"] for row in logged if "loss_distill" in row]
    assert distilled and all(np.isfinite(distilled))


def test_the_run_keeps_no_projection_and_embeds_as_before(
    teachers: Path, tree: Path, tmp_path: Path
) -> None:
    values = yaml.safe_load((REPO / "conf" / "train" / "tiny_full.yaml").read_text())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**values, **_distill(teachers)}))
    argv = ["finetune", "--recipe", str(recipe), "--data", str(tree), "--out",
            str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert trainer_main(argv) == 0
    model = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert set(model["heads"]) == {"head"}  # the training-only projection is not kept
    assert load_checkpoint_embedder(tmp_path / "run").dim == values["head"]["embed_dim"]


def test_a_mixed_batch_adds_no_term(teachers: Path, tree: Path, tmp_path: Path) -> None:
    strategy = seeded_strategy(tiny_recipe("full", **_distill(teachers)), [tree], tmp_path)
    value = torch.tensor(1.0)
    embeddings = torch.randn(2, 8)
    mixed = MixedBatch(torch.zeros(2, 8), partner=np.array([1, 0]), lam=0.5,
                       clips=np.array([0, 1]))
    assert strategy.distilled(value, {}, embeddings, mixed) == (value, {})
    plain = MixedBatch(torch.zeros(2, 8), clips=np.array([0, 1]))
    total, logs = strategy.distilled(value, {}, embeddings, plain)
    assert "loss_distill" in logs and float(total.detach()) > 1.0


def test_a_file_without_every_training_clip_names_the_count_and_the_fix(
    teachers: Path, tree: Path, tmp_path: Path
) -> None:
    stored = TeacherTargets.load(teachers)
    short = TeacherTargets(stored.paths[1:], stored.names, stored.weights,
                           [e[1:] for e in stored.embeddings])
    path = short.save(tmp_path / "short.npz")
    with pytest.raises(ConfigError, match=r"distill.teachers .*short.npz.* 1 of .*--teachers-only"):
        seeded_strategy(tiny_recipe("full", **_distill(path)), [tree], tmp_path)


def test_a_file_that_is_not_teachers_npz_is_named(tree: Path, tmp_path: Path) -> None:
    path = tmp_path / "teachers.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"teachers\.npz: not a teachers\.npz"):
        seeded_strategy(tiny_recipe("full", **_distill(path)), [tree], tmp_path)


def test_strategies_with_their_own_teacher_refuse_the_section(teachers: Path) -> None:
    with pytest.raises(ConfigError, match="section 'distill' works with strategies"):
        tiny_recipe("full", strategy="tats", tats={}, **_distill(teachers))


@settings(max_examples=60, deadline=None)
@given(section=st.dictionaries(
    st.sampled_from(["teachers", "weight", "relational_weight", "temperature"]),
    st.one_of(st.floats(allow_nan=True), st.integers(-3, 3), st.text(max_size=5), st.none()),
))
def test_any_distill_section_is_accepted_or_refused_by_name(section: dict) -> None:
    try:
        recipe = tiny_recipe("full", distill=section)
    except ConfigError as exc:
        assert "distill" in str(exc)
        return
    assert recipe.distill is not None
    assert recipe.distill.weight > 0 and recipe.distill.relational_weight >= 0
