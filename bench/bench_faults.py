"""Fault report: real processes, real faults, and what it cost (loss must be zero).

    python bench/bench_faults.py [--messages 20000] [--rate 2000] [--outage 30]

Runs the three fault scenarios of tests/test_faults.py at a larger size, each on
its own Mosquitto and VictoriaMetrics, with the real `urbanpulse run` process:
kill -9 of the pipeline mid-stream and restart; a Mosquitto restart mid-stream;
VictoriaMetrics stopped for ``--outage`` seconds mid-stream. For each: messages,
outage length, spool peak size, time to drain after the fault, unique readings
published vs stored (loss), and whether every closed window equals the offline
reference.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_faults as tf
from harness import PipelineProcess, check_store, expected_vm_readings, stored_readings
from reference import expected_readings
from servers import MosquittoServer, VictoriaMetricsServer


def _peak_spool(p: PipelineProcess) -> int:
    assert p.logs is not None
    return max((r["stats"]["spool"]["bytes"] for r in p.logs.lines if "stats" in r), default=0)


def scenario(kind: str, n: int, rate: float, outage_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mq = MosquittoServer(tmp / "mq").start()
        vm = VictoriaMetricsServer(tmp / "vm").start()
        procs: list[PipelineProcess] = []
        try:
            city = f"{kind}{uuid.uuid4().hex[:6]}"
            msgs = tf._messages(city, n)
            want = len(expected_vm_readings(expected_readings(msgs)))
            env = tf._env(mq, vm, tmp)
            p = PipelineProcess(env).start()
            procs.append(p)
            pub = tf.Publisher(mq.port, msgs, rate_per_s=rate)
            pub.start()
            p.wait_for(lambda: tf._processed(p) >= n // 4, 120, "a quarter processed")
            fault_at = time.monotonic()
            if kind == "kill9":
                p.kill9()
                time.sleep(1.0)
                p = PipelineProcess(env).start()
                procs.append(p)
            elif kind == "broker":
                mq.restart()
            else:
                vm.stop()
                time.sleep(outage_s)
                vm.start()
            outage = time.monotonic() - fault_at
            back_at = time.monotonic()
            pub.join(600)
            stored = tf._wait_stored(vm, city, want, 300)
            drain = time.monotonic() - back_at
            peak = max(_peak_spool(q) for q in procs)
            code = p.terminate()
            vm.force_flush()
            got = len(stored_readings(vm, city))
            windows_ok = True
            try:
                check_store(vm, city, msgs)
            except AssertionError:
                windows_ok = False
            return {
                "fault": kind,
                "messages": n,
                "published_sent": pub.sent,
                "outage_s": round(outage, 1),
                "spool_peak_bytes": peak,
                "time_to_drain_s": round(drain, 1),
                "readings_published": want,
                "readings_stored": max(got, stored),
                "loss": want - got,
                "exit_code": code,
                "windows_equal_reference": windows_ok,
            }
        finally:
            for q in procs:
                q.ensure_dead()
            mq.stop()
            vm.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--outage", type=float, default=30)
    args = ap.parse_args()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    where = f"{platform.node()} ({platform.machine()}), python {platform.python_version()}"
    print(f"# fault report, {when}, {where}")
    cols = ["fault", "messages", "outage_s", "spool_peak_bytes", "time_to_drain_s",
            "readings_published", "readings_stored", "loss", "exit_code",
            "windows_equal_reference"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for kind in ("kill9", "broker", "dbdown"):
        row = scenario(kind, args.messages, args.rate, args.outage)
        print("| " + " | ".join(str(row[c]) for c in cols) + " |", flush=True)


if __name__ == "__main__":
    main()
