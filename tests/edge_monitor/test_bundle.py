"""Bundles: build, load (directory and .tar), score files like eval, refuse tampering."""

from __future__ import annotations

import csv
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import yaml
from onnx import TensorProto, helper, numpy_helper

from edge_monitor.cli import main as monitor_main
from edge_monitor.core.bundle import MANIFEST_NAME, load_bundle
from edge_monitor.core.errors import BundleError
from edge_monitor.core.scoring_config import ScoringConfig
from trainer.bundle_builder import ModelEntry, build_bundle, write_tar
from trainer.dcase_data import read_dataset
from trainer.embed_cache import EmbedOptions
from trainer.embedder_factory import make_embedder
from trainer.evaluate import evaluate_embeddings
from trainer.export import embed_clips

RATE_HZ = 16000
FRAME = 256
ONNX_DIM = 12


def _clip(rng: np.random.Generator, hum_hz: float, fault: bool) -> np.ndarray:
    t = np.arange(RATE_HZ) / RATE_HZ
    audio = 0.1 * np.sin(2 * np.pi * hum_hz * t) + 0.02 * rng.normal(size=t.size)
    if fault:
        audio += 0.1 * np.sin(2 * np.pi * 5200 * t)
    return audio.astype(np.float32)


def make_tree(root: Path) -> Path:
    """A one-section DCASE tree of 1 s clips: a hum, and a whistle as the anomaly."""
    rng = np.random.default_rng(3)
    hum = {"source": 120.0, "target": 160.0}
    plan = [("train", "source", "normal", 12), ("train", "target", "normal", 3),
            ("test", "source", "normal", 3), ("test", "source", "anomaly", 3),
            ("test", "target", "normal", 3), ("test", "target", "anomaly", 3)]
    for split, domain, label, count in plan:
        for i in range(count):
            path = root / "fan" / split / f"section_00_{domain}_{split}_{label}_{i:04d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, _clip(rng, hum[domain] * rng.uniform(0.97, 1.03), label == "anomaly"),
                     RATE_HZ)
    return root


