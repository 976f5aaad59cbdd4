"""Scale-out: messages/s end to end with 1 and with N `urbanpulse run --shard k/N` processes.

    python bench/bench_scaleout.py [--messages 100000] [--shards 2] [--repeat 2]

Every run gets its own Mosquitto and VictoriaMetrics (tests/servers.py) and the
production process, `python -m urbanpulse.cli run`, configured as deployed:
QoS 1, persistent session, write-ahead spool fsynced before acknowledging,
1 min and 15 min windows, raw readings and aggregates to VictoriaMetrics
(/api/v2/write). The raw-socket publisher (bench/_load.py, a child process)
sends the same pre-generated simulator messages (2,000 sensors, ~2,300 streams)
at QoS 1, unpaced (20,000 unacknowledged at most).

Rate = messages / (first publish -> every process has processed its share and
has no points pending; the processes' stats lines every 0.25 s bound the error).
CPU per message is user + system time of each part (/proc/<pid>/stat) over the
run, divided by the messages published: pipelines (all shards), Mosquitto,
VictoriaMetrics, publisher. ``other`` is what the rest of the machine used
meanwhile (% of one core): this 2-core machine is shared with other work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _load import (
    CpuMeter,
    LoadPublisher,
    Message,
    MosquittoServer,
    VictoriaMetricsServer,
    machine_info,
    mosquitto_dropped,
    print_table,
    proc_cpu_s,
    sim_messages,
    write_packets,
)
from harness import PipelineProcess, urbanpulse_env

from ingest._shard import shard_of

STATS_S = 0.25


@dataclass(frozen=True, slots=True)
class Run:
    shards: int
    messages: int
    seconds: float
    pipeline_cpu_s: float
    broker_cpu_s: float
    db_cpu_s: float
    publisher_cpu_s: float
    other_pct: float
    messages_ok: int
    skipped: int
    points_written: int
    broker_dropped: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def us_per_msg(self, cpu_s: float) -> float:
        return cpu_s / self.messages * 1e6


def _env(mq: MosquittoServer, vm: VictoriaMetricsServer, tmp: Path) -> dict[str, str]:
    return urbanpulse_env(
        MQTT__PORT=str(mq.port),
        MQTT__QOS="1",
        MQTT__CLIENT_ID=f"bench-scale-{uuid.uuid4().hex[:6]}",
        MQTT__CLEAN_START="false",
        MQTT__SESSION_EXPIRY_S="3600",
        OUTPUT__KIND="influx2",
        OUTPUT__INFLUX2__URL=vm.url,
        SPOOL__DIRECTORY=str(tmp / "spool"),
        STATE_DIR=str(tmp / "state"),
        LOG__FORMAT="json",
        LOG__STATS_INTERVAL_S=str(STATS_S),
        # The simulator's fleet is larger than the default new-series rate cap.
        INGEST__MAX_NEW_SERIES_PER_MIN="0",
    )


def _stats(p: PipelineProcess) -> dict[str, Any]:
    stats = p.logs.last_stats() if p.logs is not None else None
    return stats or {}


def _done(procs: list[PipelineProcess], shares: list[int], *, skip_only: bool) -> bool:
    for p, share in zip(procs, shares, strict=True):
        s = _stats(p)
        if skip_only:
            return int(s.get("shard", {}).get("skipped", 0)) >= share
        handled = int(s.get("messages_ok", 0)) + sum(s.get("dead_letters", {}).values())
        if handled < share or s.get("pending_points", 1) or s.get("pending_records", 1):
            return False
    return True


def run_once(
    messages: list[Message],
    packets_dir: Path,
    shards: int,
    timeout_s: float,
    *,
    skip_only: bool = False,
) -> Run:
    """One configuration on fresh servers. ``skip_only``: ONE process, shard 1/2,
    fed only shard 0's messages: what receiving and skipping a message costs."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mq = MosquittoServer(tmp / "mq").start()
        vm = VictoriaMetricsServer(tmp / "vm").start()
        procs: list[PipelineProcess] = []
        try:
            env = _env(mq, vm, tmp)
            for k in range(shards):
                extra = {"URBANPULSE_MQTT__SHARD": f"{k}/{shards}"} if shards > 1 else {}
                if skip_only:
                    extra = {"URBANPULSE_MQTT__SHARD": "1/2"}
                procs.append(PipelineProcess({**env, **extra}).start())
            time.sleep(1.0)  # the subscriptions follow the CONNACK
            shares = [len(messages)] if shards == 1 else [0] * shards
            if shards > 1 and not skip_only:
                for topic, _ in messages:
                    shares[shard_of(topic, shards)] += 1
            packets = write_packets(messages, 1, packets_dir)
            pub = LoadPublisher(packets, mq.port, rate=0.0, window=20_000)
            pub.start()
            pids = [p.proc.pid if p.proc else None for p in procs]
            meter = CpuMeter(mq.pid, vm.pid, *pids)
            cpu0 = [proc_cpu_s(pid) for pid in (*pids, mq.pid, vm.pid)]
            meter.start()
            pub.go()
            deadline = time.monotonic() + timeout_s
            while not _done(procs, shares, skip_only=skip_only):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not done: {[_stats(p) for p in procs]}")
                time.sleep(0.02)
            t_done = time.monotonic()
            cpu1 = [proc_cpu_s(pid) for pid in (*pids, mq.pid, vm.pid)]
            other = meter.other_percent()
            result = pub.result()
            used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
            for p in procs:
                p.terminate()
            finals = [p.final_stats() for p in procs]
            return Run(
                shards=shards,
                messages=len(messages),
                seconds=t_done - result.t_start,
                pipeline_cpu_s=sum(used[:shards]),
                broker_cpu_s=used[shards],
                db_cpu_s=used[shards + 1],
                publisher_cpu_s=result.cpu_s,
                other_pct=other,
                messages_ok=sum(int(f["messages_ok"]) for f in finals),
                skipped=sum(int(f.get("shard", {}).get("skipped", 0)) for f in finals),
                points_written=sum(int(f["points_written"]) for f in finals),
                broker_dropped=mosquitto_dropped(mq),
            )
        finally:
            for p in procs:
                p.ensure_dead()
            mq.stop()
            vm.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="runs per configuration, alternated")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    print_table("machine", ["what", "value"], machine_info())
    messages = sim_messages(args.messages, rate_per_s=10_000.0)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as d:
        # The cost of a message of another shard: received, acknowledged, skipped.
        other = [m for m in messages if shard_of(m[0], 2) == 0]
        skip = run_once(other, Path(d), 1, args.timeout, skip_only=True)
        print(
            f"skip only: {skip.rate:,.0f} msg/s, "
            f"{skip.us_per_msg(skip.pipeline_cpu_s):.1f} CPU µs per skipped message "
            f"({skip.skipped:,} skipped, {skip.messages_ok} processed)",
            flush=True,
        )
        for _ in range(args.repeat):
            for n in (1, args.shards):
                r = run_once(messages, Path(d), n, args.timeout)
                print(
                    f"{n} process(es): {r.rate:,.0f} msg/s, "
                    f"pipelines {r.us_per_msg(r.pipeline_cpu_s):.1f} CPU µs/msg",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(r)
    rows = [
        [
            r.shards,
            f"{r.messages:,}",
            f"{r.seconds:.1f}",
            f"{r.rate:,.0f}",
            f"{r.us_per_msg(r.pipeline_cpu_s):.1f}",
            f"{r.us_per_msg(r.broker_cpu_s):.1f}",
            f"{r.us_per_msg(r.db_cpu_s):.1f}",
            f"{r.us_per_msg(r.publisher_cpu_s):.1f}",
            f"{r.other_pct:.0f}%",
            f"{r.messages_ok:,}",
            f"{r.skipped:,}",
            f"{r.points_written:,}",
            r.broker_dropped,
        ]
        for r in runs
    ]
    print_table(
        "end to end, QoS 1 + spool fsync, unpaced publisher",
        [
            "processes",
            "messages",
            "s",
            "msg/s",
            "pipelines CPU µs/msg",
            "broker µs/msg",
            "VM µs/msg",
            "publisher µs/msg",
            "other (1 core = 100%)",
            "processed",
            "skipped (other shards)",
            "points written",
            "broker drops",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
