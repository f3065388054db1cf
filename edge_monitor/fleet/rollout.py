"""`bundle/install` and `bundle/rollback`: a new bundle from one MQTT command, safely.

An install walks these steps, each published on the retained `bundle` topic and appended
to `<state_dir>/bundle-audit.jsonl`:

1. downloading: the .tar from the command's URL, capped at its size_bytes (and
   rollout.max_bundle_mb), compared with its sha256 (edge_monitor.fleet.download);
2. verifying: unpacked beside the installed ones, its signature checked against
   model.trusted_keys, then every check `edge-monitor check` makes (manifest, checksums,
   dims, the machines' keys and windows) by planning the daemon on it: a failure here is
   `refused` and changes nothing;
3. swapping: the store's pointer names it and the daemon reloads, which swaps every
   machine's detector between two windows;
4. watching: each machine must score rollout.watch_windows windows with no model error and
   no new fault; otherwise the previous bundle is put back by itself (`rolled-back`);
5. installed.

Commands run one at a time on the MQTT command worker, so two installs never interleave.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_monitor.core.errors import BadInputError, EdgeMonitorError
from edge_monitor.enrolment.audit import AuditLog
from edge_monitor.fleet.download import DownloadError, download
from edge_monitor.fleet.store import BundleStore
from edge_monitor.mqtt.commands import Command
from edge_monitor.mqtt.topics import BundleStatus, iso_utc, utc_now

log = logging.getLogger(__name__)

AUDIT_NAME = "bundle-audit.jsonl"
RELOAD_TIMEOUT_S = 120.0
WATCH_POLL_S = 0.1
MB = 1_000_000
_FAULT = "fault"


class RolloutError(EdgeMonitorError):
    """An install did not end with the new bundle serving; the message says why."""


class RolloutService:
    """Bundle installs for a running `edge_monitor.daemon.Daemon`, through its public hooks:
    `config`, `serving`, `processor.snapshot()`, `request_reload()`, `publish_bundle()`,
    `register_command()` and `plan()`."""

    def __init__(self, daemon: Any, state_dir: str | Path) -> None:
        self.daemon = daemon
        self.store = BundleStore(state_dir)
        self.audit = AuditLog(Path(state_dir) / AUDIT_NAME)
        daemon.register_command("bundle/install", self.install_command)
        daemon.register_command("bundle/rollback", self.rollback_command)

    # Reporting --------------------------------------------------------------------------

    def running(self) -> dict[str, Any]:
        """What serves now, for the retained topic and command results."""
        running = dict(self.daemon.serving.to_dict())
        current = self.store.read()["current"]
        if running["origin"] == "installed" and current is not None:
            running["sha256"] = current.get("sha256")
            running["installed_at"] = current.get("installed_at")
        return running

    def publish(self, install: Mapping[str, Any] | None = None) -> None:
        """Publish the retained `bundle` topic; `install` defaults to the stored last one."""
        if install is None:
            install = self.store.read()["install"]
        self.daemon.publish_bundle(BundleStatus(self.running(), install, utc_now()))

    def _step(self, install: dict[str, Any], step: str, **fields: Any) -> None:
        install.update(step=step, **fields)
        self.audit.append({"event": "bundle-install", **install})
        log.info("bundle install %s: %s%s", install["request_id"], step,
                 f" ({install['error']})" if install.get("error") else "")
        self.publish(install)

    def _progress(self, install: dict[str, Any], fraction: float) -> None:
        """Download progress: published, not audited (the audit log keeps the steps)."""
        install["progress"] = round(fraction, 2)
        self.publish(install)

    # bundle/install -----------------------------------------------------------------------

    def install_command(self, command: Command) -> Mapping[str, Any]:
        args = command.args
        install: dict[str, Any] = {
            "request_id": command.request_id, "url": args["url"], "sha256": args["sha256"],
            "size_bytes": args["size_bytes"], "who": f"mqtt:{command.request_id}",
            "started_at": iso_utc(utc_now()), "version": None, "progress": 0.0, "error": None,
        }
        config = self.daemon.config
        archive = self.store.downloads / f"{args['sha256'][:16]}.tar"
        root: Path | None = None
        try:
            current = self.store.read()["current"]
            if current is not None and current.get("sha256") == args["sha256"]:
                raise BadInputError(f"bundle {args['sha256'][:12]}... already serves; "
                                    "nothing to install")
            self._step(install, "downloading")
            download(
                args["url"], archive, args["sha256"], args["size_bytes"],
                int(config.rollout.max_bundle_mb * MB), config.rollout.download_timeout_s,
                lambda fraction: self._progress(install, fraction), config.rollout.tls_ca_file,
            )
            install["progress"] = 1.0
            self._step(install, "verifying")
            root = self.store.unpack(archive)
            plan = self.daemon.plan(root)
            install.update(version=plan.serving.version,
                           signer=plan.serving.signer.name if plan.serving.signer else None,
                           key_id=plan.serving.signer.key_id if plan.serving.signer else None)
        except EdgeMonitorError as exc:
            step = "failed" if isinstance(exc, DownloadError) else "refused"
            error = str(exc)
            if root is not None:  # name what the operator sent, not where the box unpacked it
                error = error.replace(str(root), args["url"])
            install.update(step=step, error=error, ended_at=iso_utc(utc_now()))
            self.store.record_install(install)  # also removes the unpacked candidate
            self._step(install, step)
            raise RolloutError(error) from exc
        finally:
            archive.unlink(missing_ok=True)
        assert root is not None
        record = {"dir": root.relative_to(self.store.root).as_posix(), "sha256": args["sha256"],
                  "version": install["version"], "signer": install.get("signer"),
                  "key_id": install.get("key_id"), "installed_at": iso_utc(utc_now())}
        self._swap_and_watch(install, record)
        return {"installed": True, **{k: install.get(k) for k in (
            "version", "signer", "key_id", "watched_windows", "step")}}

    def _swap_and_watch(self, install: dict[str, Any], record: Mapping[str, Any]) -> None:
        before = self.store.read()
        baseline = self._machines()
        self._step(install, "swapping")
        self.store.promote(record, install)
        try:
            self._reload()
        except EdgeMonitorError as exc:
            self._revert(before, install, "failed", f"the swap could not be applied: {exc}")
        self._step(install, "watching")
        verdict, watched = self._watch(baseline)
        install["watched_windows"] = watched
        if verdict is not None:
            self._revert(before, install, "rolled-back", verdict)
        install.update(ended_at=iso_utc(utc_now()), error=None)
        if watched is None:
            install["note"] = ("not watched: the machines scored too few windows within "
                               "rollout.watch_timeout_s")
        self.store.record_install({**install, "step": "installed"})
        self._step(install, "installed")

    def _revert(self, before: Mapping[str, Any], install: dict[str, Any], step: str,
                reason: str) -> None:
        """Put the previous pointer back, reload, report; always raises RolloutError."""
        install.update(error=reason, ended_at=iso_utc(utc_now()))
        self.store.restore({**before, "install": {**install, "step": step}})
        try:
            self._reload()
        except EdgeMonitorError as exc:
            reason += f"; reloading the previous bundle failed too ({exc}): check the log"
            install["error"] = reason
        self._step(install, step)
        raise RolloutError(f"bundle {install.get('version')} {step}: {reason}")

    # bundle/rollback ------------------------------------------------------------------------

    def rollback_command(self, command: Command) -> Mapping[str, Any]:
        before = self.store.read()
        old = self.running()
        install: dict[str, Any] = {"request_id": command.request_id, "step": "rolled-back",
                                   "who": f"mqtt:{command.request_id}",
                                   "version": old.get("version"), "error": None,
                                   "ended_at": iso_utc(utc_now()), "reason": "bundle/rollback"}
        self.store.rollback(install)
        try:
            self._reload()
        except EdgeMonitorError:
            self.store.restore(before)
            self._reload()
            raise
        self._step(install, "rolled-back")
        return {"rolled_back": True, "from": old, "to": self.running()}

    # Internals ------------------------------------------------------------------------------

    def _reload(self) -> None:
        try:
            self.daemon.request_reload().result(RELOAD_TIMEOUT_S)
        except TimeoutError as exc:
            raise EdgeMonitorError(f"reload did not finish within {RELOAD_TIMEOUT_S:.0f} s") \
                from exc

    def _machines(self) -> dict[str, dict[str, Any]]:
        processor = self.daemon.processor
        return dict(processor.snapshot().get("machines", {})) if processor else {}

    def _watch(self, baseline: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, int | None]:
        """(reason to roll back or None, windows watched per machine or None if unwatched)."""
        rollout = self.daemon.config.rollout
        deadline = time.monotonic() + rollout.watch_timeout_s
        while time.monotonic() < deadline:
            machines = self._machines()
            for name, lane in machines.items():
                if lane.get("model_errors"):
                    return (f"machine {name}: {lane['model_errors']} model error(s) in the first "
                            f"windows ({lane.get('reason')})"), None
                was = baseline.get(name, {}).get("status")
                if lane.get("status") == _FAULT and was != _FAULT:
                    return f"machine {name}: fault after the swap ({lane.get('reason')})", None
            watching = [m for m in machines.values() if m.get("model_version") is not None]
            if watching and all(m.get("scored_windows", 0) >= rollout.watch_windows
                                for m in watching):
                return None, rollout.watch_windows
            time.sleep(WATCH_POLL_S)
        return None, None
