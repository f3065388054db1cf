"""Bundles: the one contract between trainer and daemon (DESIGN, "The bundle").

A bundle is a directory, or a .tar of one, holding `manifest.yaml`, exported models and one
bank per model for every machine:

    manifest.yaml
    models/<model>.onnx | .tflite          (none for runtime `builtin`)
    banks/<machine>/<model>/               (edge_monitor.core.bank layout)

The manifest (schema below, unknown keys are errors) names the format version, who created
it, each model's file, sha256, runtime (onnx | tflite | builtin), input rate and window,
embedding dim, precision, ensemble weight and score normalisation, the preprocessing every
window gets, and per machine (and DCASE section) its banks and decision settings.

A model-only bundle has models and no banks: no machines at all, or machines listed with
`banks: {}`. The daemon then learns each such machine's bank on site with the bundle's
model, as it does with the built-in model (edge_monitor.pipeline.learning). Learning uses
one model, so such a bundle holds exactly one.

Loading verifies everything before a detector is built: first that the bundle is a plain tree
(`check_tree`: no symbolic or hard links, no special files, everything readable, before any
file is opened), then format and runtime versions, every number of the manifest against its
bounds, every checksum (models and each bank's `bank.json`, which in turn checksums its own
files), dims of banks against models and of models against what they output. A failure
names the file and the reason; nothing half-loaded is ever used.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_monitor import __version__
from edge_monitor.core.audio_io import MAX_AUDIO_RATE_HZ, MIN_AUDIO_RATE_HZ
from edge_monitor.core.bank import MANIFEST_NAME as BANK_MANIFEST_NAME
from edge_monitor.core.bank import Bank, load_bank, sha256_file
from edge_monitor.core.detector import Detector, Member, ScoreNorm
from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.embedders.runtimes import BUILTIN_EMBEDDERS, RUNTIMES, load_embedder
from edge_monitor.core.errors import BankError, BundleError, ConfigError, one_line, shown
from edge_monitor.core.preprocess import PreprocessConfig, PreprocessSettings
from edge_monitor.core.signing import Signer, TrustPolicy, verify_signature
from edge_monitor.core.windowing import MAX_WINDOW_S, MIN_WINDOW_S

log = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.yaml"
MODELS_DIR = "models"
BANKS_DIR = "banks"
MAX_MANIFEST_BYTES = 1 << 20  # a real manifest is a few KiB
MAX_EMBEDDING_DIM = 1 << 16
MAX_WEIGHT = 1e3  # ACP weights sum to 1
MAX_THRESHOLD = 1e6  # scores are distances (at most 2) or standardised sums of a few models
MAX_BUILTIN_PARAM = 1 << 16  # n_fft, hop, n_mels of a builtin embedder
MAX_VERSION_CHARS = 128
MAX_NAME_CHARS = 128
MAX_PATH_CHARS = 255  # a path inside the bundle: models/<model>.onnx, banks/<machine>/<model>
SHA256_PATTERN = r"^[0-9a-f]{64}$"
Precision = Literal["fp32", "fp16", "int8", "int8-weights"]
ScoreNormMode = Literal["bank-loo", "none"]


class _Strict(BaseModel):
    """Unknown keys are errors and no float may be NaN or infinite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


BuiltinParam = Annotated[int, Field(ge=1, le=MAX_BUILTIN_PARAM)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]  # a model or machine


class ModelSpec(_Strict):
    """One embedding model of the ensemble."""

    runtime: str = Field(description=f"one of {', '.join(RUNTIMES)}")
    file: str | None = Field(None, max_length=MAX_PATH_CHARS,
                             description="path inside the bundle; none for builtin")
    sha256: str | None = Field(None, pattern=SHA256_PATTERN)
    builtin: str | None = Field(None, description="builtin embedder name (runtime builtin)")
    params: dict[str, BuiltinParam] = Field(
        default_factory=dict, description="builtin embedder settings"
    )
    sample_rate_hz: int = Field(ge=MIN_AUDIO_RATE_HZ, le=MAX_AUDIO_RATE_HZ)
    window_s: float = Field(ge=MIN_WINDOW_S, le=MAX_WINDOW_S)
    dim: int = Field(ge=1, le=MAX_EMBEDDING_DIM)
    precision: Precision = "fp32"
    weight: float = Field(1.0, ge=0, le=MAX_WEIGHT, description="ensemble weight (ACP)")
    score_norm: ScoreNormMode = Field(
        "bank-loo", description="standardise this model's score by its bank's LOO statistics"
    )

    @model_validator(mode="after")
    def _file_or_builtin(self) -> ModelSpec:
        if self.runtime not in RUNTIMES:
            raise ValueError(
                f"runtime {shown(self.runtime)} is unknown: use one of {list(RUNTIMES)}"
            )
        if self.runtime == "builtin":
            if self.builtin not in BUILTIN_EMBEDDERS:
                raise ValueError(
                    f"runtime builtin needs builtin: one of {sorted(BUILTIN_EMBEDDERS)}"
                )
        elif not self.file or not self.sha256:
            raise ValueError(f"runtime {self.runtime} needs both file and sha256")
        return self


