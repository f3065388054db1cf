"""`edge-monitor check -c CONF`: validate the config and its bundle without starting anything.

Exit 0 when the daemon would start with this config; exit 2 with one line per problem when
it would not. It goes the daemon's own way: the same loader, the same plan (bundle or learned
banks), the audio source, the clip store and the MQTT client built as `run` builds them, the
password read and the TLS files loaded, the processing loop with every machine's buffers
(`edge_monitor.daemon.assemble`, which `run` calls too), the directories checked as `run`
creates them, the named input device looked up in PortAudio's list, and the web view's
token read. Nothing is started (no audio stream is opened, no broker contacted, no port
bound) and nothing is written.
"""

from __future__ import annotations

import argparse

from edge_monitor.audio_in.capture import resolve_device
from edge_monitor.audio_in.replay import ReplaySource
from edge_monitor.config.loader import load_config
from edge_monitor.config.sections import Config
from edge_monitor.core.errors import ConfigError, EdgeMonitorError, one_line, shown
from edge_monitor.daemon import assemble, daemon_directories, learning_amount

LIST_DEVICES = "`edge-monitor devices` lists the inputs"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="daemon config file (YAML)")


def input_device(config: Config) -> str:
    """The live input `run` would open, found the way it finds it (PortAudio's device list;
    no stream opened). A named device that is absent is refused: `run` would start deaf.
    With no device named and none visible, `run` waits in `fault` for one: said, not refused."""
    wanted = config.source.device
    try:
        device = resolve_device(wanted)
    except EdgeMonitorError as exc:
        if wanted is None or wanted == "":
            return ("sounddevice input (default): none visible now; run reports a fault until "
                    f"one appears ({LIST_DEVICES})")
        detail = one_line(exc).removeprefix("device: ").replace(" (run `edge-monitor devices`)", "")
        raise ConfigError(
            f"source.device = {shown(wanted)} is not present ({detail}): plug it in or name one "
            f"that is ({LIST_DEVICES}); run would start deaf, in fault, waiting for it"
        ) from None
    return f"sounddevice input {device.name!r} (index {device.index})"


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    built = assemble(config, create=False)
    plan = built.plan
    if isinstance(built.source, ReplaySource):
        source = f"replay of {len(built.source.files)} file(s)"
    else:
        source = input_device(config)
    web = config.web
    web_line = "off"
    if web.enabled:
        token = web.token()  # a missing or empty token file fails here, as in `run`
        access = "token required" if token else "loopback only, no token"
        mode = "commands allowed" if web.commands_enabled else "read-only"
        web_line = f"{web.base_url} ({access}, {mode})"
    print(f"{args.config}: OK")
    print(f"  device {config.device_id}, {source}")
    for key, path, _ in daemon_directories(config):
        print(f"  {key} {path} ({built.directories[key]})")
    serving = plan.serving
    if serving.origin == "builtin":
        model = "built-in logmel-stats"
    else:
        where = "installed by bundle/install" if serving.origin == "installed" else \
            str(config.model.bundle)
        signer = serving.signer
        signed = f"signed by {signer.name} (key id {signer.key_id})" if signer else "unsigned"
        model = f"bundle {serving.version} ({where}; {signed})"
    print(f"  model: {model} at {plan.model_rate_hz} Hz, window {plan.settings.window_s:g} s, "
          f"hop {plan.settings.hop_s:g} s")
    for setup in plan.machines:
        if setup.detector is not None:
            d = setup.detector
            what = f"bank {d.bank_version} {setup.bank_origin}, threshold {d.threshold:.5f}"
        else:
            assert setup.learner is not None
            what = (f"no bank yet; learns from the next {learning_amount(setup.learner)} with "
                    f"model {setup.learner.model.name}")
        print(f"  machine {setup.name} (channel {setup.channel}): {what}")
    print(f"  web view: {web_line}")
    return 0
