"""Bundles installed on this box by `bundle/install`: `<state_dir>/bundles/`.

Each installed bundle is unpacked once into `bundles/bundle-<sha16>/`; `active.json` says
which one serves (`current`), which one served before (`previous`, what `bundle/rollback`
returns to) and how the last install went. `current: null` means the config's own
`model.bundle` (or the built-in model) serves. The pointer is rewritten atomically, so a
power cut during a swap leaves the old bundle or the new one, never neither; directories
that neither pointer names are removed after each change.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.bundle import extract_bundle
from edge_monitor.core.errors import BundleError, EdgeMonitorError

log = logging.getLogger(__name__)

BUNDLES_DIR = "bundles"
POINTER_NAME = "active.json"
DOWNLOADS_DIR = ".downloads"


class BundleStore:
    """The installed bundles of one state directory; the rollout worker is its only writer."""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir) / BUNDLES_DIR

    @property
    def pointer_path(self) -> Path:
        return self.root / POINTER_NAME

    @property
    def downloads(self) -> Path:
        return self.root / DOWNLOADS_DIR

    def read(self) -> dict[str, Any]:
        """The pointer: {"current": record|None, "previous": record|None, "install": ...}."""
        if not self.pointer_path.is_file():
            return {"current": None, "previous": None, "install": None}
        try:
            pointer = json.loads(self.pointer_path.read_text(encoding="utf-8"))
            if not isinstance(pointer, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise BundleError(
                f"{self.pointer_path}: unreadable ({exc}); remove it to serve the config's "
                "model.bundle again"
            ) from exc
        return {"current": pointer.get("current"), "previous": pointer.get("previous"),
                "install": pointer.get("install")}

    def active_dir(self) -> Path | None:
        """The installed bundle that serves, or None for the config's own."""
        current = self.read()["current"]
        if current is None:
            return None
        path = self.root / str(current["dir"])
        if not path.is_dir():
            raise BundleError(
                f"{self.pointer_path}: the installed bundle {path} is missing; send "
                "bundle/rollback or remove the pointer to serve the config's model.bundle"
            )
        return path

    def unpack(self, archive: Path) -> Path:
        """Unpack a downloaded .tar beside the others; returns the bundle root."""
        self.root.mkdir(parents=True, exist_ok=True)
        return extract_bundle(archive, self.root)

    def promote(self, record: Mapping[str, Any], install: Mapping[str, Any]) -> dict[str, Any]:
        """Make `record` (dir relative to the store, version, signer, ...) current."""
        pointer = self.read()
        pointer = {"current": dict(record), "previous": pointer["current"],
                   "install": dict(install)}
        self._write(pointer)
        return pointer

    def rollback(self, install: Mapping[str, Any]) -> dict[str, Any]:
        """Serve `previous` again (None: the config's bundle); raises when there is none."""
        pointer = self.read()
        if pointer["current"] is None:
            raise EdgeMonitorError(
                "no installed bundle to roll back: the config's model.bundle already serves"
            )
        pointer = {"current": pointer["previous"], "previous": None, "install": dict(install)}
        self._write(pointer)
        return pointer

    def record_install(self, install: Mapping[str, Any]) -> None:
        """Keep the outcome of an install that changed nothing (refused, failed)."""
        pointer = self.read()
        pointer["install"] = dict(install)
        self._write(pointer)

    def restore(self, pointer: Mapping[str, Any]) -> None:
        """Put back a pointer read earlier (a swap that failed to apply)."""
        self._write(dict(pointer))

    def _write(self, pointer: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.pointer_path, json.dumps(pointer, indent=1, sort_keys=True))
        self._prune(pointer)

    def _prune(self, pointer: Mapping[str, Any]) -> None:
        keep = {str(r["dir"]).split("/")[0] for r in (pointer["current"], pointer["previous"])
                if r is not None}
        for path in self.root.iterdir():
            if path.is_dir() and path.name.startswith("bundle-") and path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed the unused installed bundle %s", path)
