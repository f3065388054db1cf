"""Hypothesis strategies and contracts for the file surfaces: bundles (manifests, damaged
model and bank files, links, .tar) and audio files. Shared by test_fuzz_files.py (the
bounded CI profile, loaded by fuzz_support) and tools/fuzz.py (the long profile, counts).

Every input starts from real parts: a real bundle (a small ONNX model with its banks,
built once per process with the trainer's own builder) and real audio files written by
soundfile, then damaged.

Contracts (anything else raises fuzz_support.ContractBroken):
- a bundle loads, builds its detectors and scores a window, or is refused with one short
  line of the project's error type, exit code 2 (1 only for a runtime that is not
  installed); a window that fails to score is the daemon's model-error `fault`. Loading
  never writes into the bundle, and leaves no thread behind;
- an audio file is read (`read_audio`: finite mono samples) or refused with one short
  AudioFileError line; the replay source agrees (it plays the file, or reports it in the
  stream as a fault and counts it), its chunks are finite, its thread ends, the file is
  unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml
from fuzz_support import MAX_ERROR_LINE_CHARS, ContractBroken, _like, _section, values
from hypothesis import strategies as st

from edge_monitor.audio_in.replay import ReplaySource
from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.bank import MANIFEST_NAME as BANK_JSON
from edge_monitor.core.bank import sha256_file
from edge_monitor.core.bundle import MANIFEST_NAME, Manifest, load_bundle
from edge_monitor.core.errors import AudioFileError, EdgeMonitorError, RuntimeUnavailableError
from edge_monitor.core.preprocess import PreprocessConfig, check_input

RATE_HZ = 16000
REPLAY_LIMIT_S = 20.0  # one file's replay taking longer than this is a hang


# A real bundle, built once ---------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def base_bundle() -> Path:
    """A real bundle (tiny ONNX model, banks of the fan tree) in a temp dir of this process."""
    from test_bundle import make_onnx, make_tree, onnx_entry

    from edge_monitor.core.scoring_config import ScoringConfig
    from trainer.bundle_builder import build_bundle
    from trainer.dcase_data import read_dataset

    base = Path(tempfile.mkdtemp(prefix="fuzz-bundle-"))
    data = make_tree(base / "data")
    entry = onnx_entry(make_onnx(base / "tiny.onnx"))
    return build_bundle(base / "bundle", [entry], read_dataset(data), ScoringConfig(k=2), 0.1)


def _manifest() -> dict[str, Any]:
    return yaml.safe_load((base_bundle() / MANIFEST_NAME).read_text())


def _leaves(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(data, dict) and data:
        return [leaf for k, v in data.items() for leaf in _leaves(v, (*prefix, k))]
    return [prefix]


# Manifests ------------------------------------------------------------------------------

@st.composite
def near_manifests(draw: st.DrawFn) -> str:
    """The real manifest with one to three keys given hostile values, deleted, or a key
    added, so that every check past the schema is reached too."""
    data = _manifest()
    leaves = _leaves(data)
    for _ in range(draw(st.integers(1, 3))):
        *parents, last = draw(st.sampled_from(leaves))
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        action = draw(st.sampled_from(["value", "value", "like", "delete", "add"]))
        if action == "delete":
            node.pop(last, None)
        elif action == "add":
            node[draw(st.text(max_size=12))] = draw(values)
        elif action == "like":
            node[last] = draw(_like(node.get(last)))
        else:
            node[last] = draw(values)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def manifest_texts() -> st.SearchStrategy[str]:
    """Near-valid manifests, schema-shaped mappings with hostile values, and YAML noise."""
    shaped = st.one_of(_section(Manifest), values).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True, sort_keys=False))
    noise = st.text(st.sampled_from(list("[]{}:-&*!|>'\"#%@ \n\t.0a")), max_size=200)
    return st.one_of(near_manifests(), near_manifests(), shaped, noise)


# Damaged bundle files ----------------------------------------------------------------------

FILES = ("manifest.yaml", "models/tiny.onnx", "banks/fan/tiny/bank.json",
         "banks/fan/tiny/index.usearch", "banks/fan/tiny/meta.npz")
DIRS = ("models", "banks", "banks/fan", "banks/fan/tiny")
LINK_TARGETS = ("/etc/shadow", "/etc/passwd", "/dev/zero", "outside", "..", "nowhere",
                "models/tiny.onnx", ".")


@dataclass(frozen=True)
class Damage:
    """One change to a copy of the real bundle."""

    target: str
    action: str  # truncate | garbage | flip | empty | append | symlink | hardlink | fifo |
    #              delete | to-dir | to-file
    fraction: float = 0.5
    data: bytes = b""
    link_to: str = ""


damages = st.one_of(
    st.builds(Damage, st.sampled_from(FILES),
              st.sampled_from(["truncate", "garbage", "flip", "empty", "append", "symlink",
                               "hardlink", "fifo", "delete", "to-dir"]),
              st.floats(0, 1), st.binary(max_size=512), st.sampled_from(LINK_TARGETS)),
    st.builds(Damage, st.sampled_from(DIRS), st.sampled_from(["symlink", "to-file", "delete"]),
              st.floats(0, 1), st.binary(max_size=64), st.sampled_from(LINK_TARGETS)),
)


@dataclass(frozen=True)
class DamagedBundle:
    damages: tuple[Damage, ...]
    repin: bool  # recompute the checksums, so the parsers see the damaged bytes
    as_tar: bool


damaged_bundles = st.builds(DamagedBundle, st.lists(damages, min_size=1, max_size=3).map(tuple),
                            st.booleans(), st.booleans())


def _apply(root: Path, outside: Path, damage: Damage) -> None:
    path = root / damage.target
    parent = path.parent
    while parent != root:
        if parent.is_symlink() or not parent.is_dir():
            return  # an earlier damage removed or replaced the directory this one is in
        parent = parent.parent
    exists = path.exists() or path.is_symlink()
    if damage.action in ("truncate", "garbage", "flip", "empty", "append"):
        if not path.is_file() or path.is_symlink():
            return
        data = path.read_bytes()
        cut = int(len(data) * damage.fraction)
        if damage.action == "truncate":
            data = data[:cut]
        elif damage.action == "garbage":
            data = damage.data or b"\xff"
        elif damage.action == "flip" and data:
            at = min(cut, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
        elif damage.action == "empty":
            data = b""
        else:
            data = data + damage.data
        path.write_bytes(data)
        return
    if exists:  # every other action replaces what is there
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if damage.action == "symlink":
        target = outside if damage.link_to == "outside" else Path(damage.link_to)
        path.symlink_to(target)
    elif damage.action == "hardlink":
        (outside / "secret").write_bytes(damage.data or b"secret")
        os.link(outside / "secret", path)
    elif damage.action == "fifo":
        os.mkfifo(path)
    elif damage.action == "to-dir":
        path.mkdir()
    elif damage.action == "to-file":
        path.write_bytes(damage.data)


def _repin(root: Path) -> None:
    """Make the checksums match the damaged files again (an attacker who edits the manifest
    too), so that the model and bank parsers are reached."""
    bank_json = root / "banks/fan/tiny" / BANK_JSON
    manifest_path = root / MANIFEST_NAME
    try:
        bank = json.loads(bank_json.read_text())
        for name in bank.get("files", {}):
            if (bank_json.parent / name).is_file():
                bank["files"][name] = sha256_file(bank_json.parent / name)
        bank_json.write_text(json.dumps(bank))
        manifest = yaml.safe_load(manifest_path.read_text())
        manifest["models"]["tiny"]["sha256"] = sha256_file(root / "models/tiny.onnx")
        manifest["machines"]["fan"]["banks"]["tiny"]["sha256"] = sha256_file(bank_json)
        manifest_path.write_text(yaml.safe_dump(manifest))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return  # too damaged to re-pin: loaded as it is


def build_damaged(spec: DamagedBundle, work: Path) -> Path:
    """A damaged copy of the real bundle under `work` (a directory, or a .tar of it)."""
    root = work / "bundle"
    shutil.copytree(base_bundle(), root)
    outside = work / "outside"
    outside.mkdir()
    for damage in spec.damages:
        if damage.action not in ("symlink", "hardlink", "fifo"):
            _apply(root, outside, damage)
    if spec.repin:
        _repin(root)
    for damage in spec.damages:  # links last, so re-pinning never reads through them
        if damage.action in ("symlink", "hardlink", "fifo"):
            _apply(root, outside, damage)
    if not spec.as_tar:
        return root
    archive = work / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="bundle")  # links and FIFOs go in as such
    return archive


def manifest_bundle(text: str, work: Path) -> Path:
    root = work / "bundle"
    shutil.copytree(base_bundle(), root)
    (root / MANIFEST_NAME).write_text(text, encoding="utf-8", errors="surrogatepass")
    return root


# Bundle contract -------------------------------------------------------------------------

def _tree_state(path: Path) -> dict[str, str]:
    """What is at `path`, entry by entry (links by target, files by content), to tell
    whether loading changed anything."""
    state: dict[str, str] = {}
    entries = [path] if path.is_file() else [path, *sorted(path.rglob("*"))]
    for entry in entries:
        key = str(entry.relative_to(path)) if entry != path else "."
        if entry.is_symlink():
            state[key] = f"link {os.readlink(entry)}"
        elif entry.is_fifo():
            state[key] = "fifo"
        elif entry.is_file():
            state[key] = hashlib.sha256(entry.read_bytes()).hexdigest()
        else:
            state[key] = "dir" if entry.is_dir() else "other"
    return state


def refused(exc: EdgeMonitorError) -> str:
    """'refused' when `exc` is one short line with the right exit code, else ContractBroken."""
    message = str(exc)
    allowed = (1, 2) if isinstance(exc, RuntimeUnavailableError) else (2,)
    if exc.exit_code not in allowed:
        raise ContractBroken(f"exit code {exc.exit_code}, not 2: {message[:300]}") from exc
    if not message or "\n" in message or len(message) > MAX_ERROR_LINE_CHARS:
        raise ContractBroken(f"error is not one short line ({len(message)} characters): "
                             f"{message[:200]!r}...{message[-200:]!r}") from exc
    return "refused"


def _threads_settled(before: set[threading.Thread]) -> None:
    for _ in range(100):
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            return
        time.sleep(0.01)
    raise ContractBroken(f"dead thread: {[t.name for t in extra]} left running")


def check_bundle(path: Path, scratch: Path) -> str:
    """Load, build detectors and score one window; 'ok', 'fault' (the window did not score:
    the daemon's model-error fault) or 'refused', else ContractBroken."""
    before = _tree_state(path)
    threads = set(threading.enumerate())
    outcome = "ok"
    try:
        bundle = load_bundle(path, extract_to=scratch)
        embedders = bundle.embedders(threads=1)
        detectors = bundle.detectors(threads=1, embedders=embedders)
        window = 0.1 * np.random.default_rng(0).standard_normal(RATE_HZ).astype(np.float32)
        for detector in detectors.values():
            try:
                score = detector.score(window[: int(detector.window_s * RATE_HZ)]).score
                if not np.isfinite(score):
                    outcome = "fault"
            except Exception:  # the daemon's Machine._score: any model failure is a fault
                outcome = "fault"
    except EdgeMonitorError as exc:
        outcome = refused(exc)
    except Exception as exc:
        raise ContractBroken(f"traceback: {type(exc).__name__}: {str(exc)[:300]}") from exc
    if _tree_state(path) != before:
        raise ContractBroken(f"changed state: loading changed {path}")
    _threads_settled(threads)
    return outcome


def check_manifest_text(text: str) -> str:
    with tempfile.TemporaryDirectory() as work:
        return check_bundle(manifest_bundle(text, Path(work)), Path(work) / "scratch")


def check_damaged_bundle(spec: DamagedBundle) -> str:
    with tempfile.TemporaryDirectory() as work:
        return check_bundle(build_damaged(spec, Path(work)), Path(work) / "scratch")


# Audio files -------------------------------------------------------------------------------

RATES = (1, 100, 7350, 8000, 15999, 16000, 22050, 44100, 48000, 96000, 384000, 384001, 655350)
SUBTYPES = {"WAV": ("PCM_16", "PCM_24", "FLOAT", "DOUBLE", "PCM_U8"),
            "FLAC": ("PCM_16", "PCM_24", "PCM_S8")}


@dataclass(frozen=True)
class AudioSpec:
    """One audio file: how it is written, what it holds, and how it is then damaged."""

    fmt: str
    subtype_index: int
    rate: int
    channels: int
    frames: int
    content: str  # noise | zeros | tone | nan | inf | huge | full-scale
    damage: str  # none | truncate | flip | garbage-header | append | garbage
    fraction: float
    suffix: str


audio_specs = st.builds(
    AudioSpec,
    st.sampled_from(sorted(SUBTYPES)),
    st.integers(0, 4),
    st.one_of(st.sampled_from(RATES), st.integers(16_000, 384_000), st.integers(1, 700_000)),
    st.integers(1, 3),
    st.one_of(st.integers(0, 64), st.integers(0, 40_000)),
    st.sampled_from(["noise", "noise", "zeros", "tone", "nan", "inf", "huge", "full-scale"]),
    st.sampled_from(["none"] * 5 + ["truncate", "flip", "garbage-header", "append", "garbage"]),
    st.floats(0, 1),
    st.sampled_from([".wav", ".flac", ".WAV"]),
)


def _content(spec: AudioSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.frames)
    shape = (spec.frames, spec.channels)
    if spec.content == "zeros":
        return np.zeros(shape)
    if spec.content == "tone":
        return np.repeat(0.3 * np.sin(np.arange(spec.frames) * 0.05)[:, None], spec.channels, 1)
    audio = 0.1 * rng.standard_normal(shape)
    if spec.content in ("nan", "inf") and spec.frames:
        audio[rng.integers(0, spec.frames)] = np.nan if spec.content == "nan" else np.inf
    elif spec.content == "huge":
        audio *= 1e30
    elif spec.content == "full-scale":
        audio = np.sign(audio)
    return audio


def write_audio_file(spec: AudioSpec, directory: Path) -> Path:
    """The file `spec` describes; when soundfile cannot write it (a rate FLAC cannot hold),
    the bytes of what it could write go with a garbage header instead."""
    path = directory / f"clip{spec.suffix}"
    subtypes = SUBTYPES[spec.fmt]
    try:
        sf.write(path, _content(spec), spec.rate, format=spec.fmt,
                 subtype=subtypes[spec.subtype_index % len(subtypes)])
    except (sf.LibsndfileError, ValueError, RuntimeError, TypeError, AssertionError):
        # soundfile refuses the rate or format, or asserts on NaN into FLAC
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64))
    data = path.read_bytes()
    cut = int(len(data) * spec.fraction)
    if spec.damage == "truncate":
        data = data[:cut]
    elif spec.damage == "flip" and data:
        at = min(cut, len(data) - 1)
        data = data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1:]
    elif spec.damage == "garbage-header":
        data = np.random.default_rng(cut).bytes(min(64, len(data))) + data[64:]
    elif spec.damage == "append":
        data = data + np.random.default_rng(cut).bytes(1 + cut % 4096)
    elif spec.damage == "garbage":
        data = np.random.default_rng(cut).bytes(cut % 20_000)
    path.write_bytes(data)
    return path


