"""EfficientAT: the port matches the release's outputs, and its state-dict loader is strict.

The reference test reads the real mn04 checkpoint and reference outputs from
`../shared/weights/efficientat` (the user-provided file; skipped with the reason where that
folder is absent). The other tests build small models here and need no file.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.backbones import build_backbone
from trainer.backbones.efficientat import PRESETS, EfficientATConfig, block_channels
from trainer.errors import CheckpointError
from trainer.frontend import (
    ConvPowerSpectrum,
    EfficientATMel,
    FactorizedPowerSpectrum,
    kaldi_mel_filterbank,
    window_samples,
)

WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "weights" / "efficientat"
CHECKPOINT = WEIGHTS / "mn04_as_mAP_432.pt"
REFERENCE = WEIGHTS / "mn04_reference.npz"
EXPECTED_TOP = {
    "sweep": ["Sine wave", "Music", "Chirp tone"],
    "noise": ["Static", "White noise", "Noise"],
    "clicks": ["Sound effect", "Music", "Silence"],
}

needs_weights = pytest.mark.skipif(
    not (CHECKPOINT.is_file() and REFERENCE.is_file()),
    reason=f"the EfficientAT mn04 release file and reference outputs are not in {WEIGHTS}",
)


@needs_weights
def test_mn04_matches_the_release_outputs() -> None:
    model = build_backbone("efficientat", "mn04", CHECKPOINT).eval()
    reference = np.load(REFERENCE)
    with WEIGHTS.joinpath("class_labels_indices.csv").open(encoding="utf-8") as handle:
        labels = [row["display_name"] for row in csv.DictReader(handle)]
    for name, top in EXPECTED_TOP.items():
        wave = torch.from_numpy(reference[f"{name}_wave"])[None, :]
        with torch.no_grad():
            mel = model.mel(wave)[0, 0].numpy()
            embedding, logits = model.embedding_and_logits(wave)
        np.testing.assert_allclose(mel, reference[f"{name}_mel"], atol=1e-3)
        ours, theirs = embedding[0].numpy(), reference[f"{name}_embedding"]
        cosine = float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
        assert cosine >= 0.999, f"{name}: embedding cosine {cosine}"
        assert [labels[i] for i in np.argsort(-logits[0].numpy())[:3]] == top


def _stft_reference(wave: torch.Tensor) -> torch.Tensor:
    """EfficientAT's front end written with torch.stft, as the release computes it."""
    emphasised = wave[:, 1:] - 0.97 * wave[:, :-1]
    window = torch.hann_window(800, periodic=False, dtype=torch.float64)
    spec = torch.stft(emphasised, 1024, hop_length=320, win_length=800, window=window,
                      center=True, return_complex=True).abs() ** 2
    banks = torch.from_numpy(kaldi_mel_filterbank(128, 1024, 32000, 0.0, 15000.0))
    return ((torch.log(banks.T @ spec + 1e-5) + 4.5) / 5.0).transpose(1, 2)


def test_frontend_is_the_centred_stft_of_the_release() -> None:
    wave = torch.randn(2, 32000 * 2 + 123, dtype=torch.float64) * 0.1
    ours = EfficientATMel().double()(wave)
    theirs = _stft_reference(wave)
    assert ours.shape == theirs.shape == (2, 1 + (wave.shape[1] - 1) // 320, 128)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_window_is_symmetric_hann() -> None:
    expected = torch.hann_window(800, periodic=False, dtype=torch.float64).numpy()
    np.testing.assert_allclose(window_samples("hanning", 800), expected, atol=1e-12)


def test_widths_follow_the_release_names() -> None:
    assert PRESETS["mn04"]["width_mult"] == 0.4
    assert PRESETS["mn10"]["width_mult"] == 1.0
    assert PRESETS["mn40"]["width_mult"] == 4.0
    mn04 = block_channels(EfficientATConfig(width_mult=0.4))
    assert [b[3] for b in mn04] == [8, 16, 16, 16, 16, 16, 32, 32, 32, 32, 48, 48, 64, 64, 64]
    reduced = block_channels(EfficientATConfig(width_mult=1.0, reduced_tail=True))
    assert [b[3] for b in reduced][-3:] == [80, 80, 80]
    assert reduced[-2][2] == 480


def test_frames_and_release_outputs_have_the_documented_shapes() -> None:
    model = build_backbone("efficientat", "tiny").eval()
    wave = torch.randn(2, 32000 * 3) * 0.1
    with torch.no_grad():
        frames = model(wave)
        embedding, logits = model.embedding_and_logits(wave)
        maps = model.feature_maps(wave, [12, -1])
    assert frames.shape == (2, 10, model.dim)
    assert embedding.shape == (2, model.dim) and logits.shape == (2, 8)
    assert maps[1].shape[1] == model.dim and maps[0].shape[0] == 2
    torch.testing.assert_close(maps[1].mean(dim=(2, 3)), embedding)


def test_state_dict_round_trips_strictly(tmp_path: Path) -> None:
    model = build_backbone("efficientat", "tiny").eval()
    path = tmp_path / "mn_tiny.pt"
    torch.save(model.state_dict(), path)
    loaded = build_backbone("efficientat", "tiny", path).eval()
    wave = torch.randn(1, 32000 * 2) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(loaded(wave), model(wave))


def test_loader_names_missing_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    state = build_backbone("efficientat", "tiny").state_dict()
    state.pop("features.3.block.0.0.weight")
    state["features.99.weight"] = torch.zeros(1)
    state["classifier.5.bias"] = torch.zeros(3)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_backbone("efficientat", "tiny", path)
    message = str(err.value)
    assert str(path) in message
    assert "features.3.block.0.0.weight" in message
    assert "features.99.weight" in message
    assert "classifier.5.bias: checkpoint (3,)" in message


@needs_weights
def test_a_release_file_of_another_width_is_refused_with_the_fix() -> None:
    with pytest.raises(CheckpointError, match="size 'mn04'"):
        build_backbone("efficientat", "mn10", CHECKPOINT)


@pytest.mark.parametrize("length", [800, 801, 32000, 32000 * 3 + 17])
def test_factorised_dft_is_the_direct_dft(length: int) -> None:
    window = window_samples("hanning", 800)
    wave = torch.randn(2, length, dtype=torch.float64)
    direct = ConvPowerSpectrum(window, 1024, 320).double()(wave)
    fast = FactorizedPowerSpectrum(window, 1024, 320).double()
    ours = fast(wave)
    valid = fast.output_bins < fast.bins
    reordered = torch.zeros_like(direct)
    reordered[:, :, torch.from_numpy(fast.output_bins[valid])] = ours[:, :, torch.from_numpy(valid)]
    assert ours.shape[1] == direct.shape[1] == fast.num_frames(length)
    torch.testing.assert_close(reordered, direct, rtol=1e-4, atol=1e-6)
