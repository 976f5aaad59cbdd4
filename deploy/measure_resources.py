"""Measure RSS and CPU of ``urbanpulse run`` under simulated load.

Starts a local Mosquitto (tests/servers.py), ``urbanpulse run`` and
``urbanpulse sim --rate R`` as separate processes, samples the pipeline
process from /proc (RSS, CPU time), and prints one JSON object per run. The figures size the
Kubernetes requests/limits (deploy/k8s) and are recorded in docs/deploy.md.

    python deploy/measure_resources.py --rate 5000 --duration 40 --output none files
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import MosquittoServer  # noqa: E402

__all__ = ["ProcSampler", "RunFigures", "main", "measure"]

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class ProcSampler:
    """RSS and CPU of one process, read from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last = (time.monotonic(), self.cpu_s())

    def rss(self) -> int:
        """Resident set size in bytes."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def cpu_s(self) -> float:
        """User + system CPU seconds so far."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S

    def cpu_percent(self) -> float:
        """CPU use since the previous call, in percent of one core."""
        now, cpu = time.monotonic(), self.cpu_s()
        last_t, last_cpu = self._last
        self._last = (now, cpu)
        return 100.0 * (cpu - last_cpu) / max(now - last_t, 1e-9)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFigures:
    output: str
    qos: int
    receive_maximum: int | None
    target_rate_per_s: float
    sent: int
    sim_rate_per_s: float
    received: int
    readings: int
    #: Refused messages by reason (a run is only meaningful when this is empty).
    dead_letters: dict[str, int]
    rss_start_mib: float
    rss_peak_mib: float
    rss_end_mib: float
    cpu_mean_percent: float
    cpu_p95_percent: float
    #: Seconds after the simulator stopped until the pipeline had caught up.
    drain_s: float
    #: Messages received by the pipeline per second, from the simulator's start
    #: until it had caught up.
    consumed_per_s: float
    #: CPU seconds the broker used in the whole run.
    broker_cpu_s: float
    samples: int


def _stats_lines(log_path: Path) -> list[dict[str, object]]:
    lines = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        stats = obj.get("stats") if isinstance(obj, dict) else None
        if isinstance(stats, dict) and "received" in stats:
            lines.append(stats)
    return lines


def _dead_letters(stats: dict[str, object]) -> dict[str, int]:
    raw = stats.get("dead_letters")
    if not isinstance(raw, dict):
        return {}
    return {str(k): int(v) for k, v in raw.items()}


