"""The built-in default: a bank learned from the first audio, saved, reused, relearned on change."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor.config.sections import QualityGateConfig
from edge_monitor.core.errors import BankError
from edge_monitor.core.preprocess import PreprocessConfig
from edge_monitor.demo.synth import FaultSegment, MachineSpec, synthesize, write_audio
from edge_monitor.enrolment.bank_store import BankStore
from edge_monitor.enrolment.manager import EnrolmentManager
from edge_monitor.pipeline.learning import (
    BankLearner,
    builtin_embedder,
    fingerprint,
    learned_detector,
    load_learned,
)

RATE = 16000
WINDOW_S = 1.0
N = int(RATE * WINDOW_S)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    """12 s of a normal machine, then 4 s with a bearing fault."""
    return synthesize(MachineSpec(seed=3), 16.0, RATE, [FaultSegment("bearing", 12.0, 16.0)])


def learner(tmp_path, seconds=5.0, scoring="knn") -> BankLearner:
    return BankLearner("pump", builtin_embedder(RATE, WINDOW_S), tmp_path, seconds, scoring,
                       PreprocessConfig())


def test_learns_non_overlapping_windows_skips_silence_and_scores_faults_higher(tmp_path, audio):
    lrn = learner(tmp_path)
    assert lrn.target_windows == 5
    hop = N // 4
    assert not lrn.add(np.zeros(N, np.float32), 0, N)  # silence is not learned
    assert lrn.skipped == 1
    done = False
    for start in range(N, 10 * N, hop):  # overlapping windows, as the daemon offers them
        done = lrn.add(audio[start:start + N], start, start + N)
        if done:
            break
    assert done and lrn.progress == 1.0
    # Only one window per window length was kept: 5 windows needed 5 window lengths of audio.
    assert start == 5 * N
    bank = lrn.build()
    assert len(bank) == 5 and set(bank.domains) == {"source"}
    detector = learned_detector("pump", lrn.embedder, bank, 0.01, PreprocessConfig())
    normal = [detector.score(audio[s:s + N]).score for s in range(7 * N, 11 * N, N)]
    faulty = [detector.score(audio[s:s + N]).score for s in range(12 * N, 16 * N, N)]
    assert max(normal) < min(faulty)
    assert min(faulty) > detector.threshold


def test_saved_bank_is_reused_and_relearned_when_settings_change(tmp_path, audio):
    lrn = learner(tmp_path)
    for start in range(0, 6 * N, N):
        lrn.add(audio[start:start + N], start, start + N)
    bank = lrn.build()
    expected = fingerprint(lrn.embedder, "knn", PreprocessConfig())
    again = load_learned(tmp_path, "pump", expected)
    assert again is not None and again.version == bank.version
    np.testing.assert_allclose(again.embeddings, bank.embeddings, atol=1e-6)
    # Another window length, variant or preprocessing: the saved bank no longer fits.
    other = fingerprint(builtin_embedder(RATE, 2.0), "knn", PreprocessConfig())
    assert load_learned(tmp_path, "pump", other) is None
    assert load_learned(tmp_path, "pump", {**expected, "scoring": "dads"}) is None
    assert load_learned(tmp_path, "fan", expected) is None
    # A corrupt bank is not used (it is relearned), never crashes the daemon.
    store = BankStore(tmp_path, "pump")
    (store.bank_dir("logmel-stats", bank.version) / "meta.npz").write_bytes(b"junk")
    assert load_learned(tmp_path, "pump", expected) is None


def test_build_refuses_too_little_audio(tmp_path, audio):
    lrn = learner(tmp_path)
    lrn.add(audio[:N], 0, N)
    with pytest.raises(BankError, match="only 1 windows learned"):
        lrn.build()


def test_learned_bank_is_the_base_of_the_one_bank_store(tmp_path, audio):
    """Learning seeds the store that enrolment commits to and rollback pops: after an
    enrolment and a rollback the learned bank serves again, and a relearn with other
    settings reseeds the store, its history kept."""
    lrn = learner(tmp_path)
    for start in range(0, 6 * N, N):
        lrn.add(audio[start:start + N], start, start + N)
    bank = lrn.build()
    store = BankStore(tmp_path, "pump")
    assert store.pointer()["base"] == store.pointer()["current"] == {"logmel-stats": bank.version}
    running = {"pump": lrn.detector(bank, 0.05)}
    manager = EnrolmentManager(tmp_path, running.get, running.__setitem__,
                               gate=QualityGateConfig(min_seconds=3.0, min_windows=3))
    clips = [write_audio(tmp_path / f"new{i}.flac", audio[(6 + i) * N:(7 + i) * N], RATE)
             for i in range(4)]
    result = manager.enrol_files("pump", clips, "test")
    assert result["old_versions"] == {"logmel-stats": bank.version}
    assert store.pointer()["base"] == {"logmel-stats": bank.version}
    manager.rollback("pump", "test")
    assert running["pump"].bank_version == bank.version
    relearn = BankLearner("pump", builtin_embedder(RATE, 2.0), tmp_path, 10.0, "knn",
                          PreprocessConfig())
    for start in range(0, 12 * N, 2 * N):
        relearn.add(audio[start:start + 2 * N], start, start + 2 * N)
    other = relearn.build()
    actions = [h["action"] for h in store.history()]
    assert actions == ["learn", "commit", "rollback", "learn"]
    assert store.pointer()["base"] == {"logmel-stats": other.version}
    assert load_learned(tmp_path, "pump", lrn.fingerprint) is None
