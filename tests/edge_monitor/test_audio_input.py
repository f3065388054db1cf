"""Audio files of any rate and channel count become mono float32 at the model rate."""

import numpy as np
import pytest
import soundfile as sf

from edge_monitor.core.audio_io import read_audio, resample
from edge_monitor.core.embedders.logmel_stats import LogMelStatsEmbedder
from edge_monitor.core.errors import AudioFileError
from edge_monitor.core.preprocess import PreprocessConfig, loudness_lufs, preprocess


def tone(freq_hz, seconds, rate, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.mark.parametrize(("rate", "fmt"), [(44100, "WAV"), (48000, "FLAC"), (16000, "FLAC")])
def test_any_rate_and_channels_to_mono_16k(tmp_path, rate, fmt):
    stereo = np.stack([tone(440, 1.0, rate), tone(440, 1.0, rate)], axis=1)
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, stereo, rate, format=fmt, subtype="PCM_16")
    audio = read_audio(path, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 2


def test_resampler_keeps_a_tone_and_removes_what_aliases():
    x = tone(1000, 1.0, 48000) + tone(12000, 1.0, 48000)
    y = resample(x, 48000, 16000)
    spectrum = np.abs(np.fft.rfft(y)) / len(y)
    assert spectrum[1000] > 0.2
    assert spectrum.max() == spectrum[1000]
    assert spectrum[4000] < 1e-3  # 12 kHz must not fold back to 4 kHz


def test_bad_files_raise_one_clear_error_naming_the_file(tmp_path):
    with pytest.raises(AudioFileError, match="no such audio file"):
        read_audio(tmp_path / "missing.wav", 16000)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really audio")
    with pytest.raises(AudioFileError, match=r"junk\.wav: cannot decode"):
        read_audio(junk, 16000)
    full = tmp_path / "full.flac"
    sf.write(full, tone(300, 2.0, 16000), 16000)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(AudioFileError, match=r"cut\.flac"):
        read_audio(cut, 16000)


def test_loudness_normalisation_reaches_target_and_floors_silence():
    loud = tone(500, 3.0, 16000, amp=0.5)
    quiet = loud * 0.01
    for x in (loud, quiet):
        out = preprocess(x, 16000)
        assert loudness_lufs(out.audio, 16000) == pytest.approx(-23.0, abs=0.2)
    near_silent = np.random.default_rng(0).normal(size=48000).astype(np.float32) * 1e-6
    out = preprocess(near_silent, 16000)
    assert out.silent
    assert out.gain_db == pytest.approx(-23.0 - PreprocessConfig().loudness_floor_lufs)


def test_dc_removed_and_clipping_flagged():
    x = tone(200, 1.0, 16000) + 0.3
    out = preprocess(x, 16000, PreprocessConfig(normalise_loudness=False))
    assert abs(out.audio.mean()) < 1e-4
    assert not out.clipped
    clipped = np.clip(tone(200, 1.0, 16000, amp=3.0), -1, 1)
    assert preprocess(clipped, 16000).clipped


def test_logmel_stats_embedding_is_unit_and_separates_sounds():
    emb = LogMelStatsEmbedder()
    rng = np.random.default_rng(0)
    noise_a = emb.embed(rng.normal(size=32000).astype(np.float32))
    noise_b = emb.embed(rng.normal(size=32000).astype(np.float32))
    hum = emb.embed(tone(120, 2.0, 16000) + 0.01 * rng.normal(size=32000).astype(np.float32))
    assert noise_a.shape == (emb.dim,)
    assert np.linalg.norm(noise_a) == pytest.approx(1.0, abs=1e-5)
    assert 1 - noise_a @ noise_b < 0.1 * (1 - noise_a @ hum)
