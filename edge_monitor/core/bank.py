"""Memory banks on disk: a usearch index of normal embeddings plus a `.npz` of metadata.

Layout of a bank directory:

    bank.json      format version, bank version, dim, count, scoring config, sha256 of files
    index.usearch  the embeddings (key i = row i), cosine metric
    meta.npz       domains, clip ids, parents, densities, leave-one-out scores (no pickles)

Every file is written atomically and checksummed; loading verifies format, checksums, counts
and dimensions and names the file and the fix when anything is off.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from usearch.index import Index

from edge_monitor.core.atomic import atomic_path, atomic_write_text, fsync_dir
from edge_monitor.core.errors import BankError, ConfigError, StorageError, one_line
from edge_monitor.core.index_reader import read_index_vectors
from edge_monitor.core.neighbours import build_usearch_index
from edge_monitor.core.scoring_config import ScoringConfig

log = logging.getLogger(__name__)

BANK_FORMAT_VERSION = 1
MANIFEST_NAME = "bank.json"
INDEX_NAME = "index.usearch"
META_NAME = "meta.npz"
MAX_DIM = 1 << 16
MAX_COUNT = 10_000_000  # entries of one bank; a bank of a few hours of windows holds ~10^4
LOW_SPACE_BYTES = 1 << 20  # a failed write with less free than this was the disk being full
META_ARRAYS = (
    "domains", "clip_ids", "parents", "densities", "loo_scores", "loo_rows", "recordings", "start_s"
)


@dataclass
class Bank:
    """Normal embeddings of one machine with everything scoring needs, precomputed."""

    embeddings: np.ndarray  # (N, D) float32, unit rows
    domains: np.ndarray  # (N,) str: source | target | target-syn
    clip_ids: np.ndarray  # (N,) str
    parents: np.ndarray  # (N,) int64: row a target-syn entry was drawn from, else -1
    densities: np.ndarray  # (N,) float32: rho, mean distance to k_rho nearest other entries
    loo_scores: np.ndarray  # leave-one-out scores of sampled original entries
    loo_rows: np.ndarray  # rows those scores belong to
    config: ScoringConfig
    recordings: np.ndarray = field(default_factory=lambda: np.zeros(0, str))  # (N,) "" = clip
    start_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) window start times
    overlap_s: float = 0.0  # windows of one recording closer than this overlap
    group_medians: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # embedder, machine, lineage, ...
    version: str = ""

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        if self.recordings.size == 0:
            self.recordings = np.full(n, "", dtype=str)
        if self.start_s.size == 0:
            self.start_s = np.zeros(n)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def content_version(self) -> str:
        """A short hash of the bank's content: equal banks get equal versions."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.embeddings).tobytes())
        digest.update("\n".join(map(str, self.domains)).encode())
        digest.update("\n".join(map(str, self.clip_ids)).encode())
        digest.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        return digest.hexdigest()[:16]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_bank(bank: Bank, directory: str | Path) -> Path:
    """Write `bank` into a new directory atomically (built aside, renamed into place).

    A failed write (a full disk, a read-only mount) raises StorageError naming the
    directory and the cause, and leaves nothing behind: banks already there are untouched.
    """
    final = Path(directory)
    if final.exists():
        raise BankError(f"{final}: already exists; banks are immutable, write a new version")
    bank.version = bank.version or bank.content_version()
    index = build_usearch_index(bank.embeddings)
    staging: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        _write_files(bank, index, staging)
        staging.rename(final)
        fsync_dir(final.parent)
    except (OSError, RuntimeError) as exc:  # usearch reports a failed write as RuntimeError
        raise write_error(final, exc) from exc
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def write_error(path: Path, exc: BaseException) -> StorageError:
    """One line for a failed write: the path, the cause (the disk's free space when it is
    full, which usearch does not say) and the fix."""
    if isinstance(exc, OSError) and exc.errno is not None:
        cause = os.strerror(exc.errno)
    else:
        cause = str(exc) or type(exc).__name__
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None:
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(existing).free
            if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or free < LOW_SPACE_BYTES:
                cause = f"no space left on the device ({free} bytes free)"
    return StorageError(f"{path}: cannot write the bank: {cause}; free space or fix the "
                        "mount, then try again (banks already stored are unchanged)")