def make_onnx(path: Path, dim: int = ONNX_DIM) -> Path:
    """A real waveform-in ONNX model: framed projection, magnitude, mean over time."""
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(dim, 1, FRAME)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["wave", "axis"], ["x"]),
            helper.make_node("Conv", ["x", "kernel"], ["frames"], strides=[FRAME]),
            helper.make_node("Abs", ["frames"], ["mag"]),
            helper.make_node("ReduceMean", ["mag", "time"], ["embedding"], keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("wave", TensorProto.FLOAT, [1, "samples"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, dim])],
        [numpy_helper.from_array(kernel, "kernel"),
         numpy_helper.from_array(np.array([1], np.int64), "axis"),
         numpy_helper.from_array(np.array([2], np.int64), "time")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def onnx_entry(path: Path) -> ModelEntry:
    return ModelEntry("tiny", "onnx", RATE_HZ, 1.0, ONNX_DIM, file=path)


def logmel_entry() -> ModelEntry:
    return ModelEntry("logmel-stats", "builtin", RATE_HZ, 10.0, 256, builtin="logmel-stats")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bundle")
    data = make_tree(base / "data")
    model = make_onnx(base / "tiny.onnx")
    clips = read_dataset(data)
    bundle = build_bundle(base / "bundle", [onnx_entry(model)], clips, ScoringConfig(k=2), 0.1)
    return data, bundle


def _tampered(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    return copy


def _edit_manifest(root: Path, change) -> None:
    path = root / MANIFEST_NAME
    manifest = yaml.safe_load(path.read_text())
    change(manifest)
    path.write_text(yaml.safe_dump(manifest))


def test_builtin_bundle_scores_files_exactly_as_eval(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "data")
    clips = read_dataset(data)
    scoring = ScoringConfig(k=2)
    bundle = build_bundle(tmp_path / "b", [logmel_entry()], clips, scoring, 0.1)
    test = [c for c in clips if c.split == "test"]
    out = tmp_path / "scores.csv"
    assert monitor_main(["score", "--bundle", str(bundle), "--out", str(out),
                         *[str(c.path) for c in test]]) == 0
    with open(out) as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["filename", "score"]
    edge = {name: float(score) for name, score in rows[1:]}
    embedder = make_embedder("logmel-stats")
    train = [c for c in clips if c.split == "train"]
    options = EmbedOptions()
    result = evaluate_embeddings(train, embed_clips(embedder, train, options),
                                 test, embed_clips(embedder, test, options), {"knn": scoring})
    trainer_scores = {c.file_name: s for c, s in
                      zip(result.sections[0].clips, result.sections[0].scores, strict=True)}
    assert edge.keys() == trainer_scores.keys()
    assert max(abs(edge[k] - trainer_scores[k]) for k in edge) < 1e-6


def test_onnx_bundle_loads_from_dir_and_tar(built: tuple[Path, Path], tmp_path: Path) -> None:
    data, bundle = built
    detector = load_bundle(bundle).detectors(["cpu"], threads=1)["fan"]
    archive = write_tar(bundle, tmp_path / "bundle.tar")
    from_tar = load_bundle(archive, extract_to=tmp_path / "state").detectors()["fan"]
    reloaded = load_bundle(archive, extract_to=tmp_path / "state")  # a reload reuses its dir
    assert [p.name for p in (tmp_path / "state").iterdir()] == [reloaded.root.name]
    clip = next((data / "fan" / "test").glob("*anomaly*"))
    audio, _ = sf.read(clip, dtype="float32")
    a, b = detector.score(audio), from_tar.score(audio)
    assert np.isfinite(a.score) and a.score == pytest.approx(b.score, abs=1e-9)
    manifest = load_bundle(bundle).manifest
    assert detector.threshold == pytest.approx(manifest.machines["fan"].threshold)


def test_tar_members_modes_and_owners_are_not_taken_over(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    """A tar written with mode 0700 directories and 0600 files by another user still loads
    readable, and extraction needs no tarfile filter (absent before Python 3.11.4)."""
    _, bundle = built

    def restrictive(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mode = 0o700 if info.isdir() else 0o600
        info.uid, info.gid, info.uname, info.gname = 4242, 4242, "someone", "else"
        return info

    archive = tmp_path / "private.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(bundle, arcname=bundle.name, filter=restrictive)
    loaded = load_bundle(archive, extract_to=tmp_path / "state")
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.stat().st_mode & 0o777 for p in loaded.root.rglob("*") if p.is_file()}
    assert modes == {0o666 & ~umask}  # what any new file gets here, not the archive's 0600
    assert "fan" in loaded.detectors()


def test_tampered_model_file_is_refused(built: tuple[Path, Path], tmp_path: Path) -> None:
    copy = _tampered(built[1], tmp_path)
    model = copy / "models" / "tiny.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    with pytest.raises(BundleError, match="checksum mismatch") as err:
        load_bundle(copy)
    assert str(model) in str(err.value) and err.value.exit_code == 2


def test_tampered_bank_is_refused(built: tuple[Path, Path], tmp_path: Path) -> None:
    copy = _tampered(built[1], tmp_path)
    bank_json = copy / "banks" / "fan" / "tiny" / "bank.json"
    bank_json.write_text(bank_json.read_text().replace('"count"', '"count" ', 1))
    with pytest.raises(BundleError, match="checksum mismatch") as err:
        load_bundle(copy)
    assert str(bank_json) in str(err.value)


def test_wrong_dimension_is_refused(built: tuple[Path, Path], tmp_path: Path) -> None:
    copy = _tampered(built[1], tmp_path)
    _edit_manifest(copy, lambda m: m["models"]["tiny"].update(dim=ONNX_DIM + 1))
    with pytest.raises(BundleError, match="dimension") as err:
        load_bundle(copy)
    assert "bank.json" in str(err.value)


def test_model_output_dimension_is_checked(built: tuple[Path, Path], tmp_path: Path) -> None:
    copy = _tampered(built[1], tmp_path)
    model = copy / "models" / "tiny.onnx"
    make_onnx(model, dim=ONNX_DIM + 2)
    from edge_monitor.core.bank import sha256_file

    _edit_manifest(copy, lambda m: m["models"]["tiny"].update(sha256=sha256_file(model)))
    bundle = load_bundle(copy)
    with pytest.raises(BundleError, match="14-dimensional") as err:
        bundle.detectors()
    assert str(model) in str(err.value)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m.update(format_version=99), "format_version 99 is not supported"),
        (lambda m: m.update(min_runtime_version="99.0"), "newer than this edge-monitor"),
        (lambda m: m.update(surprise=1), "surprise"),
        (lambda m: m["models"]["tiny"].update(file="../../etc/passwd"), "leaves the bundle"),
    ],
)
def test_bad_manifest_is_refused(built: tuple[Path, Path], tmp_path: Path, change, reason) -> None:
    copy = _tampered(built[1], tmp_path)
    _edit_manifest(copy, change)
    with pytest.raises(BundleError, match=reason) as err:
        load_bundle(copy)
    assert str(copy / MANIFEST_NAME) in str(err.value)


