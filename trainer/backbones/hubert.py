"""HuBERT (Hsu et al. 2021): a convolutional waveform encoder and a transformer, 20 ms frames.

Module names follow torchaudio's Wav2Vec2Model (`feature_extractor.conv_layers.N`,
`encoder.feature_projection`, `encoder.transformer.layers.N`), so its state dicts load as they
are; Hugging Face state dicts (`feature_projection`, `encoder.layers.N`) are renamed on load.
A Hugging Face directory (config.json + model.safetensors) carries its config; a bare state
dict does not, so the `size` preset (or mapping) describes it and strict loading checks it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.backbones.base import Backbone, BackboneConfig, config_for_size, parse_config
from trainer.backbones.checkpoint import (
    as_state_dict,
    load_strict,
    read_json,
    read_safetensors,
    read_torch_file,
)
from trainer.backbones.layers import WeightNormConv1d, layer_dropped
from trainer.errors import CheckpointError

ConvSpec = tuple[int, int, int]
BASE_CONV_LAYERS: tuple[ConvSpec, ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
HEAD_PREFIXES = (
    "masked_spec_embed", "lm_head.", "final_proj.", "label_embs_concat",
    "mask_generator.", "logit_generator.", "aux.",
)  # fmt: skip
"""Pretraining and task heads (HF, torchaudio, fairseq-converted) ignored on purpose."""


class HuBERTConfig(BackboneConfig):
    """Architecture of a HuBERT encoder (the arguments of torchaudio's wav2vec2_model)."""

    extractor_mode: Literal["group_norm", "layer_norm"] = "group_norm"
    extractor_conv_layer_config: tuple[ConvSpec, ...] = Field(BASE_CONV_LAYERS, min_length=1)
    extractor_conv_bias: bool = False
    encoder_embed_dim: int = Field(768, gt=0)
    encoder_projection_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    encoder_pos_conv_kernel: int = Field(128, gt=0)
    encoder_pos_conv_groups: int = Field(16, gt=0)
    encoder_num_layers: int = Field(12, ge=1)
    encoder_num_heads: int = Field(12, gt=0)
    encoder_attention_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    encoder_ff_interm_features: int = Field(3072, gt=0)
    encoder_ff_interm_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    encoder_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    encoder_layer_norm_first: bool = False
    encoder_layer_drop: float = Field(0.05, ge=0.0, lt=1.0)
    layer_norm_eps: float = Field(1e-5, gt=0.0)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "extractor_conv_layer_config": ((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
        "encoder_embed_dim": 64, "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4,
        "encoder_num_layers": 2, "encoder_num_heads": 4, "encoder_ff_interm_features": 128,
    },
    "base": {},
    "large": {
        "extractor_mode": "layer_norm", "encoder_embed_dim": 1024, "encoder_num_layers": 24,
        "encoder_num_heads": 16, "encoder_ff_interm_features": 4096,
        "encoder_layer_norm_first": True,
    },
}  # fmt: skip


class ConvLayer(nn.Module):
    """conv -> optional norm over channels -> GELU."""

    def __init__(self, in_channels: int, spec: ConvSpec, norm: nn.Module | None, bias: bool):
        super().__init__()
        channels, kernel, stride = spec
        self.conv = nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=bias)
        self.layer_norm = norm

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if isinstance(self.layer_norm, nn.LayerNorm):
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.layer_norm is not None:
            x = self.layer_norm(x)
        return F.gelu(x)


class FeatureExtractor(nn.Module):
    """Strided 1-D convolutions from waveform [B, T] to features [B, frames, channels]."""

    def __init__(self, config: HuBERTConfig) -> None:
        super().__init__()
        layers = []
        in_channels = 1
        for index, spec in enumerate(config.extractor_conv_layer_config):
            norm: nn.Module | None = None
            if config.extractor_mode == "layer_norm":
                norm = nn.LayerNorm(spec[0])
            elif index == 0:
                norm = nn.GroupNorm(spec[0], spec[0])
            layers.append(ConvLayer(in_channels, spec, norm, config.extractor_conv_bias))
            in_channels = spec[0]
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, wave: Tensor) -> Tensor:
        x = wave.unsqueeze(1)
        for layer in self.conv_layers:
            x = layer(x)
        return x.transpose(1, 2)


