"""Load the daemon's YAML configuration, every problem reported at once.

`load_config` turns every problem into one line naming the file, the line, the dotted key,
the value and the fix, and raises ConfigError (exit code 2); there is no "safe mode".
Relative paths are resolved against the config file's directory, never the working
directory.
"""

from __future__ import annotations

import copy
import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from edge_monitor.config.sections import CREDENTIALS_ENV, Config
from edge_monitor.core.errors import ConfigError

_MAX_PASSES = 4
MAX_CONFIG_BYTES = 1 << 20  # a real config is a few KiB
_MAX_SHOWN_CHARS = 80
_MAX_MESSAGE_CHARS = 320
MAX_NESTING = 32  # YAML levels; the deepest real key is about five
_PATH_KEYS = (
    ("state_dir",),
    ("model", "bundle"),
    ("alarm_audio", "dir"),
    ("enrolment", "import_dir"),
    ("mqtt", "tls_ca_file"),
    ("mqtt", "tls_cert_file"),
    ("mqtt", "tls_key_file"),
    ("rollout", "tls_ca_file"),
)
_MUST_EXIST = (
    ("model", "bundle"),
    ("mqtt", "tls_ca_file"),
    ("mqtt", "tls_cert_file"),
    ("mqtt", "tls_key_file"),
    ("mqtt", "password_file"),
    ("rollout", "tls_ca_file"),
    ("web", "token_file"),
)
# Secret files: a relative path is looked up in $CREDENTIALS_DIRECTORY when it is set.
_SECRET_KEYS = (("mqtt", "password_file"), ("web", "token_file"))


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node on `loc` (the parent's when the key is absent)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    child = value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and (
            0 <= part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line


def _dig(data: Any, loc: tuple[Any, ...]) -> tuple[bool, Any]:
    for part in loc:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if in_dict or in_list:
            data = data[part]
        else:
            return False, None
    return True, data


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds (also inside `list[...]` or `X | None`), else None."""
    candidates = [annotation, *(getattr(annotation, "__args__", None) or ())]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)),
                None)


def _field_at(loc: tuple[Any, ...]) -> FieldInfo | None:
    """The field an error location names (list indices skipped); None when there is none."""
    model: type[BaseModel] | None = Config
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        model = _section_model(info.annotation)
    return info


def _field_description(loc: tuple[Any, ...]) -> str | None:
    info = _field_at(loc)
    return (info.description or None) if info else None


def _where(source: str, root: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    line = _line_of(root, loc)
    return f"{source}:{line}" if line else source


def _format_error(source: str, root: yaml.Node | None, data: Any, error: dict[str, Any]) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
    key = ".".join(str(p) for p in loc) or "(top level)"
    where = _where(source, root, loc)
    message = _clip(error["msg"].removeprefix("Value error, "))
    kind = error["type"]
    found, value = _dig(data, loc)
    if kind == "extra_forbidden":
        parent = loc[:-1]
        model_fields = _valid_keys(parent)
        hint = f"unknown key; valid keys here are {', '.join(model_fields)}" if model_fields \
            else "unknown key; remove it"
        return f"{where}: {key}: {hint}"
    shown = f" = {_shown(value)}" if found and not isinstance(value, dict | list) else ""
    description = _field_description(loc)
    fix = f" (expected: {description})" if description and kind != "value_error" else ""
    return f"{where}: {key}{shown}: {message}{fix}"


def _shown(value: Any) -> str:
    """repr of a value, cut short so a 300 000-character string still gives one short line."""
    text = repr(value)
    if len(text) <= _MAX_SHOWN_CHARS:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} in all"
    return f"{text[:_MAX_SHOWN_CHARS]}... ({size})"


def _clip(message: str) -> str:
    """A validator's message cut in the middle when a value it quotes is huge: the start
    says what is wrong, the end says the fix."""
    if len(message) <= _MAX_MESSAGE_CHARS:
        return message
    half = _MAX_MESSAGE_CHARS // 2
    return f"{message[:half]} ... {message[-half:]}"


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    if all(isinstance(p, int) for p in loc):
        model: type[BaseModel] | None = Config
    else:
        info = _field_at(loc)
        model = _section_model(info.annotation) if info else None
    return sorted(model.model_fields) if model else []


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make relative paths absolute against the config file's directory, in place."""
    for loc in _PATH_KEYS:
        found, value = _dig(data, loc)
        if found and isinstance(value, str) and value and not Path(value).is_absolute():
            _dig(data, loc[:-1])[1][loc[-1]] = str(base / value)
    for loc in (("source", "replay", "paths"), ("model", "trusted_keys")):
        found, values = _dig(data, loc)
        if found and isinstance(values, list):
            for i, value in enumerate(values):
                if isinstance(value, str) and not Path(value).is_absolute():
                    values[i] = str(base / value)
    for loc in _SECRET_KEYS:
        found, secret = _dig(data, loc)
        if found and isinstance(secret, str) and secret and not Path(secret).is_absolute():
            creds = os.environ.get(CREDENTIALS_ENV)
            _dig(data, loc[:-1])[1][loc[-1]] = str(Path(creds) / secret if creds else base / secret)


def _missing_files(config: Config, root: yaml.Node | None, source: str) -> list[str]:
    problems = []
    for loc in _MUST_EXIST:
        _, value = _dig(config.model_dump(), loc)
        if value is not None and not Path(value).exists():
            problems.append(
                f"{_where(source, root, loc)}: {'.'.join(loc)} = {str(value)!r}: no such file "
                "or directory; fix the path (relative paths start at the config file's directory)"
            )
    for i, path in enumerate(config.model.trusted_keys):
        if not path.is_file():
            where = _where(source, root, ("model", "trusted_keys", i))
            problems.append(
                f"{where}: model.trusted_keys.{i} = {str(path)!r}: no such file; copy the "
                "operator's .pub file to the box or fix the path"
            )
    for i, path in enumerate(config.source.replay.paths if config.source.kind == "replay" else []):
        if not path.exists():
            where = _where(source, root, ("source", "replay", "paths", i))
            problems.append(
                f"{where}: source.replay.paths.{i} = {str(path)!r}: no such file or directory; "
                "fix the path"
            )
    return problems


def _drop(data: Any, loc: tuple[Any, ...]) -> bool:
    found, parent = _dig(data, loc[:-1])
    if found and isinstance(parent, dict) and loc and loc[-1] in parent:
        del parent[loc[-1]]
        return True
    return False


def _validation_problems(data: dict[str, Any], source: str, root: yaml.Node | None) -> list[str]:
    """Every problem, not just the first layer: pydantic skips a section's cross-field rules
    while one of its fields is invalid, so bad keys are dropped and the rest validated again.
    """
    lines: list[str] = []
    scratch = copy.deepcopy(data)
    for _ in range(_MAX_PASSES):
        try:
            Config.model_validate(scratch)
        except ValidationError as exc:
            errors = exc.errors()
            dropped = False
            for error in errors:
                line = _format_error(source, root, scratch, error)
                if line not in lines:
                    lines.append(line)
                loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
                dropped = _drop(scratch, loc) or dropped
            if not dropped:
                break
        else:
            break
    return lines


class _Refused(Exception):
    """The YAML is well-formed but not acceptable (too deep, a key twice): `line` says where."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting cap: its composer recurses once per level, so a
    few thousand levels exhaust the stack (RecursionError) unless refused on the way down."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self._depth >= MAX_NESTING:
            line = self.peek_event().start_mark.line + 1
            raise _Refused(line, f"nested more than {MAX_NESTING} levels deep; a config needs "
                                 "a few levels (section: key: value)")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_duplicate_keys(root: yaml.Node) -> None:
    """Refuse a key given twice in one mapping: YAML would silently keep the last one."""
    pending: list[tuple[yaml.Node, str]] = [(root, "")]
    seen_nodes: set[int] = set()  # aliases share nodes; each is checked once
    while pending:
        node, prefix = pending.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
                dotted = f"{prefix}{name}" if name is not None else prefix.rstrip(".")
                if name is not None and name in first:
                    raise _Refused(key.start_mark.line + 1,
                                   f"{dotted}: duplicate key (first given at line "
                                   f"{first[name]}); keep only one")
                if name is not None:
                    first[name] = key.start_mark.line + 1
                pending.append((value, f"{dotted}."))
        elif isinstance(node, yaml.SequenceNode):
            pending.extend((item, f"{prefix}{i}.") for i, item in enumerate(node.value))


def _read_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """Compose and construct `text` once; ConfigError on bad syntax, depth or duplicates."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters is over the "
                          f"{MAX_CONFIG_BYTES}-byte limit for a config; is this the right file?")
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters here
        root = loader.get_single_node()
        if root is not None:
            _check_duplicate_keys(root)
        return root, (loader.construct_document(root) if root is not None else None)
    except _Refused as exc:
        raise ConfigError(f"{source}:{exc.line}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the syntax") from exc
    finally:
        if loader is not None:
            loader.dispose()


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate YAML text; raise ConfigError listing every problem, one line each."""
    root, data = _read_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (key: value)")
    _resolve_paths(data, base or Path.cwd())
    lines = _validation_problems(data, source, root)
    if lines:
        raise ConfigError(_join(lines))
    config = Config.model_validate(data)
    problems = _missing_files(config, root, source)
    if problems:
        raise ConfigError(_join(problems))
    return config


def _join(lines: list[str]) -> str:
    if len(lines) == 1:
        return f"invalid configuration: {lines[0]}"
    return f"invalid configuration ({len(lines)} problems):\n" + "\n".join(lines)


def _read_text(path: Path) -> str:
    """The file's text, refusing before reading what is no config: a FIFO or device (opened
    non-blocking, so a FIFO with no writer cannot hang us) or a file over the size cap."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass an existing file with -c") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ConfigError(f"{path!s:.200}: cannot open the config file ({exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file; pass the YAML config file with -c")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {info.st_size} bytes is over the {MAX_CONFIG_BYTES}-byte "
                              "limit for a config; is this the right file?")
        raw = os.read(fd, MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over the {MAX_CONFIG_BYTES}-byte limit for a config; is "
                          "this the right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc}); save the config as UTF-8") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; every problem is reported in one ConfigError."""
    path = Path(path)
    text = _read_text(path)
    return parse_config(text, str(path), path.resolve().parent)

