"""The conv front ends equal numpy references and survive export to ONNX unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge_monitor.core.melspec import log_mel
from trainer.backbones import build_backbone
from trainer.frontend import (
    BEATS_FBANK_MEAN,
    BEATS_FBANK_STD,
    EAT_FBANK_MEAN,
    EAT_FBANK_STD,
    ConvPowerSpectrum,
    LogMel,
    beats_fbank,
    eat_fbank,
    window_samples,
)

SAMPLE_RATE_HZ = 16000


def _signal(seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SAMPLE_RATE_HZ * seconds)) / SAMPLE_RATE_HZ
    tone = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.1 * np.sin(2 * np.pi * 3100.0 * t)
    return (tone + 0.05 * rng.standard_normal(t.shape) + 0.02).astype(np.float32)


def _kaldi_fbank_reference(
    wave: np.ndarray, window: str, scale: float, subtract_mean: bool
) -> np.ndarray:
    """Kaldi's fbank step by step in float64: frames, DC removal, pre-emphasis, window, FFT, mel."""
    x = wave.astype(np.float64)
    if subtract_mean:
        x = x - x.mean()
    x = x * scale
    length, hop, n_fft, n_mels = 400, 160, 512, 128
    n = np.arange(length)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))
    win = hann**0.85 if window == "povey" else hann

    def mel(hz: float) -> float:
        return 1127.0 * np.log(1.0 + hz / 700.0)

    low, high = mel(20.0), mel(SAMPLE_RATE_HZ / 2)
    delta = (high - low) / (n_mels + 1)
    banks = np.zeros((n_mels, n_fft // 2))
    for m in range(n_mels):
        left, centre, right = low + m * delta, low + (m + 1) * delta, low + (m + 2) * delta
        for k in range(n_fft // 2):
            f = mel(k * SAMPLE_RATE_HZ / n_fft)
            if left < f < right:
                banks[m, k] = (f - left) / (centre - left) if f <= centre else (right - f) / (
                    right - centre
                )
    rows = []
    for start in range(0, x.shape[0] - length + 1, hop):
        frame = x[start : start + length].copy()
        frame -= frame.mean()
        frame = np.concatenate([[frame[0] * (1 - 0.97)], frame[1:] - 0.97 * frame[:-1]])
        power = np.abs(np.fft.rfft(frame * win, n_fft)) ** 2
        energies = banks @ power[: n_fft // 2]
        rows.append(np.log(np.maximum(energies, np.finfo(np.float32).eps)))
    return np.stack(rows)


def test_conv_dft_matches_numpy_fft() -> None:
    wave = _signal()
    window = window_samples("hann-periodic", 512)
    spectrum = ConvPowerSpectrum(window, n_fft=512, hop=160)
    actual = spectrum(torch.from_numpy(wave)[None]).numpy()[0]
    frames = np.lib.stride_tricks.sliding_window_view(wave.astype(np.float64), 512)[::160]
    expected = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    assert actual.shape == expected.shape == (spectrum.num_frames(wave.shape[0]), 257)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * expected.max())


@pytest.mark.parametrize("model", ["beats", "eat"])
def test_kaldi_fbank_matches_step_by_step_reference(model: str) -> None:
    wave = _signal(seed=1)
    if model == "beats":
        frontend, mean, std = beats_fbank(), BEATS_FBANK_MEAN, BEATS_FBANK_STD
        raw = _kaldi_fbank_reference(wave, "povey", 2.0**15, subtract_mean=False)
    else:
        frontend, mean, std = eat_fbank(), EAT_FBANK_MEAN, EAT_FBANK_STD
        raw = _kaldi_fbank_reference(wave, "hanning", 1.0, subtract_mean=True)
    expected = (raw - mean) / (2 * std)
    actual = frontend(torch.from_numpy(wave)[None]).numpy()[0]
    assert actual.shape == expected.shape == (1 + (wave.shape[0] - 400) // 160, 128)
    np.testing.assert_allclose(actual, expected, atol=2e-4)  # ~3e-3 in log-energy units


def test_plain_log_mel_matches_the_edge_numpy_front_end() -> None:
    wave = _signal(seed=2)
    frontend = LogMel(SAMPLE_RATE_HZ, n_fft=1024, hop=512, n_mels=64)
    actual = frontend(torch.from_numpy(wave)[None]).numpy()[0]
    expected = log_mel(wave, SAMPLE_RATE_HZ, n_fft=1024, hop=512, n_mels=64)
    np.testing.assert_allclose(actual, expected, atol=2e-3)


class _BothFrontEnds(torch.nn.Module):
    """Kaldi fbank and a ResNet (plain log-mel inside) in one graph: one export covers both."""

    def __init__(self) -> None:
        super().__init__()
        self.fbank = beats_fbank()
        self.resnet = build_backbone("resnet", "tiny")

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fbank(wave), self.resnet(wave)


def test_front_ends_and_resnet_export_to_onnx(tmp_path: Path) -> None:
    module = _BothFrontEnds().eval()
    path = tmp_path / "front_ends.onnx"
    example = torch.from_numpy(np.stack([_signal(0.5, seed=3), _signal(0.5, seed=6)]))
    batch, samples = torch.export.Dim("batch"), torch.export.Dim("samples", min=800, max=10**6)
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["wave"],
        output_names=["fbank", "resnet"],
        dynamic_shapes=({0: batch, 1: samples},),
        dynamo=True,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wave = torch.from_numpy(np.stack([_signal(0.8, seed=4), _signal(0.8, seed=5)]))
    onnx_outputs = session.run(None, {"wave": wave.numpy()})
    with torch.no_grad():
        torch_outputs = module(wave)
    for onnx_out, torch_out in zip(onnx_outputs, torch_outputs, strict=True):
        assert onnx_out.shape == tuple(torch_out.shape)
        np.testing.assert_allclose(onnx_out, torch_out.numpy(), rtol=1e-4, atol=1e-4)
