"""`edge-monitor devices`: list the audio inputs PortAudio can record from.

    edge-monitor devices

One row per input: index, name, host API, input channels, default rate; `*` marks the
default input. Use the index or a unique part of the name as `device` in the config.
Exit code 1 when no input is visible, so a provisioning script notices.
"""

from __future__ import annotations

import argparse
import sys

from edge_monitor.audio_in.capture import list_input_devices


def configure(parser: argparse.ArgumentParser) -> None:
    """No options: the listing is always complete."""


def run(args: argparse.Namespace) -> int:
    devices = list_input_devices()
    if not devices:
        print(
            "no audio input devices found: plug in a microphone, check that this user is in "
            "the `audio` group, and (for PulseAudio/PipeWire) that the sound server is running",
            file=sys.stderr,
        )
        return 1
    name_width = max(len("name"), *(len(d.name) for d in devices))
    api_width = max(len("host api"), *(len(d.host_api) for d in devices))
    print(f"  {'index':>5}  {'name':<{name_width}}  {'host api':<{api_width}}  channels  rate_hz")
    for d in devices:
        mark = "*" if d.is_default else " "
        print(
            f"{mark} {d.index:>5}  {d.name:<{name_width}}  {d.host_api:<{api_width}}  "
            f"{d.max_input_channels:>8}  {d.default_sample_rate_hz:>7}"
        )
    return 0