def _replay(path: Path) -> tuple[list[np.ndarray], int, ReplaySource]:
    source = ReplaySource([path], RATE_HZ, realtime=False, block_s=0.1)
    chunks: list[np.ndarray] = []
    faults = 0
    deadline = time.monotonic() + REPLAY_LIMIT_S
    source.start()
    try:
        while not source.finished:
            if time.monotonic() > deadline:
                raise ContractBroken(f"hang: the replay of {path.name} did not finish")
            chunk = source.get(timeout_s=0.05)
            if chunk is None:
                continue
            if chunk.fault is not None:
                faults += 1
            else:
                chunks.append(chunk.frames)
    finally:
        source.stop()
    return chunks, faults, source


def check_audio_file(path: Path) -> str:
    """'ok' (read and replayed alike) or 'fault' (refused by read_audio, reported in the
    replay stream as a fault), else ContractBroken."""
    before = path.read_bytes()
    threads = set(threading.enumerate())
    try:
        audio: np.ndarray | None = read_audio(path, RATE_HZ)
        error = None
    except AudioFileError as exc:
        refused(exc)
        audio, error = None, str(exc)
    except Exception as exc:
        raise ContractBroken(f"traceback: read_audio: {type(exc).__name__}: "
                             f"{str(exc)[:300]}") from exc
    if audio is not None:
        if audio.ndim != 1 or audio.dtype != np.float32 or not np.all(np.isfinite(audio)):
            raise ContractBroken(f"traceback: read_audio gave {audio.dtype} {audio.shape} "
                                 "or non-finite samples")
        check_input(audio, PreprocessConfig()).problem(PreprocessConfig())
    try:
        chunks, faults, source = _replay(path)
    except ContractBroken:
        raise
    except Exception as exc:
        raise ContractBroken(f"traceback: replay: {type(exc).__name__}: {str(exc)[:300]}") from exc
    if source.fault is not None and "replay failed" in source.fault:
        raise ContractBroken(f"dead thread: the replay thread died: {source.fault[:300]}")
    if any(not np.all(np.isfinite(c)) for c in chunks):
        raise ContractBroken("traceback: the replay delivered non-finite samples")
    if (error is None) != (faults == 0) or faults != source.stats().skipped_files:
        verdict = "accepted" if error is None else repr(error)
        raise ContractBroken(f"wrong exit codes: read_audio {verdict} but the replay reported "
                             f"{faults} fault(s)")
    if path.read_bytes() != before:
        raise ContractBroken(f"changed state: reading changed {path.name}")
    _threads_settled(threads)
    return "ok" if error is None else "fault"


