"""BEATs (Chen et al. 2022): 16x16 patches of a 128-bin Kaldi fbank into a deep-norm transformer.

Parameter names and shapes follow the official checkpoint `{"cfg": {...}, "model": state_dict}`
(microsoft/unilm beats), so its files load strictly. Attention uses a bucketed relative
position bias shared by all layers, gated per head from the query (gru_rel_pos).
Frames: patch tokens averaged over the 8 frequency patches, one frame per 16 fbank frames (160 ms).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.backbones.base import Backbone, BackboneConfig, config_for_size, parse_config
from trainer.backbones.checkpoint import as_state_dict, load_strict, read_torch_file
from trainer.backbones.layers import (
    ActivationName,
    WeightNormConv1d,
    activation,
    layer_dropped,
    scale_gradient,
)
from trainer.errors import CheckpointError
from trainer.frontend import beats_fbank

FBANK_BINS = 128
HEAD_PREFIXES = ("predictor.",)
"""Keys of the AudioSet classifier in fine-tuned checkpoints, ignored on purpose."""


class BEATsConfig(BackboneConfig):
    """The official BEATsConfig fields and defaults; a checkpoint's `cfg` overrides them."""

    input_patch_size: int = Field(-1, description="patch size of the patch embedding")
    embed_dim: int = Field(512, gt=0, description="patch embedding dimension")
    conv_bias: bool = False
    encoder_layers: int = Field(12, ge=1)
    encoder_embed_dim: int = Field(768, gt=0)
    encoder_ffn_embed_dim: int = Field(3072, gt=0)
    encoder_attention_heads: int = Field(12, gt=0)
    activation_fn: ActivationName = "gelu"
    layer_wise_gradient_decay_ratio: float = Field(1.0, gt=0.0, le=1.0)
    layer_norm_first: bool = False
    deep_norm: bool = False
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    activation_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    encoder_layerdrop: float = Field(0.0, ge=0.0, lt=1.0)
    dropout_input: float = Field(0.0, ge=0.0, lt=1.0)
    conv_pos: int = Field(128, gt=0)
    conv_pos_groups: int = Field(16, gt=0)
    relative_position_embedding: bool = False
    num_buckets: int = Field(320, gt=0)
    max_distance: int = Field(1280, gt=0)
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    predictor_class: int = Field(527, gt=0)


_ITER3 = {
    "input_patch_size": 16, "encoder_layers": 12, "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "dropout": 0.0,
    "attention_dropout": 0.0, "relative_position_embedding": True, "max_distance": 800,
    "gru_rel_pos": True, "deep_norm": True, "layer_wise_gradient_decay_ratio": 0.6,
}  # fmt: skip
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        **_ITER3, "embed_dim": 32, "encoder_layers": 2, "encoder_embed_dim": 64,
        "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4, "conv_pos": 16,
        "conv_pos_groups": 4, "num_buckets": 32, "max_distance": 64,
    },
    "base": _ITER3,
}  # fmt: skip


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> Tensor:
    """Bucket of (key - query) for every pair: exact when near, log-spaced when far, per sign."""
    offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    half = num_buckets // 2
    buckets = (offsets > 0).long() * half
    distance = offsets.abs()
    exact = half // 2
    far = exact + (
        torch.log(distance.float().clamp(min=1) / exact)
        / math.log(max_distance / exact)
        * (half - exact)
    ).long()
    far = far.clamp(max=half - 1)
    return buckets + torch.where(distance < exact, distance, far)


class BEATsAttention(nn.Module):
    """Multi-head self-attention plus BEATs' gated relative position bias."""

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        dim, heads = config.encoder_embed_dim, config.encoder_attention_heads
        if dim % heads:
            raise ValueError(f"encoder_embed_dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(config.attention_dropout)
        self.gru_rel_pos = config.gru_rel_pos
        if config.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, position_bias: Tensor | None) -> Tensor:
        """x [B, T, D]; position_bias [heads, T, T] or None."""
        query = self._split(self.q_proj(x))
        key = self._split(self.k_proj(x))
        value = self._split(self.v_proj(x))
        scores = (query * self.head_dim**-0.5) @ key.transpose(-1, -2)
        if position_bias is not None:
            bias = position_bias.unsqueeze(0)
            if self.gru_rel_pos:
                batch, heads, length, _ = query.shape
                gates = self.grep_linear(query).view(batch, heads, length, 2, 4).sum(-1)
                gate_a, gate_b = torch.sigmoid(gates).chunk(2, dim=-1)
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
            scores = scores + bias
        weights = self.dropout(torch.softmax(scores, dim=-1))
        out = (weights @ value).transpose(1, 2).flatten(2)
        return self.out_proj(out)


