""""This alarm was normal": the windows of one alarm join the machine's bank as normal sound.

When staff mark an alarm as a false one (the machine changed speed, a new load), the
embeddings of the windows that made it (`edge_monitor.enrolment.alarm_windows`, kept by
event id) pass the enrolment quality gate's window and fraction checks and are added as
`target` entries to the running banks, exactly as an enrolment adds its windows
(`enrolment.session.extended_banks`): synthesis, densities, leave-one-out scores and the
threshold are rebuilt. `EnrolmentManager.alarm_was_normal` stores the result as a new bank
version (audit record, rollback) and swaps it in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_monitor.config.sections import QualityGateConfig
from edge_monitor.core.bank import Bank
from edge_monitor.core.detector import Detector
from edge_monitor.core.errors import BadInputError
from edge_monitor.enrolment.alarm_windows import AlarmWindows
from edge_monitor.enrolment.audit import utc_stamp
from edge_monitor.enrolment.quality_gate import QualityGate, QualityReport
from edge_monitor.enrolment.session import extended_banks


def already_added(detector: Detector, event_id: str) -> str | None:
    """The bank version that already holds windows of this alarm, or None."""
    prefix = f"alarm-{event_id}@"
    for member in detector.members:
        if any(str(clip_id).startswith(prefix) for clip_id in member.bank.clip_ids):
            return member.bank.version
    return None


def feedback_banks(
    detector: Detector, record: AlarmWindows, gate: QualityGateConfig | None,
) -> tuple[dict[str, Bank], QualityReport]:
    """The running banks plus the alarm's usable windows, and the gate's report.

    Refused (BadInputError) when the alarm was scored by other models than those running,
    when its windows are already in the bank, or when the gate rejects them.
    """
    machine, event_id = detector.machine, record.event_id
    running = sorted(m.name for m in detector.members)
    if record.model_version != detector.model_version or sorted(record.embeddings) != running:
        raise BadInputError(
            f"machine {machine}: alarm {event_id} was scored by model {record.model_version} "
            f"({', '.join(sorted(record.embeddings))}); the machine now runs "
            f"{detector.model_version} ({', '.join(running)}), so its windows cannot join "
            "the bank: enrol the new normal sound instead"
        )
    holder = already_added(detector, event_id)
    if holder is not None:
        raise BadInputError(
            f"machine {machine}: alarm {event_id} was already marked normal; its windows are "
            f"in bank version {holder}"
        )
    quality = QualityGate(gate)
    usable = [i for i, problem in enumerate(record.problems)
              if quality.tally(problem, record.window_s)]
    report = quality.verdict(require_amount=False)
    vectors = {name: record.matrix(name)[np.asarray(usable)] for name in running}
    ids = [record.window_ids[i] for i in usable]
    stamp: dict[str, Any] = {"enrolled_at": utc_stamp(), "enrolled_from": f"alarm {event_id}"}
    return extended_banks(detector, vectors, ids, stamp), report
