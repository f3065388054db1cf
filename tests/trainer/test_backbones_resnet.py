"""ResNet backbone: shapes, strict checkpoint round trip, clear errors, and gradients that train."""

from __future__ import annotations

import pytest
import torch

from edge_monitor.core.errors import ConfigError
from trainer.backbones import build_backbone
from trainer.backbones.resnet import ResNetBackbone, save_resnet
from trainer.errors import CheckpointError


def _wave(batch: int = 2, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(16000 * seconds), generator=generator)


def test_tiny_resnet_gives_frame_features() -> None:
    model = build_backbone("resnet", "tiny").eval()
    assert isinstance(model, ResNetBackbone)
    features = model(_wave())
    frames = 1 + (16000 - 256) // 160
    assert features.shape == (2, (frames + 1) // 2, 64)
    assert model.dim == 64 and model.sample_rate_hz == 16000
    assert model.attention_module_names() == []


def test_checkpoint_round_trip_is_exact(tmp_path) -> None:
    torch.manual_seed(1)
    model = build_backbone("resnet", "tiny").eval()
    path = tmp_path / "resnet.pt"
    save_resnet(model, path)
    loaded = build_backbone("resnet", "base", path).eval()  # the cfg in the file wins
    wave = _wave()
    torch.testing.assert_close(loaded(wave), model(wave), rtol=0, atol=0)


@pytest.mark.parametrize("damage", ["extra", "missing", "shape"])
def test_mismatched_weights_name_keys_and_file(tmp_path, damage: str) -> None:
    model = build_backbone("resnet", "tiny")
    state = model.state_dict()
    if damage == "extra":
        state["head.weight"] = torch.zeros(3)
        expected = "head.weight"
    elif damage == "missing":
        del state["projection.bias"]
        expected = "projection.bias"
    else:
        state["projection.weight"] = torch.zeros(5, 5)
        expected = "projection.weight: checkpoint (5, 5)"
    path = tmp_path / "bad.pt"
    torch.save({"cfg": model.config.model_dump(mode="json"), "model": state}, path)
    with pytest.raises(CheckpointError) as error:
        build_backbone("resnet", "tiny", path)
    assert expected in str(error.value) and str(path) in str(error.value)
    assert error.value.exit_code == 2


def test_unknown_cfg_key_and_wrong_file_are_rejected(tmp_path) -> None:
    model = build_backbone("resnet", "tiny")
    path = tmp_path / "cfg.pt"
    cfg = {**model.config.model_dump(mode="json"), "n_layers": 3}
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="n_layers"):
        build_backbone("resnet", "tiny", path)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.txt"):
        build_backbone("resnet", "tiny", text)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_backbone("resnet", "tiny", tmp_path / "absent.pt")


def test_unknown_name_and_size_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("vgg", "tiny")
    with pytest.raises(ConfigError, match="huge"):
        build_backbone("resnet", "huge")
    with pytest.raises(ConfigError, match="depth"):
        build_backbone("resnet", {"depth": 3})
    with pytest.raises(ConfigError, match="divide"):
        build_backbone("beats", {"input_patch_size": 12})
    wide = build_backbone("resnet", {"channels": (8,), "n_mels": 16, "dim": 8})
    assert wide.dim == 8 and wide.config.n_fft == 1024  # the rest comes from "base"


def test_a_few_optimizer_steps_reduce_a_simple_loss() -> None:
    torch.manual_seed(0)
    model = build_backbone("resnet", "tiny").train()
    wave = _wave(batch=4, seconds=0.5, seed=3)
    target = torch.randn(4, model.dim, generator=torch.Generator().manual_seed(4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.mse_loss(model(wave).mean(dim=1), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_long_key_lists_are_cut_to_ten_with_a_count(tmp_path) -> None:
    model = build_backbone("resnet", "tiny")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    path = tmp_path / "gutted.pt"
    torch.save({"cfg": model.config.model_dump(mode="json"), "model": state}, path)
    with pytest.raises(CheckpointError) as error:
        build_backbone("resnet", "tiny", path)
    missing = len(model.state_dict()) - len(state)
    assert f"{missing} missing key(s)" in str(error.value)
    assert f"({missing - 10} more)" in str(error.value)
