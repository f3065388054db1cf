"""`edge-monitor check -c CONF`: validate the config and its bundle without starting anything.

Exit 0 when the daemon would start with this config; exit 2 with one line per problem when
it would not. Nothing is opened (no audio device, no broker) and nothing is written.
"""

from __future__ import annotations

import argparse

from edge_monitor.audio_in.replay import find_audio_files
from edge_monitor.config.loader import load_config
from edge_monitor.daemon import learning_amount, plan_machines


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="daemon config file (YAML)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    plan = plan_machines(config)
    if config.source.kind == "replay":
        files = find_audio_files(config.source.replay.paths)
        source = f"replay of {len(files)} file(s)"
    else:
        source = f"sounddevice input {config.source.device or '(default)'}"
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
            what = f"bank {d.bank_version}, threshold {d.threshold:.5f}"
        else:
            assert setup.learner is not None
            what = f"no learned bank yet; learns from the next {learning_amount(setup.learner)}"
        print(f"  machine {setup.name} (channel {setup.channel}): {what}")
    return 0
