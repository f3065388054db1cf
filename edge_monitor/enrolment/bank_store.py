"""Versioned banks of one machine under the daemon's state directory, for enrolment and rollback.

Layout (every bank directory is immutable, written with `edge_monitor.core.bank.save_bank`):

    <state_dir>/banks/.lock                      held while anyone changes any machine's banks
    <state_dir>/banks/<machine>/current.json     the pointer, replaced atomically
    <state_dir>/banks/<machine>/<model>/<version>/

This is the one store of a machine's bank versions: a bank learned on site seeds it
(`seed`), enrolment and "this alarm was normal" feedback commit versions on top, rollback
pops them. The pointer names the bank version in use per model (`current`), the one before
it (`previous`), the `base` the store was seeded from (the bundle's or the learned banks,
with the detector's `model_version`) and a stack of committed version sets for rollback. A new
version is written completely before the pointer moves, so a crash at any moment leaves the
old pointer and the old banks in use. Versions beyond the newest `keep` are pruned, never the
current or the previous one.

`apply()` is what the daemon calls at start and reload: when the pointer was seeded from the
very banks the detector was built with, the detector gets the store's current banks; when the
bundle (or the learned bank) changed since, the store is stale and the detector is kept.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_monitor.config.sections import DEFAULT_KEEP
from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.bank import Bank, load_bank, save_bank, write_error
from edge_monitor.core.detector import Detector, ScoreNorm
from edge_monitor.core.errors import BankError, EdgeMonitorError

log = logging.getLogger(__name__)

BANKS_DIR = "banks"
POINTER_NAME = "current.json"
LOCK_NAME = ".lock"
POINTER_FORMAT_VERSION = 1
MAX_HISTORY = 200
# A threshold this small is 0 but for float rounding (duplicate entries are ~1e-7 apart).
ZERO_THRESHOLD = 1e-6

Versions = dict[str, str]  # model (member) name -> bank version


class EnrolmentBusyError(EdgeMonitorError):
    """Another enrolment or rollback holds the bank store; try again when it is done."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def detector_versions(detector: Detector) -> Versions:
    return {m.name: m.bank.version for m in detector.members}


def require_usable_threshold(detector: Detector, banks: str, fix: str) -> Detector:
    """`detector`, or BankError when its threshold is 0 but for rounding, or below (every
    window would alarm: the bank's entries duplicate one another) or not finite."""
    threshold = detector.threshold
    if math.isfinite(threshold) and threshold > ZERO_THRESHOLD:
        return detector
    why = "every window would alarm: its entries duplicate one another" if (
        math.isfinite(threshold)) else "it would never alarm, or always"
    raise BankError(f"machine {detector.machine}: {banks} give threshold {threshold:.3g}, "
                    f"refused ({why}); {fix}")


def rebank(detector: Detector, banks: Mapping[str, Bank],
           fix: str = "nothing was changed") -> Detector:
    """`detector` with new banks, its threshold and ensemble score norms rebuilt from them.

    A bundle standardises each ensemble member's score by its bank's leave-one-out scores;
    a new bank brings new ones, so those norms are recomputed the same way (single-model
    detectors and members without a norm are left as they are). Enrolment, rollback and a
    restart all go through here, so they serve the same detector for the same banks.
    """
    swapped = detector.with_banks(dict(banks))
    if len(swapped.members) > 1:
        for member in swapped.members:
            if member.norm != ScoreNorm():
                member.norm = ScoreNorm.from_loo(member.bank.loo_scores)
        swapped = Detector(swapped.machine, swapped.members, swapped.false_alarm_rate,
                           swapped.preprocess_config, swapped.model_version)
    versions = {name: bank.version for name, bank in banks.items()}
    return require_usable_threshold(swapped, f"banks {versions}", fix)


