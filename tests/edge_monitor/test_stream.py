"""The streaming entry point: chunk-size freedom, and one resampler for every path.

A 48 kHz recording goes through the daemon's path (the replay source's chunks, the
streaming resampler, the windows, the detector) and through the trainer's evaluation path
(`read_audio` + preprocess + embed of the whole clip): the embeddings are the same.
"""

from __future__ import annotations

import numpy as np
import pytest
from enroll_support import OLD_SPEC, RATE, WINDOW_S, make_detector

from edge_monitor.audio_in.replay import ReplaySource
from edge_monitor.core.audio_io import StreamResampler, read_audio, resample
from edge_monitor.core.stream import StreamingDetector
from edge_monitor.demo.synth import synthesize, write_audio
from trainer.embed_cache import EmbedOptions, embed_file

DEVICE_RATE = 48000


def scores(detector, audio: np.ndarray, sizes: list[int]) -> list[tuple[float, float, float]]:
    """(start_s, end_s, score) of every window, feeding chunks of the given sizes in turn."""
    scorer = StreamingDetector(detector, hop_s=0.25)
    out, pos, turn = [], 0, 0
    while pos < len(audio):
        size = sizes[turn % len(sizes)]
        out += scorer.push(audio[pos:pos + size], DEVICE_RATE)
        pos, turn = pos + size, turn + 1
    out += scorer.finish()
    return [(r.start_s, r.end_s, r.score) for r in out]


def test_window_scores_do_not_depend_on_the_chunk_size():
    detector = make_detector()
    audio = synthesize(OLD_SPEC, 4.0, DEVICE_RATE)
    whole = scores(detector, audio, [len(audio)])
    assert len(whole) == 13  # 4 s of 1 s windows every 0.25 s
    assert whole[0][:2] == (0.0, 1.0) and whole[-1][:2] == (3.0, 4.0)
    for sizes in ([4800], [777, 13, 5001], [DEVICE_RATE // 10]):
        assert scores(detector, audio, sizes) == whole
    # One-sample chunks too, on a shorter stretch (that many calls take a while).
    short = audio[: int(1.5 * DEVICE_RATE)]
    assert scores(detector, short, [1]) == scores(detector, short, [len(short)])


def test_a_streamed_recording_equals_the_whole_file_resampled():
    audio = synthesize(OLD_SPEC, 3.0, DEVICE_RATE)
    stream = StreamResampler(DEVICE_RATE, RATE)
    pieces = [stream.push(audio[i:i + 999]) for i in range(0, len(audio), 999)]
    streamed = np.concatenate([*pieces, stream.push(audio[:0], last=True)])
    np.testing.assert_array_equal(streamed, resample(audio, DEVICE_RATE, RATE))


def test_the_daemon_path_and_the_eval_path_give_the_same_embeddings(tmp_path):
    detector = make_detector()
    clip = write_audio(tmp_path / "clip.wav", synthesize(OLD_SPEC, WINDOW_S, DEVICE_RATE),
                       DEVICE_RATE)
    [member] = detector.members

    # The trainer's evaluation: the whole clip read at the model rate, conditioned, embedded.
    options = EmbedOptions(preprocess=detector.preprocess_config)
    evaluated = embed_file(clip, member.embedder, options)

    # The daemon: the replay source's chunks at the device rate, streamed to the model rate.
    source = ReplaySource([clip], DEVICE_RATE, realtime=False, block_s=0.1)
    scorer = StreamingDetector(detector)
    results = []
    source.start()
    try:
        while not source.finished:
            chunk = source.get(0.5)
            if chunk is not None:
                assert chunk.sample_rate_hz == DEVICE_RATE
                results += scorer.push(chunk.frames[:, 0], chunk.sample_rate_hz)
    finally:
        source.stop()
    results += scorer.finish()

    [window] = results
    assert (window.start_s, window.end_s) == (0.0, WINDOW_S)
    np.testing.assert_array_equal(window.detection.embeddings[member.name], evaluated)
    # ... and `edge-monitor score`, enrolment files and trainer banks read through read_audio.
    np.testing.assert_array_equal(
        detector.embed(read_audio(clip, RATE))[member.name], evaluated)


@pytest.mark.parametrize("rate", [22050, 16000, 44100])  # within the accepted 16..384 kHz
def test_any_input_rate_gives_windows_on_the_model_timeline(rate):
    detector = make_detector()
    scorer = StreamingDetector(detector)
    results = scorer.push(synthesize(OLD_SPEC, 2.0, rate), rate) + scorer.finish()
    assert [(r.start_s, r.end_s) for r in results] == [(0.0, 1.0), (1.0, 2.0)]
