"""Build a bundle (edge_monitor.core.bundle) from exported models and training clips, atomically.

For every model the training clips are embedded through the *runtime* embedder the daemon
will run (onnxruntime, TFLite or the builtin), after the same read_audio + preprocess, so a
bank holds exactly the vectors the edge would compute. One bank per model and machine
section is built with edge_monitor.core.scoring.build_bank; the threshold for the requested false
alarm rate comes from the (fused) leave-one-out scores. Without training clips the bundle is
model-only: one model and no machines, and each box learns its machine's bank on site.
Everything is written into a staging directory that is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_monitor import __version__
from edge_monitor.core.atomic import atomic_path, atomic_write_text, fsync_dir
from edge_monitor.core.bank import MANIFEST_NAME as BANK_MANIFEST_NAME
from edge_monitor.core.bank import save_bank, sha256_file
from edge_monitor.core.bundle import (
    BANKS_DIR,
    BUNDLE_FORMAT_VERSION,
    MANIFEST_NAME,
    MODELS_DIR,
    load_bundle,
)
from edge_monitor.core.detector import Member, ScoreNorm, fused_loo_scores
from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.embedders.runtimes import load_embedder
from edge_monitor.core.errors import BundleError, ConfigError
from edge_monitor.core.preprocess import PreprocessConfig
from edge_monitor.core.scoring import build_bank, threshold_for_false_alarm_rate
from edge_monitor.core.scoring_config import ScoringConfig
from edge_monitor.core.signing import TrustPolicy, sign_manifest
from trainer.dcase_data import Clip
from trainer.embed_cache import EmbeddingCache, EmbedOptions, embed_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    """One model to put in a bundle: an exported file, or a builtin embedder."""

    name: str
    runtime: str  # onnx | tflite | builtin
    sample_rate_hz: int
    window_s: float
    dim: int
    file: Path | None = None
    precision: str = "fp32"
    weight: float = 1.0
    score_norm: str = "bank-loo"
    builtin: str | None = None
    params: dict[str, int] = field(default_factory=dict)

    def embedder(self, file: Path | None = None, threads: int | None = None) -> Embedder:
        """The runtime embedder the daemon will build for this model."""
        return load_embedder(self.runtime, self.name, self.sample_rate_hz, self.window_s,
                             self.dim, path=file or self.file, builtin=self.builtin,
                             params=self.params, threads=threads)


def machine_ids(clips: Sequence[Clip]) -> dict[tuple[str, str], str]:
    """Bundle machine id of each (machine, section): the machine name, or machine-section
    when a machine type has several sections."""
    sections: dict[str, set[str]] = {}
    for clip in clips:
        sections.setdefault(clip.machine, set()).add(clip.section)
    return {
        (machine, section): machine if len(found) == 1 else f"{machine}-{section}"
        for machine, found in sections.items()
        for section in found
    }


def created_by() -> dict[str, str]:
    versions = {"edge_monitor": __version__, "trainer": __version__}
    for package in ("torch", "onnxruntime", "onnx", "ai-edge-litert", "litert-torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _embed(
    embedder: Embedder, clips: Sequence[Clip], options: EmbedOptions, cache_dir: Path | None
) -> np.ndarray:
    if cache_dir is not None:
        return EmbeddingCache(cache_dir, embedder, options).embed_paths([c.path for c in clips])
    return np.stack([embed_file(c.path, embedder, options) for c in clips])


def _model_manifest(entry: ModelEntry, stored: Path | None, root: Path) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "runtime": entry.runtime,
        "sample_rate_hz": int(entry.sample_rate_hz),
        "window_s": float(entry.window_s),
        "dim": int(entry.dim),
        "precision": entry.precision,
        "weight": float(entry.weight),
        "score_norm": entry.score_norm,
    }
    if stored is not None:
        spec["file"] = stored.relative_to(root).as_posix()
        spec["sha256"] = sha256_file(stored)
    else:
        spec["builtin"] = entry.builtin
        spec["params"] = dict(entry.params)
    return spec


def check_runs(embedder: Embedder) -> None:
    """Run the model once on a window of noise at its rate: a model-only bundle has no bank
    whose building would have run it, and a box should not be the first to find it broken."""
    samples = round(embedder.sample_rate_hz * embedder.window_s)
    noise = np.random.default_rng(0).normal(0.0, 0.1, samples).astype(np.float32)
    vector = np.asarray(embedder.embed(noise))
    if vector.shape != (embedder.dim,) or not np.all(np.isfinite(vector)):
        raise BundleError(
            f"model {embedder.name!r} gives shape {vector.shape} "
            f"({'finite' if np.all(np.isfinite(vector)) else 'not finite'}) for a "
            f"{embedder.window_s:g} s window at {embedder.sample_rate_hz} Hz, expected "
            f"({embedder.dim},) finite values; export it again"
        )


def build_bundle(
    out: Path,
    models: Sequence[ModelEntry],
    train_clips: Sequence[Clip] | None,
    scoring: ScoringConfig,
    false_alarm_rate: float = 0.01,
    preprocess: PreprocessConfig | None = None,
    cache_dir: Path | None = None,
    extra_created_by: Mapping[str, str] | None = None,
    sign_key: Ed25519PrivateKey | None = None,
) -> Path:
    """Write a verified bundle directory at `out` (which must not exist yet); with
    `sign_key` its manifest is signed (edge_monitor.core.signing) before it is published.
    `train_clips` None makes a model-only bundle (one model, no machines)."""
    out = Path(out)
    if out.exists():
        raise BundleError(f"{out}: already exists; bundles are immutable, pick a new path")
    if not models:
        raise ConfigError("a bundle needs at least one model")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names {names} repeat; each model needs its own name")
    model_only = train_clips is None
    if model_only and len(models) != 1:
        raise ConfigError(
            f"a model-only bundle holds one model (a box learns its bank with it); got {names}"
        )
    clips = [c for c in train_clips or [] if c.split == "train" and c.domain is not None]
    if not clips and not model_only:
        raise ConfigError("no training clips with a domain to build banks from")
    preprocess = preprocess or PreprocessConfig()
    options = EmbedOptions(preprocess=preprocess)
    ids = machine_ids(clips)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest_models: dict[str, Any] = {}
        embedders: dict[str, Embedder] = {}
        for entry in models:
            stored = None
            if entry.runtime != "builtin":
                stored = staging / MODELS_DIR / f"{entry.name}{Path(str(entry.file)).suffix}"
                stored.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(str(entry.file), stored)
            embedders[entry.name] = entry.embedder(stored)
            if model_only:
                check_runs(embedders[entry.name])
            manifest_models[entry.name] = _model_manifest(entry, stored, staging)
        machines: dict[str, Any] = {}
        groups: dict[tuple[str, str], list[int]] = {}
        for i, clip in enumerate(clips):
            groups.setdefault((clip.machine, clip.section), []).append(i)
        vectors = {
            name: _embed(embedder, clips, options, cache_dir)
            for name, embedder in embedders.items()
        } if clips else {}
        for (machine, section), rows in sorted(groups.items()):
            machine_id = ids[(machine, section)]
            members, refs = [], {}
            for entry in models:
                bank = build_bank(
                    vectors[entry.name][rows],
                    [clips[i].domain for i in rows],
                    [clips[i].clip_id for i in rows],
                    scoring,
                    info={"embedder": entry.name, "machine": machine, "section": section},
                )
                directory = save_bank(bank, staging / BANKS_DIR / machine_id / entry.name)
                refs[entry.name] = {
                    "path": directory.relative_to(staging).as_posix(),
                    "sha256": sha256_file(directory / BANK_MANIFEST_NAME),
                }
                norm = ScoreNorm.from_loo(bank.loo_scores) if (
                    entry.score_norm == "bank-loo" and len(models) > 1
                ) else ScoreNorm()
                members.append(Member(entry.name, embedders[entry.name], bank, entry.weight, norm))
            threshold = threshold_for_false_alarm_rate(fused_loo_scores(members), false_alarm_rate)
            machines[machine_id] = {
                "machine_type": machine,
                "section": section,
                "banks": refs,
                "false_alarm_rate": float(false_alarm_rate),
                "threshold": float(threshold),
            }
            log.info("machine %s: %d clips, threshold %.6g", machine_id, len(rows), threshold)
        digest = hashlib.sha256()
        for spec in manifest_models.values():
            digest.update(str(spec.get("sha256", spec.get("builtin"))).encode())
        for machine in machines.values():
            for ref in machine["banks"].values():
                digest.update(ref["sha256"].encode())
        manifest = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "version": digest.hexdigest()[:16],
            "min_runtime_version": __version__,
            "created_by": {**created_by(), **dict(extra_created_by or {})},
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "preprocess": asdict(preprocess),
            "models": manifest_models,
            "machines": machines,
        }
        atomic_write_text(staging / MANIFEST_NAME, yaml.safe_dump(manifest, sort_keys=False))
        trust = None
        if sign_key is not None:
            kid = sign_manifest(staging, MANIFEST_NAME, sign_key)
            trust = TrustPolicy({kid: ("signer", sign_key.public_key())}, True)
            log.info("signed the manifest with key id %s", kid)
        load_bundle(staging, trust=trust)  # the bundle must verify before it is published
        staging.rename(out)
        fsync_dir(out.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote bundle %s", out)
    return out


def write_tar(bundle_dir: Path, archive: Path) -> Path:
    """Pack a bundle directory into a .tar (regular files only), atomically."""
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w") as tar:
        for path in sorted(Path(bundle_dir).rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(bundle_dir).as_posix(), recursive=False)
    return archive
