"""Weight soups: the soup is the mean of its members' weights, loads and exports like any run,
and runs that did not start from the same weights are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from finetune_fixtures import REPO, make_tree
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_monitor.core.errors import BadInputError, ConfigError
from trainer.checkpoint_embedder import load_checkpoint_embedder
from trainer.cli import main
from trainer.soup import SOUP_FILE, average_state_dicts, check_same_start, make_soup

RECIPE = REPO / "conf" / "train" / "tiny_full.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny runs: two from one start (init_seed 7, seeds 0 and 1), one from another."""
    root = tmp_path_factory.mktemp("soup")
    tree = make_tree(root / "data")
    made = {}
    for name, optim in (
        ("a", "seed: 0, init_seed: 7"),
        ("b", "seed: 1, init_seed: 7"),
        ("other", "seed: 1"),
    ):
        recipe = root / f"{name}.yaml"
        recipe.write_text(RECIPE.read_text().replace("seed: 0", optim))
        out = root / name
        args = ["finetune", "--recipe", str(recipe), "--data", str(tree), "--out", str(out)]
        assert main([*args, "--cache", str(root / "cache"), "--no-progress"]) == 0
        made[name] = out
    return made


def test_runs_from_one_start_share_their_first_weights(runs) -> None:
    """init_seed fixes the new layers' initial draw: after a few steps at a small learning rate
    the two members are far closer to each other than to a run from another start."""
    a, b, other = (torch.load(runs[n] / "model.pt", weights_only=True) for n in ("a", "b", "other"))
    key = next(k for k, v in a["heads"]["head"].items() if v.is_floating_point() and v.ndim == 2)

    def gap(x: dict, y: dict) -> float:
        return float((x["heads"]["head"][key] - y["heads"]["head"][key]).norm())

    assert gap(a, b) < gap(a, other)


def test_soup_is_the_mean_of_its_members_and_evaluates(runs, tmp_path, capsys) -> None:
    out = tmp_path / "soup"
    assert main(["soup", "--run", str(runs["a"]), "--run", str(runs["b"]), "--out", str(out)]) == 0
    assert "soup of 2 runs" in capsys.readouterr().out
    soup = torch.load(out / "model.pt", weights_only=True)
    a = torch.load(runs["a"] / "model.pt", weights_only=True)
    b = torch.load(runs["b"] / "model.pt", weights_only=True)
    for soup_part, a_part, b_part in (
        (soup["backbone"], a["backbone"], b["backbone"]),
        (soup["heads"]["head"], a["heads"]["head"], b["heads"]["head"]),
    ):
        for key, value in soup_part.items():
            if value.is_floating_point():
                torch.testing.assert_close(value, (a_part[key] + b_part[key]) / 2, msg=key)
            else:
                assert torch.equal(value, a_part[key]), key
    members = json.loads((out / SOUP_FILE).read_text())["members"]
    assert members == [str(runs["a"].resolve()), str(runs["b"].resolve())]
    embedder = load_checkpoint_embedder(out)
    vector = embedder.embed(np.random.default_rng(0).standard_normal(8000).astype(np.float32))
    assert vector.shape == (embedder.dim,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_soup_refuses_runs_from_different_starts(runs, tmp_path, capsys) -> None:
    pair = ["--run", str(runs["a"]), "--run", str(runs["other"])]
    args = ["soup", *pair, "--out", str(tmp_path / "s")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert str(runs["other"]) in error and "init_seed" in error
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("members", "fix"),
    [(["a"], "at least two"), (["a", "a"], "given twice")],
)
def test_soup_needs_two_distinct_members(runs, tmp_path, capsys, members, fix) -> None:
    args = ["soup", *[x for m in members for x in ("--run", str(runs[m]))], "--out", str(tmp_path)]
    assert main(args) == 2
    assert fix in capsys.readouterr().err


def test_soup_refuses_a_member_without_its_recipe(runs, tmp_path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.pt", "embedder.json", "classes.json"):
        (bare / name).write_bytes((runs["a"] / name).read_bytes())
    with pytest.raises(ConfigError, match=r"recipe\.yaml does not exist"):
        make_soup([runs["a"], bare], tmp_path / "soup")


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=5),
    counter=st.integers(0, 10_000),
)
def test_average_lies_between_the_members_and_keeps_integer_buffers(values, counter) -> None:
    states = [
        {"w": torch.tensor(row, dtype=torch.float32), "n": torch.tensor(counter + i)}
        for i, row in enumerate(values)
    ]
    mean = average_state_dicts(states)
    stacked = torch.stack([s["w"] for s in states])
    assert mean["w"].dtype == torch.float32
    assert torch.all(mean["w"] >= stacked.min(0).values - 1e-3)
    assert torch.all(mean["w"] <= stacked.max(0).values + 1e-3)
    torch.testing.assert_close(mean["w"], stacked.double().mean(0).float())
    assert int(mean["n"]) == counter
    same = average_state_dicts([states[0]] * 3)
    torch.testing.assert_close(same["w"], states[0]["w"], rtol=0, atol=0)


def _recipe_only_run(root: Path, name: str, backbone: dict, optim: dict) -> Path:
    run_dir = root / name
    run_dir.mkdir()
    text = yaml.safe_dump(
        {"name": name, "strategy": "full", "backbone": backbone, "optim": optim}
    )
    (run_dir / "recipe.yaml").write_text(text)
    return run_dir


def test_same_start_reads_one_checkpoint_file_however_its_path_is_spelled(tmp_path) -> None:
    weights = tmp_path / "w" / "release.pt"
    spelled = str(tmp_path / "w" / "sub" / ".." / "release.pt")
    backbone = {"name": "efficientat", "size": "mn04"}
    a = _recipe_only_run(tmp_path, "a", {**backbone, "checkpoint": str(weights)}, {"seed": 0})
    b = _recipe_only_run(
        tmp_path, "b", {**backbone, "checkpoint": spelled}, {"seed": 1, "init_seed": 0}
    )
    check_same_start([a, b])
    c = _recipe_only_run(
        tmp_path, "c", {**backbone, "checkpoint": str(tmp_path / "other.pt")}, {"seed": 0}
    )
    with pytest.raises(ConfigError, match=r"backbone\.checkpoint"):
        check_same_start([a, c])


def test_soup_refuses_an_existing_out_and_leaves_it_alone(runs, tmp_path, capsys) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "model.pt").write_bytes(b"someone else's run")
    args = ["soup", "--run", str(runs["a"]), "--run", str(runs["b"]), "--out", str(out)]
    assert main(args) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (out / "model.pt").read_bytes() == b"someone else's run"


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["recipe.yaml", "embedder.json", "classes.json", "model.pt"]),
    content=st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64).map(str.encode),
        st.sampled_from([b"{}", b"[]", b"null", b'{"format": 1}', b"name: x\n"]),
    ),
)
def test_a_damaged_member_file_is_named_and_nothing_is_written(
    runs, tmp_path_factory, name, content
) -> None:
    """Whatever one member's file holds, the soup fails with one error naming that file and
    writes nothing, or (if the damage does not matter) writes a soup that loads."""
    root = tmp_path_factory.mktemp("damaged")
    damaged = root / "b"
    damaged.mkdir()
    for file in runs["b"].iterdir():
        if file.is_file():
            (damaged / file.name).write_bytes(file.read_bytes())
    (damaged / name).write_bytes(content)
    out = root / "soup"
    try:
        make_soup([runs["a"], damaged], out)
    except BadInputError as exc:
        assert str(damaged) in str(exc)
        assert not out.exists()
    else:
        load_checkpoint_embedder(out)
