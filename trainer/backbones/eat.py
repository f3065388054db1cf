"""EAT (Chen et al. 2024) and SSLAM: a data2vec-2.0 ViT on 16x16 patches of a 128-bin fbank.

Checkpoints are Hugging Face directories, `config.json` + `model.safetensors`, with the key
names of the EAT port (`model.local_encoder.proj`, `model.blocks.N.attn.qkv`, ...). SSLAM ships
the same architecture and format. The fbank is padded to a whole number of patches with
zeros (before normalisation), as EAT's own feature extraction does.
Frames: patch tokens (CLS dropped) averaged over frequency patches, one per 160 ms.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.backbones.base import Backbone, BackboneConfig, config_for_size, parse_config
from trainer.backbones.checkpoint import load_strict, read_json, read_safetensors
from trainer.backbones.layers import drop_path
from trainer.errors import CheckpointError
from trainer.frontend import eat_fbank

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HF_BOOKKEEPING_KEYS = frozenset(
    {"architectures", "auto_map", "model_type", "torch_dtype", "dtype",
     "transformers_version", "_name_or_path"}
)  # fmt: skip
"""Keys every Hugging Face config.json carries that say nothing about the architecture."""
HEAD_PREFIXES = ("model.fc_norm.", "model.head.")
"""The classifier of fine-tuned checkpoints (model_variant "finetune"), ignored on purpose."""


class EATConfig(BackboneConfig):
    """The fields of the EAT Hugging Face config (EATConfig), with its defaults."""

    embed_dim: int = Field(768, gt=0)
    depth: int = Field(12, ge=1)
    num_heads: int = Field(12, gt=0)
    patch_size: int = Field(16, gt=0)
    stride: int = Field(16, gt=0, description="patch stride; must equal patch_size")
    in_chans: Literal[1] = 1
    mel_bins: int = Field(128, gt=0)
    max_length: int = Field(768, gt=0, description="time patches the position table covers")
    num_classes: int = Field(527, gt=0, description="classes of the (ignored) fine-tuned head")
    model_variant: Literal["pretrain", "finetune"] = "pretrain"
    mlp_ratio: float = Field(4.0, gt=0.0)
    qkv_bias: bool = True
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    attn_drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    activation_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    post_mlp_drop: float = Field(0.0, ge=0.0, lt=1.0)
    start_drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    end_drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    layer_norm_first: Literal[False] = Field(
        False, description="EAT/SSLAM blocks are post-norm; pre-norm checkpoints do not exist"
    )
    norm_eps: float = Field(1e-6, gt=0.0)
    norm_affine: bool = True
    fixed_positions: bool = True
    img_size: tuple[int, int] = Field(
        (1024, 128), description="(target frames, mel bins) of pretraining; informational"
    )


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 64, "depth": 2, "num_heads": 4, "max_length": 64},
    "base": {},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


def sincos_positions(dim: int, rows: int, cols: int) -> np.ndarray:
    """Fixed 2-D sine-cosine table, (rows * cols, dim), row-major: first half encodes the column."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    row, col = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")

    def encode(position: np.ndarray) -> np.ndarray:
        angle = position.reshape(-1, 1) * omega[None, :]
        return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)

    return np.concatenate([encode(col), encode(row)], axis=1)


class PatchEmbedding(nn.Module):
    """Non-overlapping patch projection; named `proj` as in the checkpoints."""

    def __init__(self, config: EATConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            config.in_chans, config.embed_dim, config.patch_size, stride=config.stride
        )


class FixedPositions(nn.Module):
    """The frozen sine-cosine table, stored in the checkpoint as `positions`."""

    def __init__(self, config: EATConfig) -> None:
        super().__init__()
        table = sincos_positions(
            config.embed_dim, config.max_length, config.mel_bins // config.patch_size
        )
        self.positions = nn.Parameter(
            torch.from_numpy(table).float().unsqueeze(0), requires_grad=False
        )


