"""The enrolment quality gate: what it lets through and why it rejects a recording."""

from __future__ import annotations

import numpy as np
import pytest
from enroll_support import OLD_SPEC, RATE, machine_audio, windows

from edge_monitor.config.sections import QualityGateConfig
from edge_monitor.core.audio_io import resample
from edge_monitor.core.preprocess import preprocess
from edge_monitor.enrolment.quality_gate import (
    TONAL,
    QualityGate,
    QualityRejectedError,
    spectral_flatness,
    window_problem,
)

CONFIG = QualityGateConfig(min_seconds=4.0, min_windows=4)


def judge(pieces, config=CONFIG):
    gate = QualityGate(config)
    for w in pieces:
        gate.observe(w, RATE, preprocess(w, RATE))
    return gate


@pytest.fixture(scope="module")
def normal():
    return windows(machine_audio(OLD_SPEC, 8.0))


def test_machine_noise_passes(normal):
    report = judge(normal).verdict()
    assert report.windows == report.accepted == 8
    assert report.accepted_seconds == pytest.approx(8.0)
    assert not report.dropped


def test_a_few_bad_windows_are_dropped_not_fatal(normal):
    pieces = [*normal, np.zeros(RATE, np.float32)]  # one silent window in nine
    report = judge(pieces, QualityGateConfig(min_seconds=4.0, min_windows=4,
                                             max_silent_fraction=0.2)).verdict()
    assert report.accepted == 8 and report.dropped == {"silent": 1}


@pytest.mark.parametrize(
    ("make", "reason", "words"),
    [
        (lambda w: np.zeros_like(w) + 1e-6 * np.sign(w), "silent", "silent"),
        (lambda w: np.clip(w * 40.0, -1.0, 1.0), "clipped", "lower the input gain"),
        (lambda w: np.full_like(w, 0.25), "silent", "microphone"),  # DC only: nothing left
        (lambda w: np.repeat(w[::400], 400)[: len(w)], "unlike_machine_noise", "stuck"),
        (lambda w: (0.3 * np.sin(2 * np.pi * 440 * np.arange(len(w)) / RATE)).astype(np.float32),
         "unlike_machine_noise", "pure tone"),
    ],
    ids=["silent", "clipped", "dc", "stuck", "tone"],
)
def test_bad_recordings_are_rejected_with_the_reason(normal, make, reason, words):
    with pytest.raises(QualityRejectedError, match=words) as caught:
        judge([make(w) for w in normal]).verdict()
    assert caught.value.reason == reason
    assert caught.value.exit_code == 2


def test_too_short_and_too_few_windows(normal):
    with pytest.raises(QualityRejectedError, match=r"too short, 3\.0 s usable") as caught:
        judge(normal[:3]).verdict()
    assert caught.value.reason == "too_short"
    long_windows = [np.concatenate(normal[i:i + 2]) for i in (0, 2, 4)]  # 3 windows, 6 s
    with pytest.raises(QualityRejectedError, match="3 usable window") as caught:
        judge(long_windows).verdict()
    assert caught.value.reason == "too_few_windows"
    with pytest.raises(QualityRejectedError, match="no complete window"):
        judge([]).verdict()


def test_window_checks_on_their_own(normal):
    w = normal[0]
    assert window_problem(w, preprocess(w, RATE)) is None
    assert spectral_flatness(w) > 1e-2
    tone = np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE).astype(np.float32)
    assert spectral_flatness(tone) < 1e-6


def test_upsampled_capture_is_judged_below_its_nyquist(normal):
    """A 16 kHz microphone feeding a 32 kHz model: noise stays noise, a tone stays a tone."""
    w = normal[0]
    up = resample(w, RATE, 2 * RATE)
    assert spectral_flatness(up) < 1e-4  # the empty top half alone would look tonal
    assert window_problem(w, preprocess(up, 2 * RATE)) is None
    tone = 0.1 * np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE).astype(np.float32)
    assert window_problem(tone, preprocess(resample(tone, RATE, 2 * RATE), 2 * RATE)) == TONAL


def test_config_is_checked():
    with pytest.raises(Exception, match="min_windows"):
        QualityGateConfig(min_windows=1)
    with pytest.raises(Exception, match="max_silent_fraction"):
        QualityGateConfig(max_silent_fraction=1.5)