class BankRef(_Strict):
    """Where one model's bank of a machine lives, and the sha256 of its bank.json."""

    path: str = Field(max_length=MAX_PATH_CHARS)
    sha256: str = Field(pattern=SHA256_PATTERN)


class MachineSpec(_Strict):
    """One monitored machine: its banks (one per model, or none: learned on site) and
    decision settings."""

    machine_type: str | None = None
    section: str | None = None
    banks: dict[str, BankRef] = Field(
        default_factory=dict, description="one per model; empty: the bank is learned on site"
    )
    false_alarm_rate: float = Field(0.01, gt=0, lt=1)
    threshold: float | None = Field(None, description="fixed threshold; default from LOO scores")

    @field_validator("threshold", mode="before")
    @classmethod
    def _finite_positive(cls, value: object) -> object:
        """NaN or inf would never alarm, 0 or less would alarm at every window."""
        if value is None:
            return value
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not 0 < value <= MAX_THRESHOLD:
            raise ValueError(
                f"{shown(value)} is not a finite number in (0, {MAX_THRESHOLD:g}] (NaN or "
                "inf never alarms, 0 or less alarms at every window); remove it to use the "
                "bank's leave-one-out threshold"
            )
        return value

    @model_validator(mode="after")
    def _no_decision_without_banks(self) -> MachineSpec:
        given = sorted({"false_alarm_rate", "threshold"} & self.model_fields_set)
        if not self.banks and given:
            raise ValueError(
                f"{given} given for a machine without banks; its bank is learned on site and "
                "its threshold comes from the daemon's decision.false_alarm_rate: remove them"
            )
        return self


class Manifest(_Strict):
    """The bundle's manifest.yaml."""

    format_version: int
    version: str = Field(min_length=1, max_length=MAX_VERSION_CHARS,
                         description="content version, reported as model_version")
    min_runtime_version: str = "0.0.0"
    created_by: dict[str, str] = Field(default_factory=dict)
    created_at: str | None = None
    preprocess: PreprocessSettings = Field(default_factory=PreprocessSettings)
    models: dict[Name, ModelSpec] = Field(min_length=1)
    machines: dict[Name, MachineSpec] = Field(
        default_factory=dict, description="none: a model-only bundle, every machine learns"
    )

    @model_validator(mode="after")
    def _every_machine_has_every_model(self) -> Manifest:
        for machine, spec in self.machines.items():
            if spec.banks and set(spec.banks) != set(self.models):
                raise ValueError(
                    f"machines.{machine}.banks names models {sorted(spec.banks)}, but the "
                    f"bundle's models are {sorted(self.models)}; give one bank per model"
                )
        if self.learning_machines() and len(self.models) != 1:
            raise ValueError(
                f"machines {self.learning_machines()} have no banks, so they learn on site, "
                f"which takes one model; the bundle has {sorted(self.models)}: give them banks "
                "or ship one model"
            )
        return self

    def learning_machines(self) -> list[str]:
        """Machines whose banks are learned on site (['*'] for a bundle with no machines)."""
        if not self.machines:
            return ["*"]
        return [name for name, spec in self.machines.items() if not spec.banks]

    def learns(self, machine: str) -> bool:
        """True when the daemon learns `machine`'s bank on site with the bundle's model."""
        spec = self.machines.get(machine)
        return not self.machines or (spec is not None and not spec.banks)


def runtime_version(text: object, path: Path) -> Version:
    """A manifest's `min_runtime_version` as a PEP 440 version (packaging), or BundleError."""
    try:
        return Version(str(text)[:MAX_VERSION_CHARS])
    except InvalidVersion as exc:
        raise BundleError(
            f"{path}: min_runtime_version {shown(text)} is not a version (PEP 440, e.g. "
            "0.1.0); rebuild the bundle with a trainer that writes one"
        ) from exc


