"""TfliteEmbedder on a real TFLite interpreter (ai-edge-litert), with a committed tiny model.

data/frames_1600.tflite was converted once with litert-torch from a module computing
wave [1, 1600] -> conv1d with the kernel below (stride 160) -> |.| -> mean over frames -> [1, 6],
so the runtime can be tested without the 2 GB converter.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.core.embedders.fit_length import fixed_length_windows
from edge_monitor.core.errors import BundleError

MODEL = Path(__file__).parent / "data" / "frames_1600.tflite"
FRAME, DIM, SAMPLES = 160, 6, 1600

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None
    and importlib.util.find_spec("tflite_runtime") is None,
    reason="no TFLite runtime installed",
)


def _raw(window: np.ndarray) -> np.ndarray:
    kernel = np.random.default_rng(1).normal(size=(DIM, 1, FRAME)).astype(np.float32)
    return np.abs(window.reshape(-1, FRAME) @ kernel[:, 0, :].T).mean(axis=0)


def test_tflite_embedder_matches_the_reference_at_any_length() -> None:
    from edge_monitor.core.embedders.tflite_model import TfliteEmbedder

    embedder = TfliteEmbedder(MODEL, "frames", 16000, 0.1, DIM, threads=1)
    assert embedder.input_samples == SAMPLES and len(embedder.identity) == 64
    audio = np.random.default_rng(0).normal(size=4100).astype(np.float32)
    for clip in (audio[:SAMPLES], audio, audio[:900]):
        mean = np.mean([_raw(w) for w in fixed_length_windows(clip, SAMPLES)], axis=0)
        np.testing.assert_allclose(embedder.embed(clip), mean / np.linalg.norm(mean), atol=1e-5)


def test_tflite_embedder_refuses_bad_files_and_dims(tmp_path: Path) -> None:
    from edge_monitor.core.embedders.tflite_model import TfliteEmbedder

    with pytest.raises(BundleError, match="outputs 6-dimensional"):
        TfliteEmbedder(MODEL, "frames", 16000, 0.1, DIM + 1)
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"garbage" * 10)
    with pytest.raises(BundleError, match=r"broken\.tflite"):
        TfliteEmbedder(broken, "frames", 16000, 0.1, DIM)
