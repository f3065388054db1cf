"""Every MQTT topic string and payload of the runtime, in one module.

Subscribers (SCADA, Node-RED, Home Assistant) depend on these names and JSON shapes, so
nothing else in the code base may spell a topic: they build `Message`s here. The topic
tree and payloads are documented with examples in docs/mqtt.md.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from edge_monitor import __version__
from edge_monitor.core.errors import ConfigError

DEFAULT_PREFIX = "edge-monitor"
HA_DEFAULT_PREFIX = "homeassistant"
ONLINE = "online"
OFFLINE = "offline"
QOS_TELEMETRY = 0
QOS_RELIABLE = 1

STATUSES = ("normal", "anomaly", "fault", "enrolling", "learning")
EVENT_TYPES = ("new", "update", "end")
# Why an alarm ended, when not by the detector (or a clean stop): "restart" is the `end` the
# daemon sends at start for an alarm it was in when it died.
END_REASONS = ("restart",)
# Steps of a bundle rollout, as published on the retained `bundle` topic.
INSTALL_STEPS = ("downloading", "verifying", "swapping", "watching", "installed", "refused",
                 "failed", "rolled-back")

# The commands under `<root>/cmd/`; edge_monitor.mqtt.commands says which fields each takes.
COMMAND_NAMES = (
    "reload", "status", "enroll/start", "enroll/commit", "enroll/cancel", "enroll/rollback",
    "enroll/status", "enroll/false-alarm", "bundle/install", "bundle/rollback",
)
# Home Assistant buttons per machine: (command, object id suffix, name, icon). Announced
# only for commands this box accepts; `enroll/start` records HA_ENROL_SECONDS.
HA_BUTTONS = (
    ("enroll/start", "enrol_start", "start enrolment", "mdi:record-rec"),
    ("enroll/commit", "enrol_commit", "commit enrolment", "mdi:check"),
    ("enroll/rollback", "enrol_rollback", "roll back bank", "mdi:undo"),
)
HA_ENROL_SECONDS = 120
_COMMAND_LEVEL = "cmd"
_RESULT_NAME = "result"
_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EVENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_segment(value: str, field_name: str) -> str:
    """Return `value` if it is safe as one topic level and as a Home Assistant object id."""
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise ConfigError(
            f"{field_name} = {value!r} cannot be used in an MQTT topic: "
            "use 1 to 64 letters, digits, '_' or '-' (no '/', '+', '#' or spaces)"
        )
    return value


def check_event_id(value: Any, field_name: str = "event_id") -> str:
    """Return `value` if it is an alarm's event id as the daemon makes them (`new_id`)."""
    if not isinstance(value, str) or not _EVENT_ID.fullmatch(value):
        shown = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:60]}..."
        raise ConfigError(
            f"{field_name} = {shown}: give the alarm's event_id as its events carry it, a "
            "dashed lowercase UUID such as 1e9653da-a6b2-4d83-be53-ec8e881bf6b0"
        )
    return value


def check_prefix(prefix: str, field_name: str = "mqtt.prefix") -> str:
    """A prefix may have several levels (`plant1/edge-monitor`), each a safe segment."""
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(f"{field_name} is empty: give a topic prefix such as {DEFAULT_PREFIX!r}")
    for level in prefix.split("/"):
        check_segment(level, field_name)
    return prefix


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a `Z`, the form every consumer parses."""
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment!r} has no time zone; use datetime.now(timezone.utc)")
    text = moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


def _number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a non-finite score is published as null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def ratio(score: float | None, threshold: float | None) -> float | None:
    """score / threshold to 3 decimals (1.0 is the alarm line); null without a usable threshold."""
    score, threshold = _number(score), _number(threshold)
    if score is None or threshold is None or threshold <= 0:
        return None
    return round(score / threshold, 3)


def _iso_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else iso_utc(moment)


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Message:
    """One MQTT publication: what the client hands to paho (and the journal stores)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True)
class MachineState:
    """Retained per-machine state; `reason` says why when the status is `fault`."""

    status: str
    score: float | None
    threshold: float | None
    since: datetime
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"state status {self.status!r} is not one of {STATUSES}")
        if self.status == "fault" and not self.reason:
            raise ValueError("a fault state needs a reason saying what failed")

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "score": _number(self.score),
            "threshold": _number(self.threshold),
            "ratio": ratio(self.score, self.threshold),
            "since": iso_utc(self.since),
            "reason": self.reason,
        }

    def to_json(self) -> str:
        return _dumps(self.to_dict())