class StoreLock:
    """An exclusive, non-blocking lock on the bank store of a state directory.

    An flock on a file: it excludes other processes (an offline `edge-monitor enroll` beside
    the daemon) and other holders in this process alike, and dies with its holder.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / BANKS_DIR / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: str) -> None:
        if self._fd is not None:
            raise EnrolmentBusyError(f"{what}: this session already holds {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise EnrolmentBusyError(
                    f"{what} refused: another enrolment or rollback is running on this device "
                    f"({self.path} is locked); wait for it to finish or cancel it"
                ) from exc
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @contextlib.contextmanager
    def hold(self, what: str) -> Iterator[None]:
        self.acquire(what)
        try:
            yield
        finally:
            self.release()


class BankStore:
    """The versioned banks of one machine; writers must hold the state dir's StoreLock."""

    def __init__(self, state_dir: str | Path, machine: str, keep: int = DEFAULT_KEEP) -> None:
        if keep < 2:
            raise ValueError(f"keep = {keep}: at least the current and previous versions")
        self.state_dir = Path(state_dir)
        self.machine = machine
        self.keep = keep
        self.root = self.state_dir / BANKS_DIR / machine

    # Reading ---------------------------------------------------------------------------

    @property
    def pointer_path(self) -> Path:
        return self.root / POINTER_NAME

    def pointer(self) -> dict[str, Any] | None:
        """The pointer as stored, or None before the first seed."""
        path = self.pointer_path
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BankError(
                f"{path}: unreadable ({exc}); restore it from a backup or delete it to go back "
                "to the bundle's banks"
            ) from exc
        if not isinstance(data, dict) or data.get("format_version") != POINTER_FORMAT_VERSION:
            raise BankError(
                f"{path}: not a bank pointer of format {POINTER_FORMAT_VERSION}; delete it to go "
                "back to the bundle's banks"
            )
        return data

    def bank_dir(self, model: str, version: str) -> Path:
        return self.root / model / version

    def load(self, versions: Mapping[str, str]) -> dict[str, Bank]:
        return {model: load_bank(self.bank_dir(model, v)) for model, v in versions.items()}

    def current(self) -> dict[str, Bank] | None:
        """The banks the pointer names as current, loaded and verified (None before a seed)."""
        pointer = self.pointer()
        return None if pointer is None else self.load(pointer["current"])

    def base(self) -> dict[str, Bank] | None:
        """The banks the store was seeded from (None before a seed)."""
        pointer = self.pointer()
        return None if pointer is None else self.load(pointer["base"])

    def history(self) -> list[dict[str, Any]]:
        """What happened to this machine's banks, oldest first (seed, enrol, rollback...)."""
        pointer = self.pointer()
        return [] if pointer is None else list(pointer["history"])

    def matches(self, detector: Detector, pointer: Mapping[str, Any] | None = None) -> bool:
        """True when the store was seeded from the banks `detector` was built with."""
        pointer = pointer if pointer is not None else self.pointer()
        return (
            pointer is not None
            and pointer.get("model_version") == detector.model_version
            and pointer.get("base") == detector_versions(detector)
        )

    def belongs_to(self, detector: Detector) -> bool:
        """True when the store holds banks of the detector's models (same model version)."""
        pointer = self.pointer()
        return (
            pointer is not None
            and pointer.get("model_version") == detector.model_version
            and set(pointer["current"]) == set(detector_versions(detector))
        )

    def apply(self, detector: Detector) -> Detector:
        """The detector with the store's current banks, when the store belongs to it.

        Called by the daemon at start and reload. A stale store (the bundle or learned bank
        changed since it was seeded) or an unreadable current bank keeps `detector` as it is,
        with a logged reason: the daemon must not go deaf because of an enrolment.
        """
        try:
            pointer = self.pointer()
            if pointer is None or (
                pointer.get("model_version") == detector.model_version
                and pointer["current"] == detector_versions(detector)
            ):
                return detector
            if not self.matches(detector, pointer):
                log.warning(
                    "machine %s: enrolled banks in %s were made for other models or banks "
                    "(%s, base %s); using %s of %s until the next enrolment", self.machine,
                    self.root, pointer.get("model_version"), pointer.get("base"),
                    detector_versions(detector), detector.model_version,
                )
                return detector
            banks = self.load(pointer["current"])
        except BankError as exc:
            log.error("machine %s: cannot use the enrolled banks (%s); serving %s instead",
                      self.machine, exc, detector_versions(detector))
            return detector
        log.info("machine %s: serving enrolled banks %s", self.machine, pointer["current"])
        return rebank(detector, banks, (
            f"roll back that enrolment (`edge-monitor enroll -c CONF --machine {self.machine} "
            f"--rollback`) or delete {self.pointer_path} to serve the bundle's banks"))

    # Writing (hold the StoreLock) ------------------------------------------------------

    def ensure_seeded(self, detector: Detector) -> dict[str, Any]:
        """Make the pointer describe the running detector; returns the pointer.

        The running detector normally serves the store's current banks. When it serves the
        base banks instead (the store's banks could not be loaded at start), those become
        current again so that an enrolment builds on what actually runs. Anything else (no
        store yet, other models, a new bundle or a relearned bank) seeds the store afresh
        from the running banks.
        """
        running = detector_versions(detector)
        pointer = self.pointer()
        if pointer is not None and pointer.get("model_version") == detector.model_version:
            if pointer["current"] == running:
                return pointer
            if pointer["base"] == running:
                pointer["stack"].append(running)
                return self._write_pointer(pointer, {"action": "resync", "versions": running})
        return self.seed({m.name: m.bank for m in detector.members}, detector.model_version,
                         {"action": "seed"})

    def seed(self, banks: Mapping[str, Bank], model_version: str,
             event: Mapping[str, Any]) -> dict[str, Any]:
        """Start the store afresh from `banks` (the base: a bundle's, or a bank just learned
        on site); the history is kept, older versions are pruned at the next commit. An
        unreadable pointer is replaced: a fresh seed needs nothing from it."""
        try:
            pointer = self.pointer()
        except BankError as exc:
            log.warning("machine %s: replacing an unreadable bank pointer (%s)", self.machine, exc)
            pointer = None
        versions = self._write_banks(banks)
        fresh = {
            "format_version": POINTER_FORMAT_VERSION,
            "machine": self.machine,
            "model_version": model_version,
            "base": versions,
            "stack": [versions],
            "history": pointer["history"] if pointer else [],
        }
        return self._write_pointer(fresh, {**event, "versions": versions})

    def commit(self, banks: Mapping[str, Bank], event: Mapping[str, Any]) -> dict[str, Any]:
        """Write `banks` as new versions, then move the pointer to them; returns the pointer.

        Until the pointer is replaced (one atomic rename) the old version stays current.
        """
        pointer = self._require_pointer()
        versions = self._write_banks(banks)
        new = {**pointer["current"], **versions}
        pointer["stack"].append(new)
        pointer = self._write_pointer(pointer, {**event, "action": "commit", "versions": new})
        self.prune()
        return pointer

    def rollback(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Make the previous version current again; returns the pointer."""
        pointer = self._require_pointer()
        if len(pointer["stack"]) < 2:
            raise BankError(
                f"machine {self.machine}: nothing to roll back to; the current banks "
                f"{pointer['current']} are the first this device has"
            )
        undone = pointer["stack"].pop()
        missing = [m for m, v in pointer["stack"][-1].items() if not self.bank_dir(m, v).is_dir()]
        if missing:
            raise BankError(
                f"machine {self.machine}: the previous banks of {missing} are gone from "
                f"{self.root}; nothing was changed"
            )
        return self._write_pointer(
            pointer, {**event, "action": "rollback", "undone": undone,
                      "versions": pointer["stack"][-1]},
        )

    def prune(self) -> list[Path]:
        """Delete versions beyond the newest `keep`, never the current or the previous one."""
        pointer = self._require_pointer()
        keep: dict[str, set[str]] = {}
        for versions in pointer["stack"]:
            for model, version in versions.items():
                keep.setdefault(model, set()).add(version)
        removed = []
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for entry in model_dir.iterdir():
                stale_staging = entry.name.startswith(".")  # left by a crash inside save_bank
                if entry.is_dir() and (stale_staging or entry.name not in keep.get(model_dir.name,
                                                                                   set())):
                    shutil.rmtree(entry)
                    removed.append(entry)
        if removed:
            log.info("machine %s: pruned %d old bank version(s)", self.machine, len(removed))
        return removed

    def _require_pointer(self) -> dict[str, Any]:
        pointer = self.pointer()
        if pointer is None:
            raise BankError(
                f"machine {self.machine}: no enrolled banks in {self.root} yet; enrol first"
            )
        return pointer

    def _write_banks(self, banks: Mapping[str, Bank]) -> Versions:
        versions = {}
        for model, bank in banks.items():
            version = bank.version or bank.content_version()
            bank.version = version
            directory = self.bank_dir(model, version)
            if directory.is_dir():
                load_bank(directory, expected_dim=bank.dim)  # same content; check it is whole
            else:
                save_bank(bank, directory)
            versions[model] = version
        return versions

    def _write_pointer(self, pointer: dict[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
        stack = pointer["stack"][-self.keep:]
        pointer["stack"] = stack
        pointer["current"] = stack[-1]
        pointer["previous"] = stack[-2] if len(stack) > 1 else None
        pointer["updated_at"] = _now()
        pointer["history"] = [*pointer["history"], {"at": pointer["updated_at"], **event}]
        pointer["history"] = pointer["history"][-MAX_HISTORY:]
        try:
            atomic_write_text(self.pointer_path, json.dumps(pointer, indent=2) + "\n")
        except OSError as exc:
            raise write_error(self.pointer_path, exc) from exc
        return pointer


def install_banks(
    store: BankStore, detector: Detector, banks: Mapping[str, Bank], meta: Mapping[str, Any],
    swap: Callable[[Detector], Any],
) -> tuple[dict[str, Any], Detector]:
    """Write `banks` as the new current versions, then swap the rebuilt detector in; when the
    swap fails the pointer goes back, so the store and the running detector agree."""
    new_detector = rebank(detector, banks)
    pointer = store.commit(banks, meta)
    try:
        swap(new_detector)
    except BaseException:
        store.rollback({"who": meta.get("who"), "reason": "swap failed"})
        raise
    return pointer, new_detector


def restore_previous(
    store: BankStore, detector: Detector, requester: str, swap: Callable[[Detector], Any],
) -> tuple[dict[str, Any], Detector]:
    """Serve the previous bank versions again; a failed swap restores the current ones."""
    old = detector_versions(detector)
    pointer = store.rollback({"who": requester})
    new_detector = rebank(detector, store.load(pointer["current"]))
    try:
        swap(new_detector)
    except BaseException:
        store.commit(store.load(old), {"who": requester, "reason": "swap failed"})
        raise
    return pointer, new_detector
