"""Bundles that must be refused (issue 12): numbers out of bounds, versions that are not
versions, links and special files, a bundle another user cannot read. Each is one line
naming the file or key, before anything is allocated or any linked file is opened."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_bundle import _edit_manifest, _tampered, make_onnx, make_tree, onnx_entry

from edge_monitor.core.bundle import MANIFEST_NAME, load_bundle
from edge_monitor.core.errors import BundleError
from edge_monitor.core.scoring_config import ScoringConfig
from trainer.bundle_builder import build_bundle
from trainer.dcase_data import read_dataset

REPO = Path(__file__).resolve().parents[2]
OPENED: list[str] = []  # every path opened while `_recording_opens` is on
_RECORDING = [False]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data tree, bundle) of the tiny real ONNX model over the fan tree."""
    base = tmp_path_factory.mktemp("hostile")
    data = make_tree(base / "data")
    entry = onnx_entry(make_onnx(base / "tiny.onnx"))
    bundle = build_bundle(base / "bundle", [entry], read_dataset(data), ScoringConfig(k=2), 0.1)
    return data, bundle


def _on_audit(event: str, args: tuple) -> None:
    if _RECORDING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_on_audit)  # Python's own audit events: every open() and os.open()


def _load_recording_opens(path: Path) -> None:
    OPENED.clear()
    _RECORDING[0] = True
    try:
        load_bundle(path)
    finally:
        _RECORDING[0] = False


def _refused(root: Path, *needles: str) -> str:
    with pytest.raises(BundleError) as err:
        load_bundle(root)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 2
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -1.0, 0.0, "0.5"])
def test_threshold_that_never_or_always_alarms_is_refused(built, tmp_path, value) -> None:
    copy = _tampered(built[1], tmp_path)
    _edit_manifest(copy, lambda m: m["machines"]["fan"].update(threshold=value))
    _refused(copy, str(copy / MANIFEST_NAME), "machines.fan.threshold", "leave-one-out threshold")


@pytest.mark.parametrize(
    ("key", "value"),
    [("window_s", 1e9), ("window_s", float("nan")), ("window_s", 0.01),
     ("sample_rate_hz", 1), ("sample_rate_hz", 7350), ("sample_rate_hz", 10**9),
     ("dim", 10**9), ("weight", float("inf")), ("weight", -1.0)],
)
def test_model_numbers_out_of_bounds_are_refused(built, tmp_path, key, value) -> None:
    copy = _tampered(built[1], tmp_path)
    _edit_manifest(copy, lambda m: m["models"]["tiny"].update({key: value}))
    _refused(copy, str(copy / MANIFEST_NAME), f"models.tiny.{key}")


@pytest.mark.parametrize(
    ("change", "needle"),
    [({"target_lufs": float("nan")}, "preprocess.target_lufs"),
     ({"clip_level": 7.0}, "preprocess.clip_level"),
     ({"gain": 1.0}, "preprocess.gain"),
     ({"silence_dbfs": "loud"}, "preprocess.silence_dbfs")],
)
def test_preprocess_values_are_bounded_as_in_the_config(built, tmp_path, change, needle) -> None:
    copy = _tampered(built[1], tmp_path)
    _edit_manifest(copy, lambda m: m.setdefault("preprocess", {}).update(change))
    _refused(copy, needle)


@pytest.mark.parametrize("version", ["abc", "1..2", "", "0.1.0-!"])
def test_min_runtime_version_that_is_not_a_version_is_refused(built, tmp_path, version) -> None:
    copy = _tampered(built[1], tmp_path)
    _edit_manifest(copy, lambda m: m.update(min_runtime_version=version))
    _refused(copy, "min_runtime_version", "is not a version (PEP 440")


def test_a_prerelease_version_compares_as_a_version(built, tmp_path) -> None:
    copy = _tampered(built[1], tmp_path)
    _edit_manifest(copy, lambda m: m.update(min_runtime_version="0.1.0rc1"))
    assert load_bundle(copy).manifest.min_runtime_version == "0.1.0rc1"
    _edit_manifest(copy, lambda m: m.update(min_runtime_version="0.1.1.dev0"))
    _refused(copy, "newer than this edge-monitor")


def test_model_linked_to_a_secret_is_refused_before_it_is_opened(built, tmp_path) -> None:
    copy = _tampered(built[1], tmp_path)
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret\n")
    model = copy / "models" / "tiny.onnx"
    model.unlink()
    model.symlink_to(secret)
    with pytest.raises(BundleError, match="symbolic link") as err:
        _load_recording_opens(copy)
    assert str(model) in str(err.value) and "cp -rL" in str(err.value)
    assert str(secret) not in OPENED and str(model) not in OPENED
    assert not any(p.startswith(str(copy)) for p in OPENED)  # not even the manifest