def _write_files(bank: Bank, index: Index, staging: Path) -> None:
    with atomic_path(staging / INDEX_NAME) as tmp:
        index.save(str(tmp))
    with atomic_path(staging / META_NAME) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            domains=bank.domains.astype(str),
            clip_ids=bank.clip_ids.astype(str),
            parents=bank.parents.astype(np.int64),
            densities=bank.densities.astype(np.float32),
            loo_scores=bank.loo_scores.astype(np.float32),
            loo_rows=bank.loo_rows.astype(np.int64),
            recordings=bank.recordings.astype(str),
            start_s=bank.start_s.astype(np.float64),
        )
    manifest = {
        "format_version": BANK_FORMAT_VERSION,
        "version": bank.version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dim": bank.dim,
        "count": len(bank),
        "scoring": bank.config.to_dict(),
        "group_medians": bank.group_medians,
        "overlap_s": bank.overlap_s,
        "info": bank.info,
        "files": {
            INDEX_NAME: sha256_file(staging / INDEX_NAME),
            META_NAME: sha256_file(staging / META_NAME),
        },
    }
    atomic_write_text(staging / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise BankError(f"{path}: missing; {directory} is not a bank directory")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BankError(
            f"{path}: unreadable or not JSON ({one_line(exc)}); rebuild the bank"
        ) from exc
    if not isinstance(manifest, dict):
        raise BankError(f"{path}: expected a JSON object; rebuild the bank")
    fmt = manifest.get("format_version")
    if fmt != BANK_FORMAT_VERSION:
        raise BankError(
            f"{path}: format_version {fmt!r} is not supported (this runtime reads "
            f"{BANK_FORMAT_VERSION}); rebuild the bank with a matching trainer"
        )
    for key in ("version", "dim", "count", "scoring", "files"):
        if key not in manifest:
            raise BankError(f"{path}: key {key!r} is missing; rebuild the bank")
    for key, limit in (("dim", MAX_DIM), ("count", MAX_COUNT)):
        value = manifest[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise BankError(f"{path}: {key} {str(value)[:40]!r} is not a whole number in "
                            f"1..{limit}; rebuild the bank")
    kinds = {"files": dict, "scoring": dict, "info": dict, "group_medians": dict,
             "overlap_s": (int, float)}
    for key, kind in kinds.items():
        if key in manifest and not isinstance(manifest[key], kind):
            raise BankError(f"{path}: {key} has the wrong type; rebuild the bank")
    medians = manifest.get("group_medians", {})
    numbers = [manifest.get("overlap_s", 0.0), *medians.values()]
    if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in numbers):
        raise BankError(f"{path}: overlap_s and group_medians must be finite numbers; rebuild "
                        "the bank")
    if any(v <= 0 for v in medians.values()):
        raise BankError(f"{path}: group_medians must be positive (they divide distances); "
                        "rebuild the bank")
    return manifest


def _verify_checksums(directory: Path, manifest: dict[str, Any]) -> None:
    for name in (INDEX_NAME, META_NAME):
        path = directory / name
        expected = manifest["files"].get(name)
        if not path.is_file():
            raise BankError(f"{path}: missing from the bank; copy the whole bank directory again")
        actual = sha256_file(path)
        if actual != expected:
            raise BankError(
                f"{path}: checksum mismatch (expected {str(expected)[:12]}..., found "
                f"{actual[:12]}...): the file is corrupt or was modified; copy the bank again"
            )


def _read_meta(path: Path, count: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in META_ARRAYS}
    except KeyError as exc:
        raise BankError(f"{path}: array {exc} is missing; rebuild the bank") from exc
    except (OSError, ValueError, EOFError, MemoryError, NotImplementedError, zipfile.BadZipFile,
            zlib.error) as exc:  # whatever numpy and zipfile raise on a damaged file
        raise BankError(f"{path}: unreadable ({one_line(exc)}); copy the bank again") from exc
    for name in ("domains", "clip_ids", "parents", "densities", "recordings", "start_s"):
        if arrays[name].shape != (count,):
            raise BankError(
                f"{path}: {name} has shape {arrays[name].shape}, expected ({count},); "
                "rebuild the bank"
            )
    return arrays


def load_bank(directory: str | Path, expected_dim: int | None = None) -> Bank:
    """Load and verify a bank; any inconsistency raises BankError naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BankError(f"{directory}: bank directory not found; check the path")
    manifest = _read_manifest(directory)
    _verify_checksums(directory, manifest)
    dim, count = int(manifest["dim"]), int(manifest["count"])
    if expected_dim is not None and dim != expected_dim:
        raise BankError(
            f"{directory / MANIFEST_NAME}: bank dimension {dim} does not match the model's "
            f"embedding dimension {expected_dim}; build the bank with the same model"
        )
    index_path = directory / INDEX_NAME
    embeddings = read_index_vectors(index_path)
    if embeddings.shape != (count, dim):
        raise BankError(
            f"{index_path}: holds {embeddings.shape[0]} x {embeddings.shape[1]}, manifest says "
            f"{count} x {dim}; rebuild the bank"
        )
    arrays = _read_meta(directory / META_NAME, count)
    try:
        where = f"{directory / MANIFEST_NAME} scoring"
        config = ScoringConfig.from_dict(manifest["scoring"], where=where)
    except ConfigError as exc:
        raise BankError(str(exc)) from exc
    return Bank(
        embeddings=embeddings,
        domains=arrays["domains"],
        clip_ids=arrays["clip_ids"],
        parents=arrays["parents"],
        densities=arrays["densities"],
        loo_scores=arrays["loo_scores"],
        loo_rows=arrays["loo_rows"],
        config=config,
        recordings=arrays["recordings"],
        start_s=arrays["start_s"],
        overlap_s=float(manifest.get("overlap_s", 0.0)),
        group_medians={k: float(v) for k, v in manifest.get("group_medians", {}).items()},
        info=dict(manifest.get("info", {})),
        version=str(manifest["version"]),
    )
