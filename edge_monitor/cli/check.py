"""`edge-monitor check -c CONF`: validate the config and its bundle without starting anything.

Exit 0 when the daemon would start with this config; exit 2 with one line per problem when
it would not. It goes the daemon's own way: the same loader, the same plan (bundle or learned
banks), the audio source, the clip store and the MQTT client built as `run` builds them, the
password read and the TLS files loaded, the web view's token read. Nothing is started (no
audio device is opened, no broker contacted, no port bound) and nothing is written.
"""

from __future__ import annotations

import argparse

from edge_monitor.audio_in.replay import ReplaySource
from edge_monitor.config.loader import load_config
from edge_monitor.daemon import (
    build_clip_store,
    build_mqtt,
    build_source,
    learning_amount,
    plan_machines,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="daemon config file (YAML)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    plan = plan_machines(config)
    built = build_source(config, plan.model_rate_hz)
    if isinstance(built, ReplaySource):
        source = f"replay of {len(built.files)} file(s)"
    else:
        source = f"sounddevice input {config.source.device or '(default)'}"
    build_clip_store(config)
    mqtt = build_mqtt(config)
    if mqtt is not None:
        mqtt.prepare()  # reads the password, loads the TLS files; connects nowhere
    web = config.web
    web_line = "off"
    if web.enabled:
        token = web.token()  # a missing or empty token file fails here, as in `run`
        access = "token required" if token else "loopback only, no token"
        mode = "commands allowed" if web.commands_enabled else "read-only"
        web_line = f"{web.base_url} ({access}, {mode})"
    print(f"{args.config}: OK")
    print(f"  device {config.device_id}, state in {config.state_dir}, {source}")
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