def test_tar_with_path_traversal_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "payload"
    payload.write_text("x")
    with tarfile.open(evil, "w") as tar:
        tar.add(payload, arcname="../outside.txt")
    with pytest.raises(BundleError, match="outside the bundle") as err:
        load_bundle(evil, extract_to=tmp_path / "state")
    assert str(evil) in str(err.value)
    assert not (tmp_path / "outside.txt").exists()


def test_score_cli_reports_bad_bundle_with_exit_code_2(tmp_path: Path, capsys) -> None:
    code = monitor_main(["score", "--bundle", str(tmp_path / "missing"), "--out",
                         str(tmp_path / "s.csv"), str(tmp_path / "x.wav")])
    assert code == 2 and "missing" in capsys.readouterr().err


def test_ensemble_bundle_fuses_like_acp(built: tuple[Path, Path], tmp_path: Path) -> None:
    """Two models with weights: the edge's fused score is ACP's standardised weighted sum."""
    from dataclasses import replace

    from edge_monitor.core.audio_io import read_audio
    from edge_monitor.core.detector import ScoreNorm
    from edge_monitor.core.preprocess import preprocess
    from edge_monitor.core.scoring import BankScorer

    data, _ = built
    clips = read_dataset(data)
    entries = [replace(logmel_entry(), weight=0.3),
               replace(onnx_entry(make_onnx(tmp_path / "tiny.onnx")), weight=0.7, window_s=10.0)]
    with pytest.raises(BundleError, match="window_s"):
        build_bundle(tmp_path / "mixed", [logmel_entry(), onnx_entry(tmp_path / "tiny.onnx")],
                     clips, ScoringConfig(k=2), 0.1)
    bundle = load_bundle(build_bundle(tmp_path / "ens", entries, clips, ScoringConfig(k=2), 0.1))
    detector = bundle.detectors()["fan"]
    clip = next((data / "fan" / "test").glob("*anomaly*"))
    audio = read_audio(clip, 16000)
    conditioned = preprocess(audio, 16000).audio
    expected = 0.0
    for member, weight in zip(detector.members, (0.3, 0.7), strict=True):
        bank = bundle.banks["fan"][member.name]
        raw = BankScorer(bank).score(member.embedder.embed(conditioned)[None, :])[0]
        expected += weight * ScoreNorm.from_loo(bank.loo_scores).apply(raw)
    assert detector.score(audio).score == pytest.approx(expected, abs=1e-9)
    assert set(detector.score(audio).embeddings) == {"logmel-stats", "tiny"}
