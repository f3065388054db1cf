"""Log-mel front ends as fixed strided convolutions, so they export to ONNX and TFLite alike.

`torch.stft` yields complex tensors that litert-torch cannot convert; here every per-frame
linear step (DC removal, pre-emphasis, window, zero padding, DFT) is folded into one cosine and
one sine kernel applied by strided `conv1d`, followed by power, a fixed mel matrix and a log.
Input is a waveform [B, T]; output is [B, frames, n_mels].
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edge_monitor.core.melspec import mel_filterbank

WindowName = Literal["povey", "hanning", "hamming", "hann-periodic"]

KALDI_LOG_FLOOR = float(np.finfo(np.float32).eps)
"""Kaldi clamps mel energies to float32 epsilon before the log."""

BEATS_FBANK_MEAN = 15.41663
BEATS_FBANK_STD = 6.55582
BEATS_INPUT_SCALE = 2.0**15
"""BEATs scales a [-1, 1] wave to 16-bit range, then normalises fbank by (x - mean) / (2 std)."""

EAT_FBANK_MEAN = -4.268
EAT_FBANK_STD = 4.569
"""EAT and SSLAM normalise the fbank of a mean-removed [-1, 1] wave by (x - mean) / (2 std)."""


def window_samples(name: WindowName, length: int) -> np.ndarray:
    """The analysis window; Kaldi's are symmetric, 'hann-periodic' matches numpy front ends."""
    n = np.arange(length, dtype=np.float64)
    if name == "hann-periodic":
        return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / (length - 1))
    if name == "povey":
        return hann**0.85
    if name == "hanning":
        return hann
    if name == "hamming":
        return 0.54 - 0.46 * np.cos(2.0 * np.pi * n / (length - 1))
    raise ValueError(f"unknown window {name!r}; use povey, hanning, hamming or hann-periodic")