class FeatureProjection(nn.Module):
    """Layer norm and projection from conv channels to the transformer width."""

    def __init__(self, config: HuBERTConfig) -> None:
        super().__init__()
        channels = config.extractor_conv_layer_config[-1][0]
        self.layer_norm = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.projection = nn.Linear(channels, config.encoder_embed_dim)
        self.dropout = nn.Dropout(config.encoder_projection_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.projection(self.layer_norm(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections."""

    def __init__(self, config: HuBERTConfig) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.heads = config.encoder_num_heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = config.encoder_attention_dropout

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape

        def heads(y: Tensor) -> Tensor:
            return y.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)),
            dropout_p=self.dropout if self.training else 0.0,
        )  # fmt: skip
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class FeedForward(nn.Module):
    """intermediate_dense -> GELU -> dropout -> output_dense -> dropout."""

    def __init__(self, config: HuBERTConfig) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(
            config.encoder_embed_dim, config.encoder_ff_interm_features
        )
        self.output_dense = nn.Linear(config.encoder_ff_interm_features, config.encoder_embed_dim)
        self.intermediate_dropout = nn.Dropout(config.encoder_ff_interm_dropout)
        self.output_dropout = nn.Dropout(config.encoder_dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """Attention and feed-forward with post-norm (base) or pre-norm (large) residuals."""

    def __init__(self, config: HuBERTConfig) -> None:
        super().__init__()
        dim, eps = config.encoder_embed_dim, config.layer_norm_eps
        self.attention = SelfAttention(config)
        self.dropout = nn.Dropout(config.encoder_dropout)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.layer_norm_first = config.encoder_layer_norm_first

    def forward(self, x: Tensor) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.attention(self.layer_norm(x)))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.dropout(self.attention(x)))
        return self.final_layer_norm(x + self.feed_forward(x))


class PositionalConv(nn.Module):
    """Weight-normalised grouped convolution over time, added to the input (then GELU)."""

    def __init__(self, config: HuBERTConfig) -> None:
        super().__init__()
        self.conv = WeightNormConv1d(
            config.encoder_embed_dim, config.encoder_pos_conv_kernel, config.encoder_pos_conv_groups
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)


class Transformer(nn.Module):
    """Positional convolution, layer norm (before or after the stack) and the layers."""

    def __init__(self, config: HuBERTConfig) -> None:
        super().__init__()
        self.pos_conv_embed = PositionalConv(config)
        self.layer_norm = nn.LayerNorm(config.encoder_embed_dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.encoder_dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_num_layers))
        self.layer_norm_first = config.encoder_layer_norm_first
        self.layer_drop = config.encoder_layer_drop

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_conv_embed(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        for layer in self.layers:
            if not layer_dropped(self.layer_drop, self.training):
                x = layer(x)
        return self.layer_norm(x) if self.layer_norm_first else x


class Encoder(nn.Module):
    """Feature projection followed by the transformer."""

    def __init__(self, config: HuBERTConfig) -> None:
        super().__init__()
        self.feature_projection = FeatureProjection(config)
        self.transformer = Transformer(config)

    def forward(self, features: Tensor) -> Tensor:
        return self.transformer(self.feature_projection(features))


class HuBERTBackbone(Backbone):
    """Waveform [B, T] -> conv features -> transformer -> [B, T / 320 frames, dim]."""

    attention_suffixes = ("attention.q_proj", "attention.k_proj", "attention.v_proj",
                          "attention.out_proj")  # fmt: skip

    def __init__(self, config: HuBERTConfig) -> None:
        super().__init__()
        if config.encoder_embed_dim % config.encoder_num_heads:
            raise ValueError(
                f"encoder_embed_dim {config.encoder_embed_dim} is not divisible by "
                f"encoder_num_heads {config.encoder_num_heads}"
            )
        self.config = config
        self.dim = config.encoder_embed_dim
        self.feature_extractor = FeatureExtractor(config)
        self.encoder = Encoder(config)

    def frame_features(self, wave: Tensor) -> Tensor:
        """Projected conv features [B, frames, dim]: where masked-frame training masks frames."""
        return self.encoder.feature_projection(self.feature_extractor(wave))

    def contextualise(self, features: Tensor) -> Tensor:
        """Run the transformer over (possibly masked) frame features [B, frames, dim]."""
        return self.encoder.transformer(features)

    def forward(self, wave: Tensor) -> Tensor:
        return self.contextualise(self.frame_features(wave))


_HF_RENAMES = (
    (re.compile(r"^feature_projection\."), "encoder.feature_projection."),
    (re.compile(r"^encoder\.(pos_conv_embed|layer_norm|layers)\b"), r"encoder.transformer.\1"),
)
_WEIGHT_NORM_RENAMES = (
    (re.compile(r"\.parametrizations\.weight\.original0$"), ".weight_g"),
    (re.compile(r"\.parametrizations\.weight\.original1$"), ".weight_v"),
)


def to_torchaudio_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face (or torchaudio pretraining) HuBERT state dict to torchaudio names.

    Handles the `hubert.` / `wav2vec2.` wrappers and the parametrized weight-norm names.
    """
    hugging_face = any(k.split(".")[0] in ("hubert", "feature_projection") for k in state) or any(
        k.startswith("encoder.layers.") for k in state
    )
    renamed = {}
    for key, value in state.items():
        name = re.sub(r"^(hubert|wav2vec2)\.", "", key)
        if hugging_face:
            for pattern, replacement in _HF_RENAMES:
                name = pattern.sub(replacement, name)
        for pattern, replacement in _WEIGHT_NORM_RENAMES:
            name = pattern.sub(replacement, name)
        renamed[name] = value
    return renamed


def config_from_hugging_face(values: Mapping[str, Any], source: Path) -> HuBERTConfig:
    """Map the architecture keys of a Hugging Face HubertConfig onto HuBERTConfig.

    Training-only keys (masking, CTC, vocabulary) do not shape the encoder and are not read;
    architecture values this encoder cannot reproduce are errors.
    """
    unsupported = {
        "hidden_act": "gelu", "feat_extract_activation": "gelu", "feat_proj_layer_norm": True,
        "conv_pos_batch_norm": False, "position_embeddings_type": None,
    }  # fmt: skip
    for key, supported in unsupported.items():
        if key in values and values[key] != supported:
            raise CheckpointError(
                f"{source}: {key}={values[key]!r} is not supported (only {supported!r}); "
                "pass a HuBERT checkpoint with the standard architecture"
            )
    try:
        conv = tuple(
            zip(values["conv_dim"], values["conv_kernel"], values["conv_stride"], strict=True)
        )
        mapped = {
            "extractor_mode": {"layer": "layer_norm", "group": "group_norm"}.get(
                values["feat_extract_norm"], values["feat_extract_norm"]
            ),
            "extractor_conv_layer_config": conv,
            "extractor_conv_bias": values["conv_bias"],
            "encoder_embed_dim": values["hidden_size"],
            "encoder_projection_dropout": values.get("feat_proj_dropout", 0.0),
            "encoder_pos_conv_kernel": values["num_conv_pos_embeddings"],
            "encoder_pos_conv_groups": values["num_conv_pos_embedding_groups"],
            "encoder_num_layers": values["num_hidden_layers"],
            "encoder_num_heads": values["num_attention_heads"],
            "encoder_attention_dropout": values.get("attention_dropout", 0.0),
            "encoder_ff_interm_features": values["intermediate_size"],
            "encoder_ff_interm_dropout": values.get("activation_dropout", 0.0),
            "encoder_dropout": values.get("hidden_dropout", 0.0),
            "encoder_layer_norm_first": values.get("do_stable_layer_norm", False),
            "encoder_layer_drop": values.get("layerdrop", 0.0),
            "layer_norm_eps": values.get("layer_norm_eps", 1e-5),
        }  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{source}: missing or malformed HuBERT config key ({exc}); "
            "pass the config.json saved with the model"
        ) from exc
    return parse_config(HuBERTConfig, mapped, str(source), CheckpointError)


def _read_state(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    content = read_torch_file(path)
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        content = content["model"]  # a {"model": state_dict, ...} training checkpoint
    return as_state_dict(content, path, "the file")


def build(size: str | Mapping[str, Any], checkpoint: Path | None) -> HuBERTBackbone:
    """A HuBERT of `size`; with a checkpoint, loaded strictly from it.

    `checkpoint` is a Hugging Face directory (config.json + model.safetensors, config from the
    file) or a torchaudio / Hugging Face state dict file (.pt, .pth, .bin, .safetensors)
    whose architecture is `size`.
    """
    if checkpoint is None:
        return HuBERTBackbone(config_for_size(HuBERTConfig, PRESETS, size))
    if checkpoint.is_dir():
        config = config_from_hugging_face(read_json(checkpoint / "config.json"), checkpoint)
        weights = checkpoint / "model.safetensors"
    else:
        config = config_for_size(HuBERTConfig, PRESETS, size)
        weights = checkpoint
    try:
        model = HuBERTBackbone(config)
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}") from exc
    load_strict(
        model,
        to_torchaudio_names(_read_state(weights)),
        weights,
        fix="pass a HuBERT checkpoint (torchaudio or Hugging Face) of the architecture given "
        "by its config.json or by `size`",
        ignored_prefixes=HEAD_PREFIXES,
    )
    return model