@dataclass(frozen=True)
class AlarmEvent:
    """One message about an alarm.

    `event_id` names the alarm and is shared by its new, update and end messages;
    `message_id` names this one message so consumers can drop repeated deliveries;
    `reason` (END_REASONS) is set only on an `end` the detector did not decide.
    """

    type: str
    event_id: str
    machine: str
    started_at: datetime
    updated_at: datetime
    peak_score: float
    threshold: float
    model_version: str
    bank_version: str
    clip_path: str | None = None
    clip_url: str | None = None  # where a subscriber fetches the clip (the web view is on)
    ended_at: datetime | None = None
    message_id: str = field(default_factory=new_id)
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"event type {self.type!r} is not one of {EVENT_TYPES}")
        if (self.type == "end") != (self.ended_at is not None):
            raise ValueError("ended_at is set exactly when the event type is 'end'")
        if self.reason is not None and (self.type != "end" or self.reason not in END_REASONS):
            raise ValueError(f"event reason {self.reason!r}: only an 'end' has one, one of "
                             f"{END_REASONS}")
        check_segment(self.machine, "event machine")

    @classmethod
    def from_json(cls, payload: bytes) -> AlarmEvent:
        """Read back a payload `to_json` wrote (the journal keeps the last one of an open
        alarm, to end it after a crash)."""
        body = json.loads(payload)

        def moment(key: str) -> datetime:
            return datetime.fromisoformat(body[key])

        return cls(
            type=body["type"], event_id=body["event_id"], machine=body["machine"],
            started_at=moment("started_at"), updated_at=moment("updated_at"),
            peak_score=math.nan if body["peak_score"] is None else body["peak_score"],
            threshold=math.nan if body["threshold"] is None else body["threshold"],
            model_version=body["model_version"], bank_version=body["bank_version"],
            clip_path=body["clip_path"], clip_url=body.get("clip_url"),
            ended_at=None if body["ended_at"] is None else moment("ended_at"),
            message_id=body["message_id"], reason=body.get("reason"),
        )

    def ended(self, reason: str, at: datetime) -> AlarmEvent:
        """The `end` of this alarm, sent by the daemon itself (`reason` in END_REASONS)."""
        return replace(self, type="end", updated_at=at, ended_at=at, clip_path=None,
                       clip_url=None, message_id=new_id(), reason=reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "event_id": self.event_id,
            "message_id": self.message_id,
            "machine": self.machine,
            "started_at": iso_utc(self.started_at),
            "updated_at": iso_utc(self.updated_at),
            "ended_at": _iso_or_none(self.ended_at),
            "peak_score": _number(self.peak_score),
            "threshold": _number(self.threshold),
            "ratio": ratio(self.peak_score, self.threshold),
            "model_version": self.model_version,
            "bank_version": self.bank_version,
            "clip_path": self.clip_path,
            "clip_url": self.clip_url,
            "reason": self.reason,
        }

    def to_json(self) -> str:
        return _dumps(self.to_dict())


def alarm_of(message: Message) -> tuple[str, str] | None:
    """(type, event_id) of an alarm event message, None for any other payload."""
    try:
        body = json.loads(message.payload)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("type") not in EVENT_TYPES:
        return None
    event_id = body.get("event_id")
    return (body["type"], event_id) if isinstance(event_id, str) else None


@dataclass(frozen=True)
class ScoreSample:
    """Telemetry: the score of one window, published at QoS 0 and never journaled."""

    score: float
    threshold: float | None
    at: datetime

    def to_json(self) -> str:
        body = {"score": _number(self.score), "threshold": _number(self.threshold),
                "ratio": ratio(self.score, self.threshold)}
        return _dumps({**body, "at": iso_utc(self.at)})


