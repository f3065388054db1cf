"""The directories a config names, checked by `check` and created by `run` the same way.

`prepare_dir(key, path, create=False)` is what `check` runs: the path must be a directory
the daemon's user can write (or read, for a directory it only reads), or be missing under
an ancestor it can create it in; nothing is written. `run` calls it with `create=True`,
which makes the same checks, then creates the directory and proves it can write there.
Either way a problem is one ConfigError naming the key, the path and the fix.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path

from edge_monitor.core.errors import ConfigError

PROBE_NAME = ".write-check"
EXISTS, CREATED, WILL_CREATE = "exists", "created", "missing: run creates it"


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _mode(path: Path) -> int | None:
    """st_mode of `path` (links followed), None when it does not exist."""
    try:
        return path.stat().st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # a parent is a file: the nearest existing ancestor says so


def _nearest_existing(path: Path) -> Path:
    for parent in path.parents:
        if _mode(parent) is not None:
            return parent
    return Path(path.anchor or ".")


def _fail(key: str, path: Path, why: str, fix: str) -> ConfigError:
    return ConfigError(f"{key} = {str(path)!r} {why}: {fix}")


def prepare_dir(key: str, path: Path, create: bool = False, write: bool = True) -> str:
    """Check (and with `create`, make) the directory `key` names; returns how it stands:
    EXISTS, CREATED or WILL_CREATE. `write` False: the daemon only reads it once it exists."""
    fix = f"point {key} elsewhere"
    try:
        mode = _mode(path)
        if mode is not None:
            if not stat.S_ISDIR(mode):
                raise _fail(key, path, "is not a directory", f"remove that file or {fix}")
            need = (os.W_OK | os.X_OK) if write else (os.R_OK | os.X_OK)
            if not os.access(path, need):
                what = "writable" if write else "readable"
                raise _fail(key, path, f"is not {what} by user {_user()}",
                            f"give that user access (chown/chmod) or {fix}")
            if create and write:
                _probe(key, path)
            return EXISTS
        ancestor = _nearest_existing(path)
        if not stat.S_ISDIR(_mode(ancestor) or 0):
            raise _fail(key, path, f"cannot be created: {str(ancestor)!r} is not a directory",
                        fix)
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise _fail(key, path, f"does not exist, and user {_user()} cannot create it in "
                        f"{str(ancestor)!r}", f"create it for that user "
                        f"(install -d -o {_user()} {path}) or {fix}")
        if not create:
            return WILL_CREATE
        path.mkdir(parents=True, exist_ok=True)
        if write:
            _probe(key, path)
        return CREATED
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno == errno.ENAMETOOLONG:
            reason = "the path is too long"
        raise _fail(key, path, f"cannot be used ({reason})", fix) from exc


def _probe(key: str, path: Path) -> None:
    """Write and remove a small file: os.access can say yes where a write fails (a full or
    read-only mount seen through a bind, ACLs)."""
    probe = path / PROBE_NAME
    try:
        probe.write_text("ok\n")
        probe.unlink()
    except OSError as exc:
        raise _fail(key, path, f"is not writable ({exc.strerror or exc})",
                    f"free space or fix the mount or permissions, or point {key} elsewhere"
                    ) from exc
