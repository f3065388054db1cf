"""Property-based fuzzing of bundles (manifests, damaged files, links, .tar) and audio files
(bounded CI profile; the long profile with counts is tools/fuzz.py). Contracts in
fuzz_files."""

from __future__ import annotations

from fuzz_files import (
    audio_specs,
    check_audio_daemon,
    check_audio_spec,
    check_damaged_bundle,
    check_manifest_text,
    damaged_bundles,
    manifest_texts,
)
from hypothesis import given, settings


@given(manifest_texts())
def test_any_manifest_loads_or_is_refused_in_one_line(text):
    assert check_manifest_text(text) in ("ok", "fault", "refused")


@given(damaged_bundles)
def test_any_damaged_bundle_loads_or_is_refused_in_one_line(spec):
    assert check_damaged_bundle(spec) in ("ok", "fault", "refused")


@given(audio_specs)
def test_any_audio_file_is_read_or_reported_as_a_fault(spec):
    assert check_audio_spec(spec) in ("ok", "fault")


@settings(max_examples=8)  # a back-test each: a few in CI, hundreds in tools/fuzz.py
@given(audio_specs)
def test_a_back_test_of_any_audio_file_exits_0_or_2_with_the_machine_in_fault(spec):
    assert check_audio_daemon(spec) in ("ok", "fault")
