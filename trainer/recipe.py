"""Training recipes: one YAML file per strategy, validated into typed models before any work starts.

Every section forbids unknown keys, so a misspelt option fails at once with its key path and
the fix instead of silently training with a default. Cross-field rules (a LoRA recipe needs a
`lora` section, the dual-head stage must end before training does) are checked here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_monitor.core.errors import ConfigError

StrategyName = Literal[
    "full", "extra-classes", "lora", "dual-head", "tats", "masked-consistency", "feature-exchange"
]
STRATEGY_CLASSES: dict[str, str] = {
    "full": "trainer.strategies.full:FullFineTuning",
    "extra-classes": "trainer.strategies.extra_classes:ExtraClasses",
    "lora": "trainer.strategies.lora:LoraFineTuning",
    "dual-head": "trainer.strategies.dual_head:DualHead",
    "tats": "trainer.strategies.tats:TeacherStudent",
    "masked-consistency": "trainer.strategies.masked_consistency:MaskedConsistency",
    "feature-exchange": "trainer.strategies.feature_exchange:FeatureExchange",
}
"""The class of each strategy, beside its name and recipe section: a new strategy is its own
module plus its entries here."""
MAX_SHOWN_VALUE = 80
COMBINED_TASK = "combined"
"""The data.tasks entry for the class over data.attributes (every other entry is an attribute)."""
TASK_NAME = re.compile(r"[^.\s]+")
"""A task names a loss module, and module names cannot hold a '.'."""
STRATEGIES: tuple[str, ...] = StrategyName.__args__  # type: ignore[attr-defined]


class Section(BaseModel):
    """Base of every recipe section: typed fields with defaults; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneSection(Section):
    """Which backbone, at which size, from which (optional) pretrained checkpoint."""

    name: Literal["beats", "eat", "sslam", "hubert", "resnet", "efficientat"] = "resnet"
    size: str | dict[str, Any] = Field(
        "base", description="a preset name ('tiny', 'base') or explicit config values"
    )
    checkpoint: Path | None = Field(None, description="local pretrained checkpoint; None = scratch")
    freeze: list[str] = Field(
        default_factory=list,
        description="module name prefixes kept as pretrained (weights and batch-norm "
        "statistics), e.g. ['features.0.', 'features.1.'] for the early EfficientAT blocks",
    )
    full_spectrum: dict[str, Any] | None = Field(
        None,
        description="a full-spectrum branch beside the backbone (trainer.backbones."
        "full_spectrum): its config values, {} for the defaults; None = no branch",
    )

    @model_validator(mode="after")
    def _branch_valid(self) -> BackboneSection:
        if self.full_spectrum is not None:
            from trainer.backbones.base import parse_config
            from trainer.backbones.full_spectrum import FullSpectrumConfig

            parse_config(FullSpectrumConfig, self.full_spectrum, "full_spectrum", ValueError)
        return self


class HeadSection(Section):
    """Attentive statistical pooling, two FC layers and the margin loss on top of the backbone."""

    attention_dim: int = Field(128, gt=0, description="hidden size of the pooling attention")
    hidden_dim: int = Field(256, gt=0, description="width of the first FC layer")
    embed_dim: int = Field(128, gt=0, description="size of the embedding (second FC layer)")
    loss: Literal["arcface", "subcluster-adacos"] = "arcface"
    scale: float = Field(30.0, gt=0, description="ArcFace logit scale s")
    margin: float = Field(0.5, ge=0, lt=1.6, description="ArcFace additive angular margin (rad)")
    subclusters: int = Field(4, ge=1, description="centres per class for sub-cluster AdaCos")


class DataSection(Section):
    """How clips become training batches and, at embedding time, one vector."""

    crop_s: float = Field(3.0, gt=0, description="random crop length per training example")
    batch_size: int = Field(32, ge=1)
    attributes: list[str] | None = Field(
        None, description="attribute names combined into classes; None = all of them"
    )
    tasks: list[str] | None = Field(
        None,
        description=f"multi-task heads: one margin loss per entry on the same embedding, the "
        f"training loss their mean; '{COMBINED_TASK}' is the class over data.attributes, any "
        "other entry one attribute's classes (per machine and section), e.g. "
        f"['{COMBINED_TASK}', 'car', 'spd', 'mic']; None = the combined class alone",
    )
    trim_quiet_db: float = Field(
        20.0,
        ge=0,
        description="trim a clip's lead-in and tail this far under its median level before "
        "cropping (0 = off); evaluation trims the same way",
    )
    embed_window_s: float = Field(
        0.0,
        ge=0,
        description="embedding window in seconds: 0 pools the whole clip at once, else the "
        "clip is cut into windows whose unit embeddings are averaged",
    )

    @model_validator(mode="after")
    def _tasks_named_once(self) -> DataSection:
        if self.tasks is None:
            return self
        fix = f"write e.g. tasks: [{COMBINED_TASK}, car, spd] or leave tasks out"
        if not self.tasks:
            raise ValueError(f"tasks: empty; {fix}")
        bad = [t for t in self.tasks if not TASK_NAME.fullmatch(t)]
        if bad:
            raise ValueError(
                f"tasks: {bad} are not task names ('{COMBINED_TASK}' or an attribute name "
                f"without '.' or spaces); {fix}"
            )
        twice = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if twice:
            raise ValueError(f"tasks: {twice} named more than once; name each task once")
        if self.attributes is not None and COMBINED_TASK not in self.tasks:
            raise ValueError(
                f"attributes only shape the '{COMBINED_TASK}' task, which tasks {self.tasks} "
                f"lacks; add '{COMBINED_TASK}' to tasks or remove attributes"
            )
        return self