def measure(
    *,
    output: str,
    rate_per_s: float,
    duration_s: float,
    qos: int,
    n_air: int,
    n_traffic: int,
    receive_maximum: int | None = None,
    sample_interval_s: float = 0.5,
) -> RunFigures:
    with tempfile.TemporaryDirectory(prefix="urbanpulse-measure-") as tmp_dir:
        tmp = Path(tmp_dir)
        with MosquittoServer(tmp / "broker") as broker:
            env = {
                **os.environ,
                "URBANPULSE_MQTT__HOST": broker.host,
                "URBANPULSE_MQTT__PORT": str(broker.port),
                "URBANPULSE_MQTT__QOS": str(qos),
                "URBANPULSE_WEB__PORT": "0",
                "URBANPULSE_OUTPUT__KIND": output,
                "URBANPULSE_OUTPUT__FILES__DIRECTORY": str(tmp / "lineprotocol"),
                "URBANPULSE_STATE_DIR": str(tmp / "state"),
                "URBANPULSE_SPOOL__DIRECTORY": str(tmp / "spool"),
                "URBANPULSE_LOG__FORMAT": "json",
                "URBANPULSE_LOG__STATS_INTERVAL_S": "2",
                "URBANPULSE_SIM__N_AIR": str(n_air),
                "URBANPULSE_SIM__N_TRAFFIC": str(n_traffic),
            }
            if receive_maximum is not None:
                env["URBANPULSE_MQTT__RECEIVE_MAXIMUM"] = str(receive_maximum)
            log_path = tmp / "run.log"
            with log_path.open("wb") as log:
                run = subprocess.Popen(
                    [sys.executable, "-m", "urbanpulse.cli", "run"],
                    env=env,
                    cwd=tmp,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                proc = ProcSampler(run.pid)
                assert broker.pid is not None
                broker_proc = ProcSampler(broker.pid)
                time.sleep(2.0)  # start-up: imports, connect, subscribe
                rss_start = proc.rss()
                sim = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "urbanpulse.cli",
                        "sim",
                        "--quiet",
                        "--rate",
                        str(rate_per_s),
                        "--duration",
                        str(duration_s),
                        "--qos",
                        str(qos),
                    ],
                    env=env,
                    cwd=tmp,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                proc.cpu_percent()
                broker_cpu_start_s = broker_proc.cpu_s()
                started = time.monotonic()
                rss: list[int] = []
                cpu: list[float] = []
                while sim.poll() is None:
                    time.sleep(sample_interval_s)
                    rss.append(proc.rss())
                    cpu.append(proc.cpu_percent())
                sim_out, _ = sim.communicate()
                sim_done = time.monotonic()
                sent = int(json.loads(sim_out.strip().splitlines()[-1])["sent"])
                # Let the pipeline drain what the broker still holds for it:
                # until it has everything, or nothing new for 5 s.
                seen, last_change = -1, time.monotonic()
                while time.monotonic() - last_change < 5.0:
                    time.sleep(sample_interval_s)
                    rss.append(proc.rss())
                    cpu.append(proc.cpu_percent())
                    stats = _stats_lines(log_path)
                    received = int(str(stats[-1]["received"])) if stats else 0
                    if received >= sent:
                        break
                    if received != seen:
                        seen, last_change = received, time.monotonic()
                drain_s = time.monotonic() - sim_done
                consumed_s = time.monotonic() - started
                broker_cpu_s = broker_proc.cpu_s() - broker_cpu_start_s
                rss_end = proc.rss()
                run.terminate()
                run.wait(timeout=60)
            sim_stats = json.loads(sim_out.strip().splitlines()[-1])
            stats = _stats_lines(log_path)
            last = stats[-1] if stats else {}
    mib = 1024 * 1024
    steady = cpu[2:] if len(cpu) > 4 else cpu
    return RunFigures(
        output=output,
        qos=qos,
        receive_maximum=receive_maximum,
        target_rate_per_s=rate_per_s,
        sent=int(sim_stats["sent"]),
        sim_rate_per_s=float(sim_stats["rate_per_s"]),
        received=int(str(last.get("received", -1))),
        readings=int(str(last.get("readings", -1))),
        dead_letters=_dead_letters(last),
        rss_start_mib=round(rss_start / mib, 1),
        rss_peak_mib=round(max(rss) / mib, 1),
        rss_end_mib=round(rss_end / mib, 1),
        cpu_mean_percent=round(statistics.fmean(steady), 1),
        cpu_p95_percent=round(statistics.quantiles(steady, n=20)[-1], 1),
        drain_s=round(drain_s, 1),
        consumed_per_s=round(int(str(last.get("received", 0))) / consumed_s, 1),
        broker_cpu_s=round(broker_cpu_s, 1),
        samples=len(cpu),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=5000.0)
    p.add_argument("--duration", type=float, default=40.0)
    p.add_argument("--qos", type=int, default=1, choices=(0, 1))
    p.add_argument("--n-air", type=int, default=2000)
    p.add_argument("--n-traffic", type=int, default=500)
    p.add_argument("--output", nargs="+", default=["none", "files"])
    p.add_argument("--receive-maximum", type=int, help="mqtt.receive_maximum of the pipeline")
    args = p.parse_args(argv)
    for output in args.output:
        figures = measure(
            output=output,
            rate_per_s=args.rate,
            duration_s=args.duration,
            qos=args.qos,
            n_air=args.n_air,
            n_traffic=args.n_traffic,
            receive_maximum=args.receive_maximum,
        )
        print(json.dumps(asdict(figures)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