def check_audio_spec(spec: AudioSpec) -> str:
    with tempfile.TemporaryDirectory() as work:
        return check_audio_file(write_audio_file(spec, Path(work)))


# Audio files through the daemon ------------------------------------------------------------

def check_audio_daemon(spec: AudioSpec) -> str:
    """A back-test of the file by a real daemon (built-in model, no MQTT): exit 0 with the
    file judged, or, when `read_audio` refuses it, exit 2 with the machine left in `fault`
    (unreadable input). A daemon error, another exit code or a thread left running breaks
    the contract."""
    from daemon_support import DaemonThread, small_config, write_config

    with tempfile.TemporaryDirectory() as work:
        path = write_audio_file(spec, Path(work))
        try:
            read_audio(path, RATE_HZ)
            readable = True
        except AudioFileError:
            readable = False
        threads = set(threading.enumerate())
        daemon = DaemonThread(write_config(Path(work), small_config(Path(work), [path])))
        try:
            rc = daemon.wait(60)
        except Exception as exc:
            raise ContractBroken(f"traceback: the daemon raised {type(exc).__name__}: "
                                 f"{str(exc)[:300]}") from exc
        if rc is None:
            daemon.stop()
            raise ContractBroken(f"hang: the back-test of {path.name} did not end")
        processor = daemon.daemon.processor
        if processor is None or processor.error is not None:
            raise ContractBroken(f"dead thread: the processing loop failed: "
                                 f"{getattr(processor, 'error', None)!r}"[:300])
        machine = processor.snapshot()["machines"]["pump"]
        if rc != (0 if readable else 2):
            raise ContractBroken(f"wrong exit codes: {rc} for a file read_audio "
                                 f"{'accepts' if readable else 'refuses'}")
        if not readable and not (machine["status"] == "fault"
                                 and str(machine["reason"]).startswith("unreadable input")):
            raise ContractBroken(f"wrong exit codes: an unreadable file left the machine "
                                 f"{machine['status']} ({machine['reason']})")
        _threads_settled(threads)
        return "ok" if readable else "fault"