class AugmentSection(Section):
    """Augmentations from the technical reports; each applied with its own probability."""

    noise_prob: float = Field(0.0, ge=0, le=1)
    snr_db: tuple[float, float] = (-5.0, 15.0)
    stretch_prob: float = Field(0.0, ge=0, le=1)
    stretch: tuple[float, float] = (0.8, 1.2)
    mixup_prob: float = Field(0.0, ge=0, le=1)
    mixup_alpha: float = Field(0.4, gt=0)
    mask_prob: float = Field(0.0, ge=0, le=1)
    time_masks: int = Field(2, ge=0)
    max_time_mask: float = Field(0.1, ge=0, le=1, description="fraction of frames per mask")
    feature_masks: int = Field(2, ge=0)
    max_feature_mask: float = Field(0.1, ge=0, le=1, description="fraction of channels per mask")

    @model_validator(mode="after")
    def _ranges_ordered(self) -> AugmentSection:
        for name in ("snr_db", "stretch"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: low {low} is above high {high}; write [low, high]")
        if self.stretch[0] <= 0:
            raise ValueError("stretch: rates must be positive")
        return self


class OptimSection(Section):
    """AdamW with linear warm-up then cosine decay; AMP and gradient accumulation."""

    steps: int = Field(1000, ge=1, description="optimizer steps in total")
    lr: float = Field(1e-3, gt=0)
    backbone_lr: float | None = Field(None, gt=0, description="LR for backbone params; None = lr")
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    clip_grad_norm: float = Field(5.0, gt=0)
    amp: bool = Field(True, description="bfloat16/float16 autocast; only used on CUDA")
    seed: int = Field(0, description="seeds the batches, crops and augmentation draws")
    init_seed: int | None = Field(
        None,
        description="seeds the initial weights of the layers not loaded from a checkpoint "
        "(heads, a full-spectrum branch); None = seed. Runs that share it and differ in seed "
        "start from the same point, which a weight soup (edge-trainer soup) needs",
    )
    average_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the weights (and BatchNorm "
        "statistics) with this decay per step, and export it instead of the last step's "
        "weights; None = export the last step's weights",
    )
    average_start: int = Field(
        0, ge=0, description="steps before the average starts (as a copy of the weights then)"
    )

    @model_validator(mode="after")
    def _average_starts_in_time(self) -> OptimSection:
        if self.average_decay is not None and self.average_start >= self.steps:
            raise ValueError(
                f"average_start {self.average_start} must be below steps {self.steps}, or the "
                "average never starts; lower average_start or drop average_decay"
            )
        return self

    @property
    def weights_seed(self) -> int:
        """The seed the initial weights are drawn with."""
        return self.seed if self.init_seed is None else self.init_seed


class LoggingSection(Section):
    """How often the loop writes metrics and checkpoints."""

    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(200, ge=1)


class ExtraClassesSection(Section):
    """Directories of noise-only and clean clips; each becomes one extra class per directory."""

    noise_dirs: list[Path] = Field(default_factory=list)
    clean_dirs: list[Path] = Field(default_factory=list)


class LoraSection(Section):
    """Low-rank adapters on the backbone's attention projections; the base stays frozen."""

    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class DualHeadSection(Section):
    """Supervised stage, then k-means pseudo-labels and a joint labelled + unlabelled stage."""

    stage1_steps: int = Field(500, ge=1)
    clusters: int = Field(16, ge=2)
    pseudo_weight: float = Field(1.0, ge=0, description="weight of the pseudo-label head loss")
    unlabelled_roots: list[Path] = Field(
        default_factory=list, description="extra DCASE roots whose clips count as unlabelled"
    )


class TatsSection(Section):
    """Teacher-student over several data roots (years); the teacher is an EMA of the student."""

    extra_roots: list[Path] = Field(default_factory=list, description="roots besides --data")
    ema_decay: float = Field(0.999, gt=0, lt=1)
    consistency_weight: float = Field(1.0, ge=0)


class MaskedSection(Section):
    """Masked-frame consistency: the student sees masked frames, the teacher the clean input."""

    mask_ratio: float = Field(0.3, gt=0, lt=1)
    span_frames: int = Field(5, ge=1, description="length of each masked span in frames")
    ema_decay: float = Field(0.999, gt=0, lt=1)
    consistency_weight: float = Field(1.0, ge=0)
    classification_weight: float = Field(1.0, ge=0)


class FeatureExchangeSection(Section):
    """Exchanged branch features of a full-spectrum backbone, as C x C pair classes."""

    weight: float = Field(1.0, ge=0, description="weight of the exchanged examples' loss")


class DistillSection(Section):
    """Teachers' stored clip embeddings (a teachers.npz from `edge-trainer distill
    --teachers-only`) as an extra loss on the strategy's embedding: the model keeps its own
    auxiliary classes and learns the ensemble's geometry too."""

    teachers: Path = Field(..., description="teachers.npz with a vector for every training clip")
    weight: float = Field(1.0, gt=0, description="weight of the distillation loss")
    relational_weight: float = Field(
        1.0, ge=0, description="weight of the pairwise-cosine term inside the distillation loss"
    )


DISTILL_STRATEGIES = ("full", "lora", "feature-exchange")
"""The strategies whose loss adds the distillation term (the others have their own teachers)."""


class Recipe(BaseModel):
    """One training recipe: a strategy with its backbone, head, data, augmentation, optimiser."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    strategy: StrategyName
    backbone: BackboneSection = BackboneSection()
    head: HeadSection = HeadSection()
    data: DataSection = DataSection()
    augment: AugmentSection = AugmentSection()
    optim: OptimSection = OptimSection()
    logging: LoggingSection = LoggingSection()
    extra_classes: ExtraClassesSection | None = None
    lora: LoraSection | None = None
    dual_head: DualHeadSection | None = None
    tats: TatsSection | None = None
    masked: MaskedSection | None = None
    feature_exchange: FeatureExchangeSection | None = None
    distill: DistillSection | None = None

    @model_validator(mode="after")
    def _strategy_sections(self) -> Recipe:
        needed = {
            "extra-classes": "extra_classes",
            "lora": "lora",
            "dual-head": "dual_head",
            "tats": "tats",
            "masked-consistency": "masked",
            "feature-exchange": "feature_exchange",
        }
        for strategy, section in needed.items():
            present = getattr(self, section) is not None
            if strategy == self.strategy and not present:
                raise ValueError(f"strategy {strategy!r} needs a '{section}' section")
            if strategy != self.strategy and present:
                raise ValueError(
                    f"section '{section}' belongs to strategy {strategy!r}, not "
                    f"{self.strategy!r}; remove it or change the strategy"
                )
        if self.dual_head is not None and self.dual_head.stage1_steps >= self.optim.steps:
            raise ValueError(
                f"dual_head.stage1_steps ({self.dual_head.stage1_steps}) must be below "
                f"optim.steps ({self.optim.steps}) so the joint stage runs"
            )
        if self.feature_exchange is not None and self.backbone.full_spectrum is None:
            raise ValueError(
                "strategy 'feature-exchange' exchanges the full-spectrum branch's features: add "
                "backbone.full_spectrum ({} for the defaults)"
            )
        if self.feature_exchange is not None and self.data.tasks is not None:
            raise ValueError(
                "strategy 'feature-exchange' trains pair classes of the combined label; remove "
                "data.tasks (multi-task heads) or use strategy 'full'"
            )
        if self.distill is not None and self.strategy not in DISTILL_STRATEGIES:
            raise ValueError(
                f"section 'distill' works with strategies {list(DISTILL_STRATEGIES)}, not "
                f"{self.strategy!r} (it trains its own teacher); remove the section or change "
                "the strategy"
            )
        if self.extra_classes is not None and not (
            self.extra_classes.noise_dirs or self.extra_classes.clean_dirs
        ):
            raise ValueError("extra_classes needs at least one of noise_dirs or clean_dirs")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe values (paths as strings), for the run directory."""
        return self.model_dump(mode="json")


def parse_recipe(values: Any, source: str) -> Recipe:
    """Validate `values` as a Recipe, or raise ConfigError naming each key path and the fix."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: a recipe is a YAML mapping, got {type(values).__name__}")
    try:
        return Recipe.model_validate(dict(values))
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            where = ".".join(str(p) for p in item["loc"]) or "<recipe>"
            shown = repr(item["input"])
            shown = shown if len(shown) <= MAX_SHOWN_VALUE else shown[:MAX_SHOWN_VALUE] + "..."
            value = f" (got {shown})" if item["type"] != "missing" else ""
            problems.append(f"{where}: {item['msg']}{value}")
        raise ConfigError(
            f"{source}: invalid recipe: "
            + "; ".join(problems)
            + ". Fix those keys (see conf/train/*.yaml for complete examples)."
        ) from exc


def resolve_paths(model: BaseModel, base: Path) -> Any:
    """A copy of `model` whose relative paths are taken from `base` (the recipe's folder).

    A recipe means the same files whichever directory the trainer is started from.
    """
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = base / value
        elif isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
            updates[name] = [v if v.is_absolute() else base / v for v in value]
        elif isinstance(value, BaseModel):
            updates[name] = resolve_paths(value, base)
    return model.model_copy(update=updates) if updates else model


def load_recipe(path: Path) -> Recipe:
    """Read and validate a YAML recipe file; relative paths in it are relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; pass --recipe conf/train/<name>.yaml")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not readable YAML ({exc}); fix the file") from exc
    return resolve_paths(parse_recipe(values, str(path)), path.resolve().parent)