def kaldi_mel_filterbank(
    n_mels: int, n_fft: int, sample_rate_hz: int, low_hz: float, high_hz: float
) -> np.ndarray:
    """Kaldi's triangular filters (1127 ln mel scale, unnormalised), (n_fft // 2 + 1, n_mels)."""

    def mel(hz: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)

    edges = np.linspace(mel(low_hz), mel(high_hz), n_mels + 2)
    bin_mel = mel(np.arange(n_fft // 2 + 1) * sample_rate_hz / n_fft)[:, None]
    left, centre, right = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    banks = np.maximum(0.0, np.minimum(rising, falling))
    banks[-1] = 0.0  # Kaldi has no Nyquist bin in its filters.
    return banks


def frame_preprocessing_matrix(
    length: int, remove_dc_offset: bool, preemphasis: float
) -> np.ndarray:
    """The linear map Kaldi applies to a frame before windowing: DC removal, then pre-emphasis."""
    matrix = np.eye(length)
    if remove_dc_offset:
        matrix = matrix - np.full((length, length), 1.0 / length)
    if preemphasis:
        emphasis = np.eye(length)
        emphasis[np.arange(1, length), np.arange(length - 1)] = -preemphasis
        emphasis[0, 0] = 1.0 - preemphasis  # Kaldi repeats the first sample as its predecessor.
        matrix = emphasis @ matrix
    return matrix


class ConvPowerSpectrum(nn.Module):
    """Power spectrum |DFT(window * A frame)|^2 by strided conv1d: [B, T] -> [B, frames, bins]."""

    def __init__(
        self, window: np.ndarray, n_fft: int, hop: int, frame_matrix: np.ndarray | None = None
    ) -> None:
        super().__init__()
        length = window.shape[0]
        if length > n_fft:
            raise ValueError(f"window of {length} samples is longer than n_fft={n_fft}")
        bins = np.arange(n_fft // 2 + 1, dtype=np.float64)[:, None]
        phase = 2.0 * np.pi * bins * np.arange(length, dtype=np.float64)[None, :] / n_fft
        matrix = np.eye(length) if frame_matrix is None else frame_matrix
        cos_kernel = (np.cos(phase) * window[None, :]) @ matrix
        sin_kernel = (np.sin(phase) * window[None, :]) @ matrix
        self.hop = hop
        self.frame_length = length
        self.register_buffer(
            "cos_kernel", torch.from_numpy(cos_kernel[:, None, :]).float(), persistent=False
        )
        self.register_buffer(
            "sin_kernel", torch.from_numpy(sin_kernel[:, None, :]).float(), persistent=False
        )

    def num_frames(self, num_samples: int) -> int:
        """Frames a clip of `num_samples` gives (Kaldi's snip_edges: only whole frames)."""
        return max(0, 1 + (num_samples - self.frame_length) // self.hop)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform [batch, samples], got shape {tuple(wave.shape)}")
        if wave.shape[1] < self.frame_length:
            raise ValueError(
                f"waveform has {wave.shape[1]} samples, fewer than one frame "
                f"({self.frame_length}); pass a longer clip"
            )
        x = wave.unsqueeze(1)
        real = F.conv1d(x, self.cos_kernel, stride=self.hop)
        imag = F.conv1d(x, self.sin_kernel, stride=self.hop)
        return (real * real + imag * imag).transpose(1, 2)


class FactorizedPowerSpectrum(nn.Module):
    """|DFT(window * frame)|^2 in two small matmul stages (Cooley-Tukey, n_fft = a * b).

    The same output as ConvPowerSpectrum for a window zero-padded to n_fft, at about a sixth
    of the multiply-adds for n_fft 1024 (about 125 k instead of 820 k per frame), built only
    from slicing, MatMul and elementwise ops, so it exports to ONNX and TFLite alike. Frames
    are gathered from blocks of gcd(hop, window) samples by strided slices (no unfold).
    Output [B, frames, a * ceil(bins / b)] in the order of `output_bins`; `bin_matrix` turns
    a per-bin matrix (the mel filters) into that order.
    """

    def __init__(self, window: np.ndarray, n_fft: int, hop: int) -> None:
        super().__init__()
        length = window.shape[0]
        if n_fft & (n_fft - 1) or length > n_fft:
            raise ValueError(f"n_fft {n_fft} must be a power of two and >= the window {length}")
        self.block = int(np.gcd(hop, length))
        self.hop_blocks, self.frame_blocks = hop // self.block, length // self.block
        self.frame_length, self.hop = length, hop
        a = 1 << (int(np.log2(n_fft)) // 2)  # outer factor: n = b * n1 + n2, k = k1 + a * k2
        b = n_fft // a
        self.rows = -(-length // b)  # n1 values that hold window samples
        n1 = np.arange(self.rows)[:, None]
        k1 = np.arange(b)[None, :]
        stage1 = 2.0 * np.pi * n1 * k1 / b  # [n1, k1]
        n2 = np.arange(b)[:, None]
        twiddle = 2.0 * np.pi * n2 * k1 / n_fft  # [n2, k1]
        bins = n_fft // 2 + 1
        k2_count = -(-bins // b)
        stage2 = 2.0 * np.pi * n2 * np.arange(k2_count)[None, :] / a  # [n2, k2]
        padded = np.zeros(self.rows * b)
        padded[:length] = window
        self.b, self.k2_count, self.bins = b, k2_count, bins
        buffers = {
            "window": padded.reshape(self.rows, b),
            "cos1": np.cos(stage1), "sin1": np.sin(stage1),
            "cos_tw": np.cos(twiddle), "sin_tw": np.sin(twiddle),
            "cos2": np.cos(stage2), "sin2": np.sin(stage2),
        }
        for name, value in buffers.items():
            self.register_buffer(name, torch.from_numpy(value).float(), persistent=False)
        # the DFT bin of each output position: k = k1 + b * k2 sits at k1 * k2_count + k2
        self.output_bins = (np.arange(b)[:, None] + b * np.arange(k2_count)[None, :]).reshape(-1)

    def num_frames(self, num_samples: int) -> int:
        return max(0, 1 + (num_samples - self.frame_length) // self.hop)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        frames = self.num_frames(wave.shape[1])
        if frames < 1:
            raise ValueError(
                f"waveform has {wave.shape[1]} samples, fewer than one frame "
                f"({self.frame_length}); pass a longer clip"
            )
        count = self.hop_blocks * (frames - 1) + self.frame_blocks
        blocks = wave[:, : count * self.block].reshape(wave.shape[0], count, self.block)
        last = self.hop_blocks * (frames - 1) + 1
        pieces = [blocks[:, j : j + last : self.hop_blocks] for j in range(self.frame_blocks)]
        x = torch.stack(pieces, dim=2).reshape(wave.shape[0], frames, self.frame_length)
        if self.rows * self.b > self.frame_length:
            x = F.pad(x, (0, self.rows * self.b - self.frame_length))
        x = x.reshape(wave.shape[0], frames, self.rows, self.b) * self.window
        xt = x.transpose(2, 3)  # [B, F, n2, n1]
        real1, imag1 = xt @ self.cos1, -(xt @ self.sin1)  # [B, F, n2, k1]
        real = real1 * self.cos_tw + imag1 * self.sin_tw
        imag = imag1 * self.cos_tw - real1 * self.sin_tw
        real, imag = real.transpose(2, 3), imag.transpose(2, 3)  # [B, F, k1, n2]
        real2 = real @ self.cos2 + imag @ self.sin2
        imag2 = imag @ self.cos2 - real @ self.sin2  # [B, F, k1, k2]
        return (real2 * real2 + imag2 * imag2).reshape(wave.shape[0], frames, -1)

    def bin_matrix(self, per_bin: np.ndarray) -> np.ndarray:
        """Rows of a (bins, n) matrix rearranged to this module's output order (0 past bins),
        so a mel projection needs no reordering of the power spectrum."""
        out = np.zeros((self.output_bins.shape[0], per_bin.shape[1]), per_bin.dtype)
        valid = self.output_bins < self.bins
        out[valid] = per_bin[self.output_bins[valid]]
        return out


class KaldiFbank(nn.Module):
    """Kaldi-compatible log-mel filterbank (torchaudio.compliance.kaldi.fbank), normalised.

    Matches `kaldi.fbank` with dither 0, snip_edges, round_to_power_of_two, use_energy off;
    before it the waveform is optionally mean-removed and scaled, after it the output becomes
    (fbank - mean) / (2 std) as BEATs and EAT do.
    """

    def __init__(
        self,
        sample_rate_hz: int = 16000,
        n_mels: int = 128,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        window: WindowName = "povey",
        preemphasis: float = 0.97,
        remove_dc_offset: bool = True,
        low_hz: float = 20.0,
        high_hz: float = 0.0,
        input_scale: float = 1.0,
        subtract_wave_mean: bool = False,
        mean: float = 0.0,
        std: float = 0.5,
    ) -> None:
        super().__init__()
        length = int(sample_rate_hz * frame_length_ms / 1000.0)
        hop = int(sample_rate_hz * frame_shift_ms / 1000.0)
        n_fft = 1 << (length - 1).bit_length()
        top_hz = high_hz if high_hz > 0 else sample_rate_hz / 2.0 + high_hz
        self.spectrum = ConvPowerSpectrum(
            window_samples(window, length),
            n_fft,
            hop,
            frame_preprocessing_matrix(length, remove_dc_offset, preemphasis),
        )
        banks = kaldi_mel_filterbank(n_mels, n_fft, sample_rate_hz, low_hz, top_hz)
        self.register_buffer("mel_banks", torch.from_numpy(banks).float(), persistent=False)
        self.n_mels = n_mels
        self.input_scale = input_scale
        self.subtract_wave_mean = subtract_wave_mean
        self.mean = mean
        self.std = std

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if self.subtract_wave_mean:
            wave = wave - wave.mean(dim=1, keepdim=True)
        power = self.spectrum(wave * self.input_scale)
        fbank = torch.log(torch.clamp(power @ self.mel_banks, min=KALDI_LOG_FLOOR))
        return (fbank - self.mean) / (2.0 * self.std)


def beats_fbank(sample_rate_hz: int = 16000) -> KaldiFbank:
    """The fbank BEATs computes in `preprocess` (povey window, 16-bit scale, BEATs statistics)."""
    return KaldiFbank(
        sample_rate_hz=sample_rate_hz,
        window="povey",
        input_scale=BEATS_INPUT_SCALE,
        mean=BEATS_FBANK_MEAN,
        std=BEATS_FBANK_STD,
    )


def eat_fbank(sample_rate_hz: int = 16000) -> KaldiFbank:
    """The fbank EAT and SSLAM compute (Hanning window, mean-removed wave, EAT statistics)."""
    return KaldiFbank(
        sample_rate_hz=sample_rate_hz,
        window="hanning",
        subtract_wave_mean=True,
        mean=EAT_FBANK_MEAN,
        std=EAT_FBANK_STD,
    )


class LogMel(nn.Module):
    """Plain log-mel (periodic Hann, HTK mel, natural log), as edge_monitor.core.melspec.log_mel."""

    def __init__(
        self,
        sample_rate_hz: int = 16000,
        n_fft: int = 1024,
        hop: int = 160,
        n_mels: int = 64,
        floor: float = 1e-10,
    ) -> None:
        super().__init__()
        self.spectrum = ConvPowerSpectrum(window_samples("hann-periodic", n_fft), n_fft, hop)
        banks = mel_filterbank(sample_rate_hz, n_fft, n_mels).T.astype(np.float32)
        self.register_buffer(
            "mel_banks", torch.from_numpy(np.ascontiguousarray(banks)), persistent=False
        )
        self.n_mels = n_mels
        self.floor = floor

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.clamp(self.spectrum(wave) @ self.mel_banks, min=self.floor))


EFFICIENTAT_LOG_OFFSET = 1e-5
EFFICIENTAT_SHIFT = 4.5
EFFICIENTAT_SCALE = 5.0
"""EfficientAT takes log(mel + 1e-5) and normalises it as (x + 4.5) / 5."""


class EfficientATMel(nn.Module):
    """EfficientAT's front end in eval mode: [B, T] at 32 kHz -> [B, frames, n_mels].

    Pre-emphasis (y[n] = x[n+1] - 0.97 x[n]), a centred STFT (reflect padding) with a
    symmetric Hann window of `win_length` inside an `n_fft` frame, power, Kaldi mel filters
    from `low_hz` to `high_hz`, natural log of (mel + 1e-5), then (x + 4.5) / 5.
    The window sits in the middle of its n_fft frame; a phase shift does not change the power,
    so the DFT runs over the window's samples only, after padding by n_fft/2 minus the
    window's offset in the frame: the same frames as torch.stft(center=True). The DFT is the
    factorised one (FactorizedPowerSpectrum): it is most of the cost of a window otherwise.
    """

    def __init__(
        self,
        sample_rate_hz: int = 32000,
        n_fft: int = 1024,
        win_length: int = 800,
        hop: int = 320,
        n_mels: int = 128,
        low_hz: float = 0.0,
        high_hz: float = 15000.0,
        preemphasis: float = 0.97,
    ) -> None:
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} is longer than n_fft {n_fft}")
        self.spectrum = FactorizedPowerSpectrum(window_samples("hanning", win_length), n_fft, hop)
        self.padding = n_fft // 2 - (n_fft - win_length) // 2
        banks = self.spectrum.bin_matrix(
            kaldi_mel_filterbank(n_mels, n_fft, sample_rate_hz, low_hz, high_hz)
        )
        self.register_buffer("mel_banks", torch.from_numpy(banks).float(), persistent=False)
        self.preemphasis = preemphasis
        self.n_mels = n_mels

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        emphasised = wave[:, 1:] - self.preemphasis * wave[:, :-1]
        padded = F.pad(emphasised[:, None, :], (self.padding, self.padding), mode="reflect")
        mel = self.spectrum(padded[:, 0, :]) @ self.mel_banks
        return (torch.log(mel + EFFICIENTAT_LOG_OFFSET) + EFFICIENTAT_SHIFT) / EFFICIENTAT_SCALE