def test_model_linked_to_etc_shadow_is_refused(built, tmp_path) -> None:
    copy = _tampered(built[1], tmp_path)
    model = copy / "models" / "tiny.onnx"
    model.unlink()
    model.symlink_to("/etc/shadow")
    _refused(copy, str(model), "/etc/shadow", "symbolic link")


def test_bank_directory_linked_out_of_the_bundle_is_refused(built, tmp_path) -> None:
    copy = _tampered(built[1], tmp_path)
    bank = copy / "banks" / "fan" / "tiny"
    outside = tmp_path / "outside-bank"
    shutil.move(bank, outside)
    bank.symlink_to(outside, target_is_directory=True)
    _refused(copy, str(bank), "symbolic link")


def test_hard_linked_model_is_refused(built, tmp_path) -> None:
    copy = _tampered(built[1], tmp_path)
    model = copy / "models" / "tiny.onnx"
    os.link(model, tmp_path / "second-name.onnx")
    _refused(copy, str(model), "hard link")


def test_fifo_inside_the_bundle_is_refused_without_blocking(built, tmp_path) -> None:
    copy = _tampered(built[1], tmp_path)
    os.mkfifo(copy / "models" / "extra")
    _refused(copy, "special file")


def test_bundle_root_may_itself_be_a_link(built, tmp_path) -> None:
    current = tmp_path / "current"
    current.symlink_to(built[1], target_is_directory=True)
    assert "fan" in load_bundle(current).banks


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE])
def test_tar_with_a_link_or_special_member_is_refused(built, tmp_path, kind) -> None:
    archive = tmp_path / "linked.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(built[1], arcname="bundle")
        link = tarfile.TarInfo("bundle/models/extra")
        link.type, link.linkname = kind, "/etc/shadow"
        tar.addfile(link)
    with pytest.raises(BundleError, match="link or special file") as err:
        load_bundle(archive, extract_to=tmp_path / "state")
    assert "bundle/models/extra" in str(err.value)


def _without_root_powers() -> list[str]:
    """A command prefix that keeps uid 0 but drops the capabilities that let root read other
    users' files, so permission checks apply as to any daemon user."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to hand the bundle to another user")
    return [setpriv, "--inh-caps=-all",
            "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def test_bundle_another_user_cannot_read_is_one_clear_line(built, tmp_path) -> None:
    prefix = _without_root_powers()
    private = tmp_path / "private"
    shutil.copytree(built[1], private)
    for path in [private, *private.rglob("*")]:
        os.chown(path, 4242, 4242, follow_symlinks=False)
    private.chmod(0o700)
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(16000, np.float32), 16000)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "edge_monitor.cli", "score", "--bundle", str(private),
         "--out", str(tmp_path / "s.csv"), str(clip)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(errors) == 1, done.stderr
    assert str(private) in errors[0] and "permission denied" in errors[0].lower()
    assert "chmod -R a+rX" in errors[0]


# Found by tools/fuzz.py ----------------------------------------------------------------------

def _repin(root: Path) -> None:
    """Checksums made to match damaged bank files again, so that their parsers are reached."""
    import json

    from edge_monitor.core.bank import sha256_file

    bank_json = root / "banks" / "fan" / "tiny" / "bank.json"
    bank = json.loads(bank_json.read_text())
    bank["files"] = {name: sha256_file(bank_json.parent / name) for name in bank["files"]}
    bank_json.write_text(json.dumps(bank))
    _edit_manifest(root, lambda m: m["machines"]["fan"]["banks"]["tiny"].update(
        sha256=sha256_file(bank_json)))


@pytest.mark.parametrize("name", ["meta.npz", "index.usearch"])
def test_an_empty_bank_file_with_matching_checksums_is_refused(built, tmp_path, name) -> None:
    copy = _tampered(built[1], tmp_path)
    (copy / "banks" / "fan" / "tiny" / name).write_bytes(b"")  # np.load: EOFError
    _repin(copy)
    _refused(copy, name, "copy the bank again")


@pytest.mark.parametrize("text", [":", "a: [1, 2", "{\n\n\n", "\x00"])
def test_a_yaml_error_is_one_line(built, tmp_path, text) -> None:
    copy = _tampered(built[1], tmp_path)
    (copy / MANIFEST_NAME).write_text(text)
    _refused(copy, "not YAML")


def test_a_hostile_key_or_value_is_quoted_short(built, tmp_path) -> None:
    copy = _tampered(built[1], tmp_path)
    _edit_manifest(copy, lambda m: m.update({"a\nb" * 50: 1, "format_version": 1}))
    message = _refused(copy, "Extra inputs are not permitted")
    assert len(message) < 400
    _edit_manifest(copy, lambda m: m.update(format_version={"x" * 20_000: 1}))
    assert len(_refused(copy, "format_version")) < 400