def check_tree(root: Path) -> None:
    """Refuse a bundle directory that is not a plain tree, before any file in it is opened.

    Every entry below `root` must be a directory or a regular file with one name: a symbolic
    link (a model pointing at /etc/shadow, a bank directory pointing out of the bundle), a
    hard link or a special file (FIFO, device) is refused, and so is anything the daemon's
    user cannot read, with one line naming the entry and the fix. `root` itself may be a
    link (an operator's `current -> bundle-7`); only what is inside it is judged.
    """
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError as exc:
            raise _unreadable(Path(directory), exc) from exc
        for entry in entries:
            path = Path(entry.path)
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise _unreadable(path, exc) from exc
            if stat.S_ISLNK(info.st_mode):
                raise BundleError(
                    f"{path}: is a symbolic link (to {shown(os.readlink(path))}); a bundle holds "
                    "only regular files and directories: copy the bundle with links resolved "
                    "(cp -rL) or rebuild it"
                )
            if stat.S_ISDIR(info.st_mode):
                if not os.access(path, os.R_OK | os.X_OK):
                    raise _unreadable(path, PermissionError("permission denied"))
                pending.append(path)
            elif not stat.S_ISREG(info.st_mode):
                raise BundleError(
                    f"{path}: is a special file, not a regular file; a bundle holds only regular "
                    "files and directories: rebuild it"
                )
            elif info.st_nlink > 1:
                raise BundleError(
                    f"{path}: is a hard link ({info.st_nlink} names for one file); a bundle "
                    "holds only files of its own: copy the bundle (cp -r) or rebuild it"
                )
            elif not os.access(path, os.R_OK):
                raise _unreadable(path, PermissionError("permission denied"))