class Attention(nn.Module):
    """Self-attention with one fused q/k/v projection (`qkv`) and an output `proj`."""

    def __init__(self, config: EATConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.heads = config.num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = config.attn_drop_rate
        self.proj_drop = nn.Dropout(config.drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        dropout = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, length, dim)))


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, config: EATConfig) -> None:
        super().__init__()
        hidden = int(config.embed_dim * config.mlp_ratio)
        self.fc1 = nn.Linear(config.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, config.embed_dim)
        self.drop = nn.Dropout(config.activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Post-norm transformer block with stochastic depth."""

    def __init__(self, config: EATConfig, drop_path_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, config.norm_eps, config.norm_affine)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, config.norm_eps, config.norm_affine)
        self.mlp = Mlp(config)
        self.post_mlp_dropout = nn.Dropout(config.post_mlp_drop)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + drop_path(self.attn(x), self.drop_path_rate, self.training))
        branch = self.post_mlp_dropout(self.mlp(x))
        return self.norm2(x + drop_path(branch, self.drop_path_rate, self.training))


class EATEncoder(nn.Module):
    """Patch embedding, positions, CLS token, pre-norm and the block stack: [B, 1 + N, D]."""

    def __init__(self, config: EATConfig) -> None:
        super().__init__()
        self.local_encoder = PatchEmbedding(config)
        self.extra_tokens = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        nn.init.trunc_normal_(self.extra_tokens, std=0.02)
        if config.fixed_positions:
            self.fixed_positional_encoder = FixedPositions(config)
        rates = np.linspace(config.start_drop_path_rate, config.end_drop_path_rate, config.depth)
        self.blocks = nn.ModuleList(Block(config, float(rate)) for rate in rates)
        self.pre_norm = nn.LayerNorm(config.embed_dim, config.norm_eps, config.norm_affine)
        self.pos_drop = nn.Dropout(config.drop_rate)
        self.config = config

    def forward(self, fbank: Tensor) -> Tensor:
        x = self.local_encoder.proj(fbank.unsqueeze(1)).flatten(2).transpose(1, 2)
        if self.config.fixed_positions:
            table = self.fixed_positional_encoder.positions
            if x.shape[1] > table.shape[1]:
                seconds = self.config.max_length * self.config.patch_size / 100.0
                raise ValueError(
                    f"clip gives {x.shape[1]} patches, more than the {table.shape[1]} the "
                    f"position table covers (about {seconds:.0f} s); pass shorter clips"
                )
            x = x + table[:, : x.shape[1]]
        x = torch.cat([self.extra_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(self.pre_norm(x))
        for block in self.blocks:
            x = block(x)
        return x


class EATBackbone(Backbone):
    """Waveform -> EAT fbank -> ViT -> [B, frames / 16, dim]; serves EAT and SSLAM."""

    attention_suffixes = ("attn.qkv", "attn.proj")

    def __init__(self, config: EATConfig) -> None:
        super().__init__()
        if config.stride != config.patch_size or config.mel_bins % config.patch_size:
            raise ValueError(
                f"stride {config.stride} must equal patch_size {config.patch_size}, "
                f"which must divide mel_bins {config.mel_bins}"
            )
        if config.embed_dim % config.num_heads or config.embed_dim % 4:
            raise ValueError(
                f"embed_dim {config.embed_dim} must be divisible by num_heads "
                f"{config.num_heads} and by 4 (for the sine-cosine positions)"
            )
        self.config = config
        self.dim = config.embed_dim
        self.frontend = eat_fbank()
        self.model = EATEncoder(config)

    def forward(self, wave: Tensor) -> Tensor:
        fbank = self.frontend(wave)
        patch = self.config.patch_size
        missing = -fbank.shape[1] % patch
        if missing:
            padding_value = -self.frontend.mean / (2.0 * self.frontend.std)  # an all-zero fbank
            fbank = F.pad(fbank, (0, 0, 0, missing), value=padding_value)
        tokens = self.model(fbank)[:, 1:]
        batch, count, dim = tokens.shape
        freq_patches = self.config.mel_bins // patch
        return tokens.view(batch, count // freq_patches, freq_patches, dim).mean(dim=2)


def load_directory(directory: Path, family: str) -> EATBackbone:
    """Rebuild and strictly load an EAT-architecture model (`family` names it in errors)."""
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: a {family} checkpoint is a directory with {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}; pass that directory"
        )
    config_path = directory / CONFIG_FILE
    values = {k: v for k, v in read_json(config_path).items() if k not in HF_BOOKKEEPING_KEYS}
    config = parse_config(EATConfig, values, str(config_path), CheckpointError)
    try:
        model = EATBackbone(config)
    except ValueError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from exc
    weights = directory / WEIGHTS_FILE
    load_strict(
        model,
        read_safetensors(weights),
        weights,
        fix=f"pass the {family} directory whose {CONFIG_FILE} matches its {WEIGHTS_FILE}",
        ignored_prefixes=HEAD_PREFIXES,
    )
    return model


def build(size: str | Mapping[str, Any], checkpoint: Path | None) -> EATBackbone:
    """An EAT of `size`, or the model in a Hugging Face EAT directory."""
    if checkpoint is None:
        return EATBackbone(config_for_size(EATConfig, PRESETS, size))
    return load_directory(checkpoint, "EAT")


def build_sslam(size: str | Mapping[str, Any], checkpoint: Path | None) -> EATBackbone:
    """An SSLAM model: EAT's architecture and checkpoint format under another name."""
    if checkpoint is None:
        return EATBackbone(config_for_size(EATConfig, PRESETS, size))
    return load_directory(checkpoint, "SSLAM")
