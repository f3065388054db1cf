"""Banks survive a round trip and refuse corrupt, truncated or mismatched files clearly."""

import hashlib
import json

import numpy as np
import pytest

from edge_monitor.core.bank import INDEX_NAME, MANIFEST_NAME, META_NAME, load_bank, save_bank
from edge_monitor.core.errors import BankError
from edge_monitor.core.scoring import BankScorer, build_bank
from edge_monitor.core.scoring_config import variant


@pytest.fixture
def bank():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(60, 12))
    domains = ["source"] * 55 + ["target"] * 5
    return build_bank(emb, domains, [f"c{i}" for i in range(60)], variant("dads-dwmin"))


def test_round_trip_keeps_every_array_and_scores(tmp_path, bank):
    path = save_bank(bank, tmp_path / "bank")
    loaded = load_bank(path, expected_dim=12)
    np.testing.assert_allclose(loaded.embeddings, bank.embeddings, atol=1e-6)
    for name in ("domains", "clip_ids", "parents", "densities", "loo_scores", "loo_rows"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(bank, name))
    assert loaded.config == bank.config
    assert loaded.group_medians == pytest.approx(bank.group_medians)
    assert loaded.version == bank.version
    queries = np.random.default_rng(4).normal(size=(5, 12))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_allclose(BankScorer(loaded).score(queries), BankScorer(bank).score(queries))


def test_banks_are_immutable(tmp_path, bank):
    save_bank(bank, tmp_path / "bank")
    with pytest.raises(BankError, match="already exists"):
        save_bank(bank, tmp_path / "bank")


@pytest.mark.parametrize("name", [INDEX_NAME, META_NAME])
def test_truncated_file_is_refused_naming_it(tmp_path, bank, name):
    path = save_bank(bank, tmp_path / "bank")
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(BankError, match=f"{name}: checksum mismatch"):
        load_bank(path)


def test_flipped_byte_is_refused(tmp_path, bank):
    path = save_bank(bank, tmp_path / "bank")
    data = bytearray((path / INDEX_NAME).read_bytes())
    data[-10] ^= 0xFF
    (path / INDEX_NAME).write_bytes(bytes(data))
    with pytest.raises(BankError, match="checksum mismatch"):
        load_bank(path)


def test_dimension_mismatch_is_refused(tmp_path, bank):
    path = save_bank(bank, tmp_path / "bank")
    with pytest.raises(BankError, match=r"dimension 12 does not match .* 64"):
        load_bank(path, expected_dim=64)


def test_manifest_problems_are_named(tmp_path, bank):
    path = save_bank(bank, tmp_path / "bank")
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BankError, match="format_version 99"):
        load_bank(path)
    (path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BankError, match="not JSON"):
        load_bank(path)
    with pytest.raises(BankError, match="not found"):
        load_bank(tmp_path / "missing")


def test_loaded_bank_serves_hnsw_search_from_a_graph_built_from_its_vectors(tmp_path, bank):
    real = bank.parents < 0
    plain = build_bank(
        bank.embeddings[real], bank.domains[real], bank.clip_ids[real], variant("knn")
    )
    loaded = load_bank(save_bank(plain, tmp_path / "plain"))
    scorer = BankScorer(loaded, backend="hnsw")
    queries = np.random.default_rng(5).normal(size=(5, 12))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = BankScorer(plain, "matmul").score(queries)
    np.testing.assert_allclose(scorer.score(queries), exact, atol=1e-5)


def test_an_edited_index_with_repinned_checksums_is_refused_not_a_crash(tmp_path, bank):
    """Found by tools/fuzz.py: usearch's loader and search segfaulted on such bytes and took
    the process with it. Now a child reads the vectors and the graph is rebuilt from them;
    this process sees a loaded bank or one BankError line naming the file."""
    path = save_bank(bank, tmp_path / "bank")
    original = (path / INDEX_NAME).read_bytes()
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    rng = np.random.default_rng(11)
    for position in rng.choice(len(original), size=40, replace=False):
        data = bytearray(original)
        data[position] ^= 0xFF
        (path / INDEX_NAME).write_bytes(bytes(data))
        manifest["files"][INDEX_NAME] = hashlib.sha256(bytes(data)).hexdigest()
        (path / MANIFEST_NAME).write_text(json.dumps(manifest))
        try:
            load_bank(path)
        except BankError as exc:
            assert "\n" not in str(exc) and INDEX_NAME in str(exc) and "['" not in str(exc)
