"""The versioned bank store: seed, commit, apply, rollback, pruning, stale stores, the lock."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import numpy as np
import pytest
from enroll_support import make_detector

from edge_monitor.core.bank import INDEX_NAME, load_bank
from edge_monitor.core.detector import Detector, Member, ScoreNorm, fused_loo_scores
from edge_monitor.core.errors import BankError
from edge_monitor.core.scoring import TARGET, build_bank, threshold_for_false_alarm_rate
from edge_monitor.enrolment.bank_store import BankStore, EnrolmentBusyError, StoreLock


def with_targets(bank, rng, count=4):
    """A bank like `bank` with `count` random target entries appended (a fake enrolment)."""
    extra = rng.normal(size=(count, bank.dim)).astype(np.float32)
    keep = bank.domains != "target-syn"
    return build_bank(
        np.vstack([bank.embeddings[keep], extra]),
        [*bank.domains[keep], *[TARGET] * count],
        [*bank.clip_ids[keep], *[f"t{rng.integers(1 << 30)}-{i}" for i in range(count)]],
        bank.config, bank.info,
    )


@pytest.fixture(scope="module")
def detector():
    return make_detector(seconds=12.0)


@pytest.fixture(scope="module")
def ensemble():
    return make_detector(("a", "b"), seconds=12.0)


def test_seed_commit_apply_and_rollback(tmp_path, detector):
    store = BankStore(tmp_path, "pump")
    assert store.pointer() is None and store.apply(detector) is detector
    pointer = store.ensure_seeded(detector)
    base = {"logmel-stats": detector.bank_version}
    assert pointer["current"] == pointer["base"] == base and pointer["previous"] is None
    assert store.apply(detector) is detector  # nothing enrolled yet: served unchanged

    new_bank = with_targets(detector.members[0].bank, np.random.default_rng(1))
    pointer = store.commit({"logmel-stats": new_bank}, {"who": "test"})
    assert pointer["current"] == {"logmel-stats": new_bank.version}
    assert pointer["previous"] == base
    assert load_bank(store.bank_dir("logmel-stats", new_bank.version)).version == new_bank.version

    # A restart builds the detector from the bundle again; the store swaps the bank in.
    served = store.apply(detector)
    assert served.bank_version == new_bank.version
    assert served.threshold != detector.threshold
    assert int(np.sum(served.members[0].bank.domains == TARGET)) == 4

    pointer = store.rollback({"who": "test"})
    assert pointer["current"] == base and pointer["previous"] is None
    assert store.apply(detector) is detector
    with pytest.raises(BankError, match="nothing to roll back"):
        store.rollback({"who": "test"})
    actions = [e["action"] for e in store.history()]
    assert actions == ["seed", "commit", "rollback"]


def test_ensemble_versions_per_model(tmp_path, ensemble):
    store = BankStore(tmp_path, "pump")
    store.ensure_seeded(ensemble)
    rng = np.random.default_rng(2)
    banks = {m.name: with_targets(m.bank, rng) for m in ensemble.members}
    pointer = store.commit(banks, {})
    assert pointer["current"] == {name: b.version for name, b in banks.items()}
    assert sorted(p.name for p in store.root.iterdir() if p.is_dir()) == ["a", "b"]
    served = store.apply(ensemble)
    assert [m.bank.version for m in served.members] == [banks["a"].version, banks["b"].version]


def test_ensemble_score_norms_follow_the_banks(tmp_path, ensemble):
    # As a bundle builds an ensemble: each member standardised by its bank's LOO scores.
    normed = Detector("pump", [
        Member(m.name, m.embedder, m.bank, 0.5, ScoreNorm.from_loo(m.bank.loo_scores))
        for m in ensemble.members], 0.05, model_version="test-model")
    store = BankStore(tmp_path, "pump")
    store.ensure_seeded(normed)
    rng = np.random.default_rng(6)
    store.commit({m.name: with_targets(m.bank, rng, 6) for m in normed.members}, {})
    served = store.apply(normed)
    for member in served.members:
        assert member.norm == ScoreNorm.from_loo(member.bank.loo_scores)
        assert member.weight == 0.5
    assert served.threshold == threshold_for_false_alarm_rate(
        fused_loo_scores(served.members), 0.05)
    store.rollback({})
    back = store.apply(normed)
    assert back is normed


def test_prune_keeps_current_and_previous(tmp_path, detector):
    store = BankStore(tmp_path, "pump", keep=2)
    store.ensure_seeded(detector)
    rng = np.random.default_rng(3)
    versions = []
    for _ in range(4):
        bank = with_targets(detector.members[0].bank, rng)
        versions.append(store.commit({"logmel-stats": bank}, {})["current"]["logmel-stats"])
    # A crash inside save_bank leaves a hidden staging directory: pruned too.
    (store.root / "logmel-stats" / ".abc.tmpdir").mkdir()
    store.prune()
    left = sorted(p.name for p in (store.root / "logmel-stats").iterdir())
    assert left == sorted(versions[-2:])
    pointer = store.pointer()
    assert pointer["current"]["logmel-stats"] == versions[-1]
    assert pointer["previous"]["logmel-stats"] == versions[-2]
    store.rollback({})
    with pytest.raises(BankError, match="nothing to roll back"):
        store.rollback({})


def test_stale_store_is_ignored_when_the_bundle_changed(tmp_path, detector, caplog):
    store = BankStore(tmp_path, "pump")
    store.ensure_seeded(detector)
    store.commit({"logmel-stats": with_targets(detector.members[0].bank,
                                               np.random.default_rng(4))}, {})
    other = make_detector(seconds=14.0)  # another bundle: other base banks
    with caplog.at_level(logging.WARNING):
        assert store.apply(other) is other
    assert "made for other models or banks" in caplog.text
    # Enrolling on the new bundle re-seeds the store from it.
    pointer = store.ensure_seeded(other)
    assert pointer["base"] == {"logmel-stats": other.bank_version}
    assert pointer["stack"] == [pointer["base"]]


def test_corrupt_current_bank_serves_the_detector_as_built(tmp_path, detector, caplog):
    store = BankStore(tmp_path, "pump")
    store.ensure_seeded(detector)
    bank = with_targets(detector.members[0].bank, np.random.default_rng(5))
    store.commit({"logmel-stats": bank}, {})
    (store.bank_dir("logmel-stats", bank.version) / INDEX_NAME).write_bytes(b"garbage")
    with caplog.at_level(logging.ERROR):
        assert store.apply(detector) is detector
    assert "checksum mismatch" in caplog.text


def test_unreadable_pointer_is_a_clear_error(tmp_path, detector):
    store = BankStore(tmp_path, "pump")
    store.root.mkdir(parents=True)
    store.pointer_path.write_text("{not json")
    with pytest.raises(BankError, match=r"current\.json: unreadable"):
        store.pointer()
    store.pointer_path.write_text(json.dumps({"format_version": 99}))
    with pytest.raises(BankError, match="delete it to go back"):
        store.pointer()


def test_lock_excludes_this_and_other_processes(tmp_path):
    first, second = StoreLock(tmp_path), StoreLock(tmp_path)
    busy = pytest.raises(EnrolmentBusyError, match="another enrolment or rollback is running")
    with first.hold("enrolment of pump"), busy:
        second.acquire("enrolment of fan")
    second.acquire("enrolment of fan")
    second.release()

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from edge_monitor.enrolment.bank_store import StoreLock; "
         "lock = StoreLock(sys.argv[1]); lock.acquire('x'); print('held', flush=True); "
         "time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(EnrolmentBusyError):
            first.acquire("enrolment of pump")
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its holder: a killed process never blocks later enrolments.
    deadline = time.monotonic() + 5
    while True:
        try:
            first.acquire("enrolment of pump")
            break
        except EnrolmentBusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    first.release()
