"""The fault soak's short profile (tools/fault_soak.py runs the long one): a persistent
mosquitto killed by SIGKILL and stopped by SIGTERM, the daemon SIGKILLed during alarms and
restarted, a persistent-session subscriber; no event lost, no alarm left open."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import fault_soak  # a tool, found by the path above


def test_short_fault_soak_loses_no_event_and_leaves_no_alarm_open(tmp_path):
    profile = fault_soak.Profile(broker_restarts=2, daemon_kills=1, broker_up_s=(0.5, 1.5),
                                 final_run_s=1.0)
    report = fault_soak.Soak(tmp_path, profile).run()
    print("\n".join(report.lines()))
    assert (report.broker_kills, report.broker_terms, report.daemon_kills) == (1, 1, 1)
    assert report.emitted["update"] > 0
    assert report.restart_ends >= report.kills_in_alarm
    assert report.delivered >= sum(report.emitted.values()) > 0
    assert report.lost == [] and report.open_alarms == [] and report.journal_backlog == 0
