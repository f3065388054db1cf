"""Property-based fuzzing of configs, MQTT command payloads and control-socket requests
(bounded CI profile; the long profile with counts is tools/fuzz.py). Contracts in
fuzz_support."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from fuzz_support import (
    ControlTarget,
    check_command_payload,
    check_config_text,
    check_control_request,
    command_names,
    command_payloads,
    config_texts,
    control_payloads,
    near_config_texts,
    nearly_right_commands,
)
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@given(config_texts())
def test_any_config_passes_or_is_refused_in_clear_lines(text):
    with tempfile.TemporaryDirectory() as directory:
        assert check_config_text(text, Path(directory)) in ("ok", "refused")


@given(command_names, command_payloads)
def test_any_command_payload_parses_or_is_refused_in_one_line(name, payload):
    assert check_command_payload(name, payload) in ("ok", "refused")


@given(nearly_right_commands)
def test_nearly_right_commands_parse_or_are_refused_in_one_line(pair):
    assert check_command_payload(*pair) in ("ok", "refused")


@given(near_config_texts())
def test_the_example_config_with_hostile_values_passes_or_is_refused(text):
    with tempfile.TemporaryDirectory() as directory:
        assert check_config_text(text, Path(directory)) in ("ok", "refused")


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    """One running control server for the whole suite: state must survive every input."""
    target = ControlTarget(tmp_path_factory.mktemp("control"))
    yield target
    target.close()


@given(data=st.data())
def test_any_control_request_gets_one_line_and_changes_nothing(control, data):
    payload = data.draw(control_payloads(control.paths()))
    assert check_control_request(control, payload) in ("ok", "refused")
