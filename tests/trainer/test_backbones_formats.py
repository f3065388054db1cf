"""Every transformer backbone round-trips through its official checkpoint format, strictly.

Checkpoints are written here in the official layouts (BEATs `{cfg, model}` .pt, EAT/SSLAM
Hugging Face directories, HuBERT torchaudio and Hugging Face state dicts), read back with
`build_backbone`, and must give identical outputs; damaged ones must raise CheckpointError
naming the file and the keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from trainer.backbones import build_backbone
from trainer.backbones.base import Backbone
from trainer.backbones.hubert import PRESETS
from trainer.errors import CheckpointError

Writer = Callable[[dict[str, Any], dict[str, torch.Tensor], Path], Path]


def _write_beats(cfg: dict[str, Any], state: dict[str, torch.Tensor], where: Path) -> Path:
    path = where / "BEATs_tiny.pt"
    torch.save({"cfg": cfg, "model": state}, path)
    return path


def _write_eat(cfg: dict[str, Any], state: dict[str, torch.Tensor], where: Path) -> Path:
    directory = where / "eat_tiny"
    directory.mkdir()
    hf = {"architectures": ["EATModel"], "model_type": "eat", "transformers_version": "4.51.3"}
    (directory / "config.json").write_text(json.dumps({**hf, **cfg}))
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    return directory


def _write_hubert_torchaudio(
    cfg: dict[str, Any], state: dict[str, torch.Tensor], where: Path
) -> Path:
    path = where / "hubert_tiny.pth"
    torch.save(state, path)
    return path


def _to_hugging_face_key(key: str) -> str:
    key = key.replace("encoder.feature_projection.", "feature_projection.")
    key = key.replace("encoder.transformer.", "encoder.")
    key = key.replace("conv.weight_g", "conv.parametrizations.weight.original0")
    return key.replace("conv.weight_v", "conv.parametrizations.weight.original1")


def _hugging_face_hubert_config(cfg: dict[str, Any]) -> dict[str, Any]:
    conv = cfg["extractor_conv_layer_config"]
    return {
        "architectures": ["HubertModel"], "model_type": "hubert", "vocab_size": 32,
        "mask_time_prob": 0.05, "hidden_act": "gelu", "feat_proj_layer_norm": True,
        "feat_extract_norm": "group" if cfg["extractor_mode"] == "group_norm" else "layer",
        "conv_dim": [c[0] for c in conv], "conv_kernel": [c[1] for c in conv],
        "conv_stride": [c[2] for c in conv], "conv_bias": cfg["extractor_conv_bias"],
        "hidden_size": cfg["encoder_embed_dim"],
        "num_conv_pos_embeddings": cfg["encoder_pos_conv_kernel"],
        "num_conv_pos_embedding_groups": cfg["encoder_pos_conv_groups"],
        "num_hidden_layers": cfg["encoder_num_layers"],
        "num_attention_heads": cfg["encoder_num_heads"],
        "intermediate_size": cfg["encoder_ff_interm_features"],
        "do_stable_layer_norm": cfg["encoder_layer_norm_first"],
    }  # fmt: skip


def _write_hubert_hugging_face(
    cfg: dict[str, Any], state: dict[str, torch.Tensor], where: Path
) -> Path:
    directory = where / "hubert_hf"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(_hugging_face_hubert_config(cfg)))
    hf_state = {_to_hugging_face_key(k): v.contiguous() for k, v in state.items()}
    hf_state["masked_spec_embed"] = torch.rand(cfg["encoder_embed_dim"])  # ignored on purpose
    save_file(hf_state, directory / "model.safetensors")
    return directory


FORMATS: dict[str, tuple[str, Writer]] = {
    "beats": ("beats", _write_beats),
    "eat": ("eat", _write_eat),
    "sslam": ("sslam", _write_eat),
    "hubert-torchaudio": ("hubert", _write_hubert_torchaudio),
    "hubert-hf": ("hubert", _write_hubert_hugging_face),
}


def _tiny(name: str) -> tuple[Backbone, dict[str, Any], dict[str, torch.Tensor]]:
    torch.manual_seed(7)
    model = build_backbone(name, "tiny").eval()
    with torch.no_grad():  # move every weight off its init so a missed load would show
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return model, model.config.model_dump(mode="json"), dict(model.state_dict())


def _wave() -> torch.Tensor:
    return 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_official_format_round_trip_is_exact(tmp_path: Path, fmt: str) -> None:
    name, write = FORMATS[fmt]
    model, cfg, state = _tiny(name)
    checkpoint = write(cfg, state, tmp_path)
    loaded = build_backbone(name, "tiny", checkpoint).eval()
    wave = _wave()
    with torch.no_grad():
        expected, actual = model(wave), loaded(wave)
    assert actual.shape[0] == 2 and actual.shape[2] == model.dim == 64
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert len(loaded.attention_module_names()) == 8 if name in ("beats", "hubert") else 4


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("damage", ["extra", "missing", "shape"])
def test_damaged_checkpoint_names_keys_and_file(tmp_path: Path, fmt: str, damage: str) -> None:
    name, write = FORMATS[fmt]
    _, cfg, state = _tiny(name)
    victim = sorted(k for k in state if k.endswith("fc2.weight") or k.endswith("dense.weight"))[0]
    if damage == "extra":
        state["stray.block.weight"] = torch.zeros(2)
        expected = "stray.block.weight"
    elif damage == "missing":
        del state[victim]
        expected = "1 missing key(s)"
    else:
        state[victim] = torch.zeros(3, 3)
        expected = "checkpoint (3, 3)"
    checkpoint = write(cfg, state, tmp_path)
    with pytest.raises(CheckpointError) as error:
        build_backbone(name, "tiny", checkpoint)
    message = str(error.value)
    assert expected in message and str(tmp_path) in message
    assert error.value.exit_code == 2


@pytest.mark.parametrize("fmt", ["beats", "eat"])
def test_unknown_config_key_is_rejected(tmp_path: Path, fmt: str) -> None:
    name, write = FORMATS[fmt]
    _, cfg, state = _tiny(name)
    checkpoint = write({**cfg, "use_flash_magic": True}, state, tmp_path)
    with pytest.raises(CheckpointError, match="use_flash_magic"):
        build_backbone(name, "tiny", checkpoint)


def test_wrong_file_types_are_rejected(tmp_path: Path) -> None:
    text = tmp_path / "weights.pt"
    text.write_text("definitely not a pickle")
    with pytest.raises(CheckpointError, match=r"weights\.pt"):
        build_backbone("beats", "tiny", text)
    with pytest.raises(CheckpointError, match="directory"):
        build_backbone("eat", "tiny", text)
    folder = tmp_path / "eat_dir"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        build_backbone("sslam", "tiny", folder)
    torch.save({"weights": torch.zeros(1)}, text)
    with pytest.raises(CheckpointError, match="'cfg' and 'model'"):
        build_backbone("beats", "tiny", text)


def test_hubert_state_dict_of_another_size_is_caught(tmp_path: Path) -> None:
    _, cfg, state = _tiny("hubert")
    path = _write_hubert_torchaudio(cfg, state, tmp_path)
    wider = {**PRESETS["tiny"], "encoder_ff_interm_features": 96}
    with pytest.raises(CheckpointError, match=r"intermediate_dense\.weight: checkpoint"):
        build_backbone("hubert", wider, path)


def test_head_keys_are_ignored_only_when_allow_listed(tmp_path: Path) -> None:
    model, cfg, state = _tiny("beats")
    head = {"predictor.weight": torch.zeros(5, 64), "predictor.bias": torch.zeros(5)}
    finetuned = {**cfg, "finetuned_model": True, "predictor_class": 5}
    path = _write_beats(finetuned, state | head, tmp_path)
    loaded = build_backbone("beats", "tiny", path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_wave()), model(_wave()), rtol=0, atol=0)

    hf_model, _, hf_state = _tiny("hubert")
    wrapped = {f"hubert.{k}": v for k, v in hf_state.items()}
    wrapped["lm_head.weight"] = torch.zeros(4, 64)
    path = tmp_path / "hubert_ctc.pt"
    torch.save(wrapped, path)
    loaded = build_backbone("hubert", "tiny", path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_wave()), hf_model(_wave()), rtol=0, atol=0)