class BEATsLayer(nn.Module):
    """One encoder layer: post-norm (with deep-norm residual scaling) or pre-norm."""

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.self_attn = BEATsAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = activation(config.activation_fn)
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.layer_norm_first = config.layer_norm_first
        self.residual_scale = (2.0 * config.encoder_layers) ** 0.25 if config.deep_norm else 1.0

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.activation_dropout(self.activation(self.fc1(x)))))

    def forward(self, x: Tensor, position_bias: Tensor | None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), position_bias))
            return x + self._feed_forward(self.final_layer_norm(x))
        x = x * self.residual_scale + self.dropout(self.self_attn(x, position_bias))
        x = self.self_attn_layer_norm(x)
        return self.final_layer_norm(x * self.residual_scale + self._feed_forward(x))


class SharedBucketBias(nn.Module):
    """Holds the one relative-position embedding; every layer's attention refers to it."""

    def __init__(self, num_buckets: int, heads: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_buckets, heads))
        nn.init.xavier_normal_(self.weight)


class BEATsEncoder(nn.Module):
    """Convolutional positional embedding, layer norm and the stack of BEATs layers."""

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(dim, config.conv_pos, config.conv_pos_groups)
        )
        self.layers = nn.ModuleList(BEATsLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.config = config
        if config.relative_position_embedding:
            shared = SharedBucketBias(config.num_buckets, config.encoder_attention_heads)
            for layer in self.layers:
                layer.self_attn.relative_attention_bias = shared  # one tensor, stored per layer

    def _position_bias(self, length: int) -> Tensor | None:
        if not self.config.relative_position_embedding:
            return None
        buckets = relative_position_buckets(
            length, self.config.num_buckets, self.config.max_distance
        ).to(self.layers[0].self_attn.relative_attention_bias.weight.device)
        table = self.layers[0].self_attn.relative_attention_bias.weight
        return table[buckets].permute(2, 0, 1)  # [heads, T, T]

    def forward(self, x: Tensor) -> Tensor:
        x = x + F.gelu(self.pos_conv(x.transpose(1, 2))).transpose(1, 2)
        if not self.config.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, self.config.dropout, self.training)
        position_bias = self._position_bias(x.shape[1])
        ratio = self.config.layer_wise_gradient_decay_ratio
        for layer in self.layers:
            if ratio != 1.0 and self.training:
                x = scale_gradient(x, ratio)
            if not layer_dropped(self.config.encoder_layerdrop, self.training):
                x = layer(x, position_bias)
        return self.layer_norm(x) if self.config.layer_norm_first else x


class BEATsBackbone(Backbone):
    """Waveform -> BEATs fbank -> patch embedding -> transformer -> [B, T/16 frames, dim]."""

    attention_suffixes = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.out_proj")  # fmt: skip

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        if config.input_patch_size <= 0 or FBANK_BINS % config.input_patch_size:
            raise ValueError(
                f"input_patch_size {config.input_patch_size} must be positive and divide "
                f"{FBANK_BINS} fbank bins"
            )
        self.config = config
        self.dim = config.encoder_embed_dim
        self.frontend = beats_fbank()
        patch = config.input_patch_size
        self.patch_embedding = nn.Conv2d(
            1, config.embed_dim, patch, stride=patch, bias=config.conv_bias
        )
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        if config.embed_dim != config.encoder_embed_dim:
            self.post_extract_proj = nn.Linear(config.embed_dim, config.encoder_embed_dim)
        self.dropout_input = nn.Dropout(config.dropout_input)
        self.encoder = BEATsEncoder(config)

    def forward(self, wave: Tensor) -> Tensor:
        fbank = self.frontend(wave)  # [B, frames, 128]
        patches = self.patch_embedding(fbank.unsqueeze(1))  # [B, C, T', F']
        batch, _, time_patches, freq_patches = patches.shape
        x = self.layer_norm(patches.flatten(2).transpose(1, 2))
        if self.config.embed_dim != self.config.encoder_embed_dim:
            x = self.post_extract_proj(x)
        x = self.encoder(self.dropout_input(x))
        return x.view(batch, time_patches, freq_patches, self.dim).mean(dim=2)


def build(size: str | Mapping[str, Any], checkpoint: Path | None) -> BEATsBackbone:
    """A BEATs of `size`, or the model an official BEATs .pt checkpoint describes."""
    if checkpoint is None:
        return BEATsBackbone(config_for_size(BEATsConfig, PRESETS, size))
    content = read_torch_file(checkpoint)
    if not isinstance(content, Mapping) or "cfg" not in content or "model" not in content:
        found = sorted(map(str, content)) if isinstance(content, Mapping) else type(content)
        raise CheckpointError(
            f"{checkpoint}: a BEATs checkpoint is a dict with 'cfg' and 'model', found {found}. "
            "Fix: pass an official BEATs .pt file (e.g. BEATs_iter3_plus_AS2M.pt)"
        )
    config = parse_config(BEATsConfig, content["cfg"], f"{checkpoint} cfg", CheckpointError)
    try:
        model = BEATsBackbone(config)
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint} cfg: {exc}") from exc
    load_strict(
        model,
        as_state_dict(content["model"], checkpoint, "'model'"),
        checkpoint,
        fix="pass an official BEATs checkpoint whose cfg matches its weights",
        ignored_prefixes=HEAD_PREFIXES,
    )
    return model
