"""What the broker's save settings cost: events queued for an absent consumer, per mode.

The shipped conf/mosquitto/mosquitto.conf saves after every change so that a broker crash
keeps what it acknowledged (tools/fault_soak.py). Each save rewrites the whole database, so
the cost grows with what is queued. This queues `--events` QoS 1 events one at a time for a
persistent-session consumer that is away, with the shipped settings and with a timed save,
and prints per event the publish round trip and the bytes the broker wrote (its
/proc/PID/io `write_bytes`), and the database size at the end.

    .venv/bin/python tools/bench_broker_save.py --events 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from fault_soak import (  # tools/ is on sys.path when run as a script
    connect_client,
    persistent_broker,
    positive,
    shipped_persistence,
)

from edge_monitor.demo.local_broker import free_port

PAYLOAD = b"x" * 600  # about an alarm event's JSON


def written_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("write_bytes"))


def measure(workdir: Path, persistence: list[str], events: int) -> str:
    port = free_port()
    broker = persistent_broker(workdir, port, persistence)
    broker.start()
    try:
        consumer = connect_client(port, "absent-consumer", False)
        consumer.subscribe("events/#", qos=1)
        time.sleep(0.3)
        consumer.disconnect()
        consumer.loop_stop()
        box = connect_client(port, "box", True)
        assert broker.pid is not None
        before, started = written_bytes(broker.pid), time.perf_counter()
        for _ in range(events):
            box.publish("events/pump", PAYLOAD, qos=1).wait_for_publish(10)
        elapsed, wrote = time.perf_counter() - started, written_bytes(broker.pid) - before
        box.disconnect()
        box.loop_stop()
        time.sleep(0.2)
        database = workdir / "mosquitto.db"
        size = database.stat().st_size if database.exists() else 0
    finally:
        broker.kill()  # no save at the end: the database is what a crash would leave
    return (f"{', '.join(persistence)}: {elapsed / events * 1e3:.1f} ms per event, broker "
            f"wrote {wrote / 1e6:.1f} MB ({wrote / events / 1e3:.0f} kB per event), database "
            f"left by a SIGKILL {size / 1e6:.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000,
                        help="events queued (the shipped max_queued_messages is 10000)")
    parser.add_argument("--timed-s", type=positive, default=60.0,
                        help="the timed save to compare with (mosquitto's autosave_interval)")
    args = parser.parse_args()
    if args.events < 1:
        parser.error(f"--events {args.events}: queue at least 1 event")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
          f"{args.events} events of {len(PAYLOAD)} B queued for an absent consumer")
    modes = [shipped_persistence(),
             ["autosave_on_changes false", f"autosave_interval {args.timed_s:g}"]]
    for persistence in modes:
        with tempfile.TemporaryDirectory(prefix="broker-save-") as tmp:
            print(" ", measure(Path(tmp), persistence, args.events), flush=True)


if __name__ == "__main__":
    main()