def _unreadable(path: Path, exc: OSError) -> BundleError:
    reason = exc.strerror or str(exc)
    return BundleError(
        f"{path}: cannot be read by user {_user_name()} ({reason}); make the bundle readable "
        f"by the daemon's user (chmod -R a+rX, or chown) or copy it where it can be read"
    )


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def _inside(root: Path, relative: str, what: str, manifest_path: Path) -> Path:
    """Resolve a manifest path, refusing anything that leaves the bundle."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        raise BundleError(
            f"{manifest_path}: {what} path {shown(relative)} leaves the bundle; paths must be "
            "relative and inside it"
        )
    return root / pure


def _safe_members(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        pure = PurePosixPath(member.name)
        if pure.is_absolute() or ".." in pure.parts:
            raise BundleError(
                f"{archive}: member {shown(member.name)} would be written outside the bundle "
                "(absolute path or '..'); refusing the archive"
            )
        if not (member.isfile() or member.isdir()):
            raise BundleError(
                f"{archive}: member {shown(member.name)} is a link or special file; a bundle holds "
                "only regular files and directories"
            )
    return members


def extract_bundle(archive: Path, into: Path | None = None) -> Path:
    """Extract a bundle .tar and return its root.

    Under `into` the target is named by the archive's checksum, so reloading the same archive
    reuses one directory instead of piling up copies; it is extracted aside and renamed into
    place. Without `into` a fresh temporary directory is used (the caller removes it).
    """
    if into is None:
        target = Path(tempfile.mkdtemp(prefix="bundle-"))
        _extract(archive, target)
    else:
        into = Path(into)
        into.mkdir(parents=True, exist_ok=True)
        target = into / f"bundle-{sha256_file(archive)[:16]}"
        if target.exists():
            shutil.rmtree(target)
        staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=into))
        try:
            _extract(archive, staging)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    if (target / MANIFEST_NAME).is_file():
        return target
    children = [p for p in target.iterdir() if p.is_dir()]
    if len(children) == 1 and (children[0] / MANIFEST_NAME).is_file():
        return children[0]
    raise BundleError(f"{archive}: no {MANIFEST_NAME} at the top of the archive")


def _extract(archive: Path, target: Path) -> None:
    """Write the (already checked) directories and regular files ourselves: no owners, modes or
    links come from the archive, and it works alike on Pythons without tarfile's extraction
    filters (Debian 12's 3.11.2, where `extractall(filter=...)` does not exist)."""
    try:
        with tarfile.open(archive) as tar:
            for member in _safe_members(archive, tar):
                path = target.joinpath(*PurePosixPath(member.name).parts)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise tarfile.TarError(f"member {member.name!r} has no data")
                with source, open(path, "wb") as handle:
                    shutil.copyfileobj(source, handle)
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(
            f"{archive}: not a readable tar archive ({one_line(exc)}); copy it again"
        ) from exc


def _key(part: object) -> str:
    """One step of a key path in an error: as it is when it is a plain name, else quoted."""
    text = str(part)
    return text if text.isprintable() and len(text) <= 40 else shown(text, 40)


def read_manifest(root: Path) -> Manifest:
    """Parse and validate manifest.yaml; version problems are reported before schema ones."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path}: missing; {root} is not a bundle")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: over {MAX_MANIFEST_BYTES} bytes, not a manifest; rebuild the "
                          "bundle")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else one_line(exc)
        raise BundleError(f"{path}: unreadable or not YAML ({reason}); rebuild the bundle") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a mapping at the top; rebuild the bundle")
    fmt = raw.get("format_version")
    if fmt != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {shown(fmt)} is not supported (this runtime reads "
            f"{BUNDLE_FORMAT_VERSION}); rebuild the bundle with a matching trainer or update "
            "edge-monitor"
        )
    needed = runtime_version(raw.get("min_runtime_version", "0.0.0"), path)
    if needed > Version(__version__):
        raise BundleError(
            f"{path}: min_runtime_version {needed} is newer than this edge-monitor "
            f"({__version__}); update edge-monitor"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(_key(p) for p in err['loc']) or '<root>'}: "
            f"{' '.join(err['msg'].removeprefix('Value error, ').split())[:300]}"
            for err in exc.errors()[:5]
        )
        raise BundleError(f"{path}: invalid manifest: {problems}; rebuild the bundle") from exc


def _verify_model(root: Path, name: str, spec: ModelSpec, manifest_path: Path) -> Path | None:
    if spec.runtime == "builtin":
        return None
    path = _inside(root, str(spec.file), f"models.{name}.file", manifest_path)
    if not path.is_file():
        raise BundleError(f"{path}: model {name!r} file is missing; copy the whole bundle again")
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise BundleError(
            f"{path}: checksum mismatch for model {name!r} (manifest {str(spec.sha256)[:12]}..., "
            f"file {actual[:12]}...): the file is corrupt or was modified; copy the bundle again"
        )
    return path


def _load_machine_bank(
    root: Path, machine: str, model: str, ref: BankRef, spec: ModelSpec, manifest_path: Path
) -> Bank:
    directory = _inside(root, ref.path, f"machines.{machine}.banks.{model}.path", manifest_path)
    bank_json = directory / BANK_MANIFEST_NAME
    if not bank_json.is_file():
        raise BundleError(
            f"{bank_json}: bank of model {model!r} for machine {machine!r} is missing; "
            "copy the whole bundle again"
        )
    actual = sha256_file(bank_json)
    if actual != ref.sha256:
        raise BundleError(
            f"{bank_json}: checksum mismatch (manifest {ref.sha256[:12]}..., file "
            f"{actual[:12]}...): the bank was modified; copy the bundle again"
        )
    try:
        bank = load_bank(directory, expected_dim=spec.dim)
    except BankError as exc:
        raise BundleError(f"machine {machine!r}, model {model!r}: {exc}") from exc
    embedder = bank.info.get("embedder")
    if embedder is not None and embedder != model:
        raise BundleError(
            f"{bank_json}: bank was built with embedder {embedder!r}, but is listed for model "
            f"{model!r}; rebuild the bundle"
        )
    return bank


@dataclasses.dataclass
class Bundle:
    """A verified bundle: manifest, model files and loaded banks, ready to build detectors."""

    root: Path
    manifest: Manifest
    model_paths: dict[str, Path | None]
    banks: dict[str, dict[str, Bank]]  # machine -> model -> bank
    signer: Signer | None = None  # set when the bundle's signature was verified

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.manifest.preprocess.to_preprocess_config()

    def embedder(
        self, name: str, providers: Sequence[str] = ("cpu",), threads: int | None = None
    ) -> Embedder:
        """The runtime embedder of model `name`; its output dim is checked against the manifest."""
        spec = self.manifest.models[name]
        path = self.model_paths[name]
        try:
            embedder = load_embedder(
                spec.runtime, name, spec.sample_rate_hz, spec.window_s, spec.dim, path=path,
                builtin=spec.builtin, params=spec.params, providers=providers, threads=threads)
        except TypeError as exc:
            raise BundleError(
                f"{self.root / MANIFEST_NAME}: models.{name}.params {spec.params}: {exc}"
            ) from exc
        if embedder.dim != spec.dim:
            raise BundleError(
                f"{self.root / MANIFEST_NAME}: models.{name}.dim is {spec.dim}, the model gives "
                f"{embedder.dim}; rebuild the bundle"
            )
        return embedder

    def embedders(
        self, providers: Sequence[str] = ("cpu",), threads: int | None = None
    ) -> dict[str, Embedder]:
        """Every model's runtime embedder, by model name."""
        return {name: self.embedder(name, providers, threads) for name in self.manifest.models}

    def detectors(
        self, providers: Sequence[str] = ("cpu",), threads: int | None = None,
        embedders: Mapping[str, Embedder] | None = None,
    ) -> dict[str, Detector]:
        """One Detector per machine with banks; each model's runtime session (`embedders`,
        built here when not given) is shared by all machines."""
        if embedders is None:
            embedders = self.embedders(providers, threads)
        preprocess = self.preprocess
        out = {}
        for machine, spec in self.manifest.machines.items():
            if not spec.banks:
                continue
            members = []
            for name, model in self.manifest.models.items():
                bank = self.banks[machine][name]
                norm = ScoreNorm()
                if model.score_norm == "bank-loo" and len(self.manifest.models) > 1:
                    norm = ScoreNorm.from_loo(bank.loo_scores)
                members.append(Member(name, embedders[name], bank, model.weight, norm))
            try:
                out[machine] = Detector(
                    machine,
                    members,
                    spec.false_alarm_rate,
                    preprocess,
                    model_version=self.version,
                    threshold=spec.threshold,
                )
            except (ConfigError, BankError) as exc:
                where = self.root / MANIFEST_NAME
                raise BundleError(f"{where}: {exc}") from exc
        return out


def load_bundle(
    path: str | Path, extract_to: str | Path | None = None, trust: TrustPolicy | None = None
) -> Bundle:
    """Open and verify a bundle directory or .tar; raises BundleError naming file and reason.

    A .tar is extracted (regular files only, nothing outside the target) into a fresh
    directory under `extract_to` (default: the system temp directory). The tree is checked
    (`check_tree`) before any file of it is opened. With a `trust` policy the signature is
    checked next, before anything else of the bundle is read. An OS error on the way (a
    file unreadable, an I/O error) is a BundleError naming the file too.
    """
    source = Path(path)
    try:
        return _load(source, extract_to, trust)
    except OSError as exc:
        where = exc.filename or source
        raise BundleError(f"{where}: cannot be read ({exc.strerror or exc}); check the bundle's "
                          "files and permissions, or copy it again") from exc


def _load(source: Path, extract_to: str | Path | None, trust: TrustPolicy | None) -> Bundle:
    if source.is_file():
        root = extract_bundle(source, Path(extract_to) if extract_to else None)
    elif source.is_dir():
        root = source
    else:
        raise BundleError(f"{source}: no such bundle directory or .tar; check the path")
    check_tree(root)
    signer = verify_signature(root, MANIFEST_NAME, trust, source) if trust is not None else None
    manifest = read_manifest(root)
    manifest_path = root / MANIFEST_NAME
    model_paths = {
        name: _verify_model(root, name, spec, manifest_path)
        for name, spec in manifest.models.items()
    }
    rates = {spec.sample_rate_hz for spec in manifest.models.values()}
    windows = {spec.window_s for spec in manifest.models.values()}
    if len(rates) > 1 or len(windows) > 1:
        raise BundleError(
            f"{manifest_path}: models disagree on sample_rate_hz {sorted(rates)} or window_s "
            f"{sorted(windows)}; an ensemble needs one input format, export them alike"
        )
    banks = {
        machine: {
            model: _load_machine_bank(
                root, machine, model, ref, manifest.models[model], manifest_path
            )
            for model, ref in spec.banks.items()
        }
        for machine, spec in manifest.machines.items()
        if spec.banks
    }
    log.info(
        "bundle %s (version %s): %d model(s), %d machine(s) with banks, learning on site: %s",
        root, manifest.version, len(manifest.models), len(banks),
        manifest.learning_machines() or "none",
    )
    return Bundle(root, manifest, model_paths, banks, signer)
