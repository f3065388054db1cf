"""One exception hierarchy for the runtime, so the CLI can map every failure to an exit code.

Every message says what failed, the offending value or file, and how to fix it.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_RUNTIME_FAILURE = 1


class EdgeMonitorError(Exception):
    """Base of every error the runtime raises on purpose."""

    exit_code = EXIT_RUNTIME_FAILURE


class BadInputError(EdgeMonitorError):
    """Input given by a user (file, config, argument, payload) is wrong; exit code 2."""

    exit_code = EXIT_BAD_INPUT


class AudioFileError(BadInputError):
    """An audio file cannot be read or decoded."""


class ConfigError(BadInputError):
    """A configuration file or value is invalid."""


class BankError(BadInputError):
    """A memory bank on disk is missing, corrupt, truncated or inconsistent."""


class BundleError(BadInputError):
    """A model bundle is missing, tampered with or incompatible."""


class DatasetError(BadInputError):
    """A data set tree or file name does not follow the expected layout."""


class StorageError(EdgeMonitorError):
    """A file could not be written (disk full, read-only mount, permissions); what was
    there before is left as it was."""


class RuntimeUnavailableError(EdgeMonitorError):
    """An optional inference runtime (onnxruntime, TFLite) is not installed."""


def shown(value: object, limit: int = 60) -> str:
    """A value quoted in an error message (repr), cut short: a hostile input can be huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's text on one line, cut short: parsers (YAML, onnxruntime, libsndfile)
    write several lines, and a refusal is one line a person reads."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