@dataclass(frozen=True)
class CommandReply:
    """Reply on `cmd/result`; `request_id` is null only when the request had none readable."""

    request_id: str | None
    command: str | None
    ok: bool
    result: Mapping[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> str:
        body: dict[str, Any] = {"request_id": self.request_id, "command": self.command}
        body["ok"] = self.ok
        if self.ok:
            body["result"] = dict(self.result or {})
        else:
            body["error"] = self.error
        return _dumps(body)


@dataclass(frozen=True)
class BundleStatus:
    """Retained per-box `bundle`: what runs now, and how the last install went.

    `running` holds version, signer, key_id, sha256 and origin (installed | config |
    builtin) of the bundle serving now; `install` the last install's request id, step
    (INSTALL_STEPS), version, progress (0..1 while downloading) and error.
    """

    running: Mapping[str, Any]
    install: Mapping[str, Any] | None
    at: datetime

    def __post_init__(self) -> None:
        if self.install is not None and self.install.get("step") not in INSTALL_STEPS:
            raise ValueError(f"install step {self.install.get('step')!r} is not one of "
                             f"{INSTALL_STEPS}")

    def to_json(self) -> str:
        body = {"running": dict(self.running), "install": dict(self.install or {}) or None}
        return _dumps({**body, "at": iso_utc(self.at)})


class TopicTree:
    """Topics under `<prefix>/<device_id>` plus Home Assistant's discovery topics."""

    def __init__(
        self,
        device_id: str,
        prefix: str = DEFAULT_PREFIX,
        ha_prefix: str = HA_DEFAULT_PREFIX,
    ) -> None:
        self.device_id = check_segment(device_id, "mqtt.device_id")
        self.root = f"{check_prefix(prefix)}/{device_id}"
        self.ha_prefix = check_prefix(ha_prefix, "mqtt.ha_prefix")
        self.availability = f"{self.root}/availability"
        self.command_filter = f"{self.root}/{_COMMAND_LEVEL}/#"
        self.command_result = f"{self.root}/{_COMMAND_LEVEL}/{_RESULT_NAME}"
        self.ha_status = f"{self.ha_prefix}/status"
        self.bundle = f"{self.root}/bundle"

    def state(self, machine: str) -> str:
        return f"{self.root}/machines/{check_segment(machine, 'machine')}/state"

    def events(self, machine: str) -> str:
        return f"{self.root}/machines/{check_segment(machine, 'machine')}/events"

    def score(self, machine: str) -> str:
        return f"{self.root}/machines/{check_segment(machine, 'machine')}/score"

    def command(self, name: str) -> str:
        return f"{self.root}/{_COMMAND_LEVEL}/{name}"

    def command_name(self, topic: str) -> str | None:
        """The command a topic addresses (`enroll/start`), or None for other topics and replies."""
        head = f"{self.root}/{_COMMAND_LEVEL}/"
        if not topic.startswith(head) or topic == self.command_result:
            return None
        return topic[len(head):]

    def ha_config(self, component: str, machine: str, suffix: str) -> str:
        object_id = f"{check_segment(machine, 'machine')}_{suffix}"
        return f"{self.ha_prefix}/{component}/{self.device_id}/{object_id}/config"

    # Messages -----------------------------------------------------------------------

    def availability_message(self, online: bool) -> Message:
        payload = ONLINE if online else OFFLINE
        return Message(self.availability, payload.encode(), QOS_RELIABLE, True)

    def state_message(self, machine: str, state: MachineState) -> Message:
        return Message(self.state(machine), state.to_json().encode(), QOS_RELIABLE, True)

    def state_clear_message(self, machine: str) -> Message:
        """An empty retained payload deletes the retained state of a machine no longer watched."""
        return Message(self.state(machine), b"", QOS_RELIABLE, True)

    def event_message(self, event: AlarmEvent) -> Message:
        return Message(self.events(event.machine), event.to_json().encode(), QOS_RELIABLE, False)

    def score_message(self, machine: str, sample: ScoreSample) -> Message:
        return Message(self.score(machine), sample.to_json().encode(), QOS_TELEMETRY, False)

    def bundle_message(self, status: BundleStatus) -> Message:
        return Message(self.bundle, status.to_json().encode(), QOS_RELIABLE, True)

    def reply_message(self, reply: CommandReply) -> Message:
        return Message(self.command_result, reply.to_json().encode(), QOS_RELIABLE, False)

    def discovery_messages(self, machines: Iterable[str], device_name: str = "",
                           commands: Collection[str] = ()) -> list[Message]:
        """Retained Home Assistant configs, per machine: the status as an enum sensor, an
        anomaly and a fault problem sensor (a dead microphone must not read "OK"), the score
        and its ratio to the threshold; and a button for each enrolment command of
        HA_BUTTONS the box accepts (`commands`). The buttons of the others get an empty
        config, which removes one announced before the commands were turned off."""
        device = {
            "identifiers": [f"edge_monitor_{self.device_id}"],
            "name": device_name or self.device_id,
            "manufacturer": "edge-monitor",
            "model": "edge machine-sound monitor",
            "sw_version": __version__,
        }
        common = {
            "availability": [{
                "topic": self.availability,
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            }],
            "device": device,
            "origin": {"name": "edge-monitor", "sw_version": __version__},
        }
        messages = []
        for machine in machines:
            for component, suffix, body in self._entities(machine):
                config = {"unique_id": f"{self.device_id}_{machine}_{suffix}", **body, **common}
                messages.append(self._config(self.ha_config(component, machine, suffix), config))
            for command, suffix, body in self._buttons(machine):
                topic = self.ha_config("button", machine, suffix)
                if command not in commands:
                    messages.append(Message(topic, b"", QOS_RELIABLE, True))
                    continue
                config = {"unique_id": f"{self.device_id}_{machine}_{suffix}", **body, **common}
                messages.append(self._config(topic, config))
        return messages

    def _buttons(self, machine: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(command, object id suffix, config) of each Home Assistant button of a machine:
        pressing publishes a complete command (fixed request_id) to its `cmd/` topic."""
        buttons = []
        for command, suffix, name, icon in HA_BUTTONS:
            args: dict[str, Any] = {"request_id": f"ha-{machine}-{suffix}", "machine": machine}
            if command == "enroll/start":
                args["seconds"] = HA_ENROL_SECONDS
                name = f"{name} ({HA_ENROL_SECONDS} s)"
            buttons.append((command, suffix, {
                "name": f"{machine} {name}", "command_topic": self.command(command),
                "payload_press": _dumps(args), "qos": QOS_RELIABLE, "retain": False,
                "entity_category": "config", "icon": icon,
            }))
        return buttons

    def _entities(self, machine: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(component, object id suffix, config) of each Home Assistant entity of a machine."""
        state, score = self.state(machine), self.score(machine)

        def problem_when(status: str) -> str:
            return f"{{{{ 'ON' if value_json.status == '{status}' else 'OFF' }}}}"

        return [
            ("sensor", "status", {
                "name": f"{machine} status", "device_class": "enum", "options": list(STATUSES),
                "state_topic": state, "value_template": "{{ value_json.status }}",
                "json_attributes_topic": state, "icon": "mdi:state-machine",
            }),
            ("binary_sensor", "anomaly", {
                "name": f"{machine} anomaly", "device_class": "problem", "state_topic": state,
                "value_template": problem_when("anomaly"), "payload_on": "ON",
                "payload_off": "OFF", "json_attributes_topic": state,
            }),
            ("binary_sensor", "fault", {
                "name": f"{machine} input fault", "device_class": "problem",
                "state_topic": state, "value_template": problem_when("fault"),
                "payload_on": "ON", "payload_off": "OFF", "json_attributes_topic": state,
                "entity_category": "diagnostic",
            }),
            ("sensor", "score", {
                "name": f"{machine} anomaly score", "state_topic": score,
                "value_template": "{{ value_json.score }}", "state_class": "measurement",
            }),
            ("sensor", "ratio", {
                "name": f"{machine} score / threshold", "state_topic": score,
                "value_template": "{{ value_json.ratio }}", "state_class": "measurement",
                "suggested_display_precision": 2, "icon": "mdi:gauge",
            }),
        ]

    def discovery_removal_messages(self, machines: Iterable[str]) -> list[Message]:
        """Empty retained configs make Home Assistant forget machines no longer monitored."""
        messages = []
        for machine in machines:
            announced = [(component, suffix) for component, suffix, _ in self._entities(machine)]
            announced += [("button", suffix) for _, suffix, _ in self._buttons(machine)]
            messages += [Message(self.ha_config(component, machine, suffix), b"", QOS_RELIABLE,
                                 True) for component, suffix in announced]
        return messages

    @staticmethod
    def _config(topic: str, body: Mapping[str, Any]) -> Message:
        return Message(topic, _dumps(body).encode(), QOS_RELIABLE, True)


def fleet_filters(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Subscriptions that bring every box's retained availability, states and bundle."""
    root = check_prefix(prefix)
    return [f"{root}/+/availability", f"{root}/+/machines/+/state", f"{root}/+/bundle"]


def parse_fleet_topic(prefix: str, topic: str) -> tuple[str, str, str | None] | None:
    """(device, kind, machine) of a topic `fleet_filters` matched; kind is availability,
    state or bundle; None for anything else."""
    head = f"{prefix}/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head):].split("/")
    if len(levels) == 2 and levels[1] in ("availability", "bundle"):
        return levels[0], levels[1], None
    if len(levels) == 4 and levels[1] == "machines" and levels[3] == "state":
        return levels[0], "state", levels[2]
    return None
