"""Prometheus metrics of the daemon, read at scrape time from the snapshot and the live feed.

A custom collector on its own registry: nothing is counted on the audio path for
Prometheus; a scrape turns the processing snapshot (already kept for `status`), the live
feed's alarm totals and inference histogram, and the MQTT client's stats into metric
families. Every family is listed in `FAMILIES`, so conf/grafana-dashboard.json can be
checked against the names a scrape really exposes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from edge_monitor.mqtt.topics import STATUSES
from edge_monitor.pipeline.live import INFERENCE_BUCKETS_S
from edge_monitor.web.context import WebContext

PREFIX = "edge_monitor_"
# Per-machine gauges taken from the snapshot: (name, snapshot key, help).
MACHINE_GAUGES = (
    ("score", "score", "anomaly score of the machine's last scored window"),
    ("threshold", "threshold", "alarm threshold in force (score units)"),
    ("ratio", "ratio", "last score / threshold (1 is the alarm line)"),
    ("input_level_dbfs", "level_dbfs", "RMS level of the machine's channel, last chunk"),
    ("learning_progress", "learning_progress", "fraction of the on-site learning done"),
)
# Box-wide counters taken from the snapshot: (name, snapshot key, help).
BOX_COUNTERS = (
    ("windows", "windows", "windows cut from the input, all machines"),
    ("late_windows", "late_windows", "windows decided later than one hop after capture"),
    ("unjudged_windows", "unjudged_windows", "silent or clipped windows not scored"),
    ("dropped_chunks", "dropped_chunks", "audio chunks the capture queue could not hold"),
    ("overflows", "overflows", "input device overflows"),
    ("source_restarts", "source_restarts", "times the input device was reopened"),
    ("clip_errors", "clip_errors", "alarm clips that could not be saved"),
)
FAMILIES = (
    *(PREFIX + name for name, _, _ in MACHINE_GAUGES),
    PREFIX + "state", PREFIX + "scored_windows", PREFIX + "model_errors", PREFIX + "alarms",
    PREFIX + "inference_seconds",
    *(PREFIX + name for name, _, _ in BOX_COUNTERS),
    PREFIX + "broker_connected", PREFIX + "journal_depth", PREFIX + "dropped_events",
)


class DaemonCollector:
    """Builds the metric families from the daemon's state at each scrape."""

    def __init__(self, context: WebContext) -> None:
        self.context = context

    def collect(self) -> Iterator[Metric]:
        snap = self.context.snapshot()
        machines: dict[str, dict[str, Any]] = snap.get("machines", {})
        for name, key, text in MACHINE_GAUGES:
            family = GaugeMetricFamily(PREFIX + name, text, labels=["machine"])
            for machine, m in machines.items():
                if m.get(key) is not None:
                    family.add_metric([machine], float(m[key]))
            yield family
        state = GaugeMetricFamily(PREFIX + "state", "1 for the machine's current status",
                                  labels=["machine", "status"])
        scored = CounterMetricFamily(PREFIX + "scored_windows",
                                     "windows scored by the machine's current detector",
                                     labels=["machine"])
        errors = CounterMetricFamily(PREFIX + "model_errors", "windows the model failed to score",
                                     labels=["machine"])
        alarms = CounterMetricFamily(PREFIX + "alarms", "alarms raised since the daemon started",
                                     labels=["machine"])
        totals = self.context.live.alarm_totals()
        for machine, m in machines.items():
            for status in STATUSES:
                state.add_metric([machine, status], 1.0 if m.get("status") == status else 0.0)
            scored.add_metric([machine], float(m.get("scored_windows") or 0))
            errors.add_metric([machine], float(m.get("model_errors") or 0))
            alarms.add_metric([machine], float(totals.get(machine, 0)))
        yield from (state, scored, errors, alarms)
        yield self._inference()
        for name, key, text in BOX_COUNTERS:
            family = CounterMetricFamily(PREFIX + name, text)
            if key in snap:
                family.add_metric([], float(snap[key] or 0))
            yield family
        yield from self._broker()

    def _inference(self) -> Metric:
        family = HistogramMetricFamily(PREFIX + "inference_seconds",
                                       "time to embed and score one window",
                                       labels=["machine"])
        for machine, h in self.context.live.inference().items():
            cumulative, buckets = 0, []
            for bound, count in zip(INFERENCE_BUCKETS_S, h.counts, strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", h.n))
            family.add_metric([machine], buckets, h.total_s)
        return family

    def _broker(self) -> Iterator[Metric]:
        link = self.context.broker()
        connected = GaugeMetricFamily(PREFIX + "broker_connected",
                                      "1 while connected to the MQTT broker (absent: MQTT off)")
        depth = GaugeMetricFamily(PREFIX + "journal_depth",
                                  "events and states waiting in the on-disk journal")
        dropped = CounterMetricFamily(PREFIX + "dropped_events",
                                      "events the journal had to drop (it was full)")
        if link is not None:
            connected.add_metric([], 1.0 if link["connected"] else 0.0)
            depth.add_metric([], float(link["backlog"]))
            dropped.add_metric([], float(link["dropped_events"]))
        yield from (connected, depth, dropped)


def metrics_registry(context: WebContext) -> CollectorRegistry:
    """A registry of its own (not the process-wide default) holding the daemon's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(context))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
