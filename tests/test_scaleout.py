"""Scale-out: `urbanpulse run --shard k/N` processes share one broker and database.

Unit tests pin the shard function (stable across processes and hash seeds,
balanced on a realistic fleet, strict ``k/N`` parsing) and the settings a shard
derives. The integration test runs two real `urbanpulse run` processes (shard
0/2 from the environment, 1/2 from the command line, otherwise ONE config)
against one Mosquitto and one VictoriaMetrics and checks that what is stored is
exactly the offline reference of a single process, and that the two processes
held disjoint, non-empty sets of sensors that together are the whole fleet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from harness import (
    START_NS,
    LogReader,
    PipelineProcess,
    check_store,
    city_messages,
    expected_vm_readings,
    pipeline_env,
    publish_reliably,
    stored_readings,
)
from pydantic import ValidationError
from reference import expected_readings
from servers import MosquittoServer, VictoriaMetricsServer

import ingest._shard as shard_mod
from ingest._shard import ShardFilter, ShardSpec, shard_key, shard_of
from sim._runner import SimOptions, Simulator
from urbanpulse._app import shard_settings
from urbanpulse._clock import ManualClock
from urbanpulse._config import MqttSettings, Settings

PATTERN = "urbanpulse/{city}/{district}/{kind}/{sensor_id}"


def _fleet_topics(n_air: int, n_traffic: int, seed: int = 3) -> list[str]:
    """One topic per sensor of a simulated fleet (the realistic names and districts)."""
    sim = Simulator(
        SimOptions(seed=seed, n_air=n_air, n_traffic=n_traffic, start_ns=START_NS),
        ManualClock(START_NS),
    )
    # Two air intervals cover every stream at least once.
    return sorted({t for t, _ in sim.messages(3 * (n_air + 2 * n_traffic))})


# -- the shard function ------------------------------------------------------------------
def test_shard_of_is_crc32_of_the_utf8_key_modulo_n() -> None:
    # Pinned values: changing the hash would silently move every sensor to another
    # shard (and away from its checkpointed state) after an upgrade.
    # (CRC-32 0x9f15ae68, 0xc4e17a44 and 0x948e5a02, from binascii.crc32.)
    assert shard_of("urbanpulse/bandung/coblong/air/AQ-0001", 7) == 0x9F15AE68 % 7 == 0
    assert shard_of("urbanpulse/bandung/coblong/air/AQ-0001", 3) == 0x9F15AE68 % 3 == 2
    assert shard_of("urbanpulse/bandung/sukajadi/traffic/TR-0004", 16) == 4
    assert shard_of("kota/dépok/x", 5) == 0x948E5A02 % 5  # UTF-8 bytes of non-ASCII
    assert shard_of("anything", 1) == 0
    with pytest.raises(ValueError, match="count"):
        shard_of("x", 0)


_CHILD = """
import json, sys
from ingest._shard import shard_of
topics = json.loads(sys.stdin.read())
print(json.dumps([shard_of(t, n) for t in topics for n in (2, 3, 8)]))
"""


def test_shard_of_is_the_same_in_other_processes_and_hash_seeds() -> None:
    topics = _fleet_topics(60, 20)
    here = [shard_of(t, n) for t in topics for n in (2, 3, 8)]
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(topics),
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        assert json.loads(out.stdout) == here, seed


@pytest.mark.parametrize("count", [2, 3, 4, 8])
def test_shards_are_balanced_on_a_realistic_fleet(count: int) -> None:
    topics = _fleet_topics(1500, 500)
    assert len(topics) == 2000
    sizes = np.bincount([shard_of(t, count) for t in topics], minlength=count)
    mean = len(topics) / count
    # Binomial spread is sqrt(n p (1-p)) <= 22 here; 15 % of the mean is >= 3.4 sigma.
    assert sizes.min() >= 0.85 * mean, sizes
    assert sizes.max() <= 1.15 * mean, sizes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2/2", "index must be in 0..1"),
        ("-1/2", "expected 'k/N'"),
        ("0/0", "count must be >= 1"),
        ("1", "expected 'k/N'"),
        ("a/2", "expected 'k/N'"),
        ("1/2/3", "expected 'k/N'"),
        ("", "expected 'k/N'"),
    ],
)
def test_shard_spec_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShardSpec.parse(text)


def test_shard_spec_parse_and_str() -> None:
    spec = ShardSpec.parse(" 3 / 4 ", by="district")
    assert (spec.index, spec.count, spec.by) == (3, 4, "district")
    assert str(spec) == "3/4"
    assert spec.suffix == "shard-3-of-4"
    with pytest.raises(ValueError, match="shard by"):
        ShardSpec(index=0, count=2, by="city")  # type: ignore[arg-type]


def test_shard_key_by_district_is_the_topic_up_to_the_district_level() -> None:
    assert shard_key("urbanpulse/bandung/coblong/air/AQ1", district_level=2) == (
        "urbanpulse/bandung/coblong"
    )
    assert shard_key("urbanpulse/bandung/coblong/air/AQ1") == "urbanpulse/bandung/coblong/air/AQ1"
    assert shard_key("a/b", district_level=2) == "a/b"  # too few levels: whole topic


def _partition(filters: list[ShardFilter], topics: list[str]) -> list[list[str]]:
    owned: list[list[str]] = [[] for _ in filters]
    for i, f in enumerate(filters):
        sink: list[str] = []

        def handler(topic: str, _payload: bytes, _qos: int, sink: list[str] = sink) -> None:
            sink.append(topic)

        wrapped = f.wrap(handler)
        for t in topics:
            assert wrapped(t, b"{}", 1) is None
        owned[i] = sink
    return owned


def test_filters_partition_the_topics_and_count_what_they_skip() -> None:
    topics = _fleet_topics(60, 20)
    filters = [ShardFilter(ShardSpec(index=k, count=3), topic_pattern=PATTERN) for k in range(3)]
    owned = _partition(filters, topics)
    assert sorted(t for part in owned for t in part) == topics
    for k, (f, part) in enumerate(zip(filters, owned, strict=True)):
        assert part
        assert len(part) < len(topics)
        assert all(shard_of(t, 3) == k for t in part)
        assert (f.owned, f.skipped) == (len(part), len(topics) - len(part))


def test_district_sharding_keeps_each_district_in_one_shard() -> None:
    topics = _fleet_topics(200, 60)
    districts = {t.rsplit("/", 2)[0] for t in topics}
    assert len(districts) >= 4
    filters = [
        ShardFilter(ShardSpec(index=k, count=2, by="district"), topic_pattern=PATTERN)
        for k in range(2)
    ]
    owned = _partition(filters, topics)
    for part in owned:
        assert part
    where = {t.rsplit("/", 2)[0]: k for k, part in enumerate(owned) for t in part}
    for k, part in enumerate(owned):
        assert all(where[t.rsplit("/", 2)[0]] == k for t in part)
    # By topic, the same districts are split across both shards.
    by_topic = Counter(
        (t.rsplit("/", 2)[0], shard_of(t, 2)) for t in topics if t.rsplit("/", 2)[0] in where
    )
    assert len({d for d, _ in by_topic}) < len(by_topic)


def test_filter_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard_mod, "_CACHE_MAX", 8)
    f = ShardFilter(ShardSpec(index=0, count=2), topic_pattern=PATTERN)
    topics = [f"urbanpulse/c/d/air/S{i}" for i in range(50)]
    assert [f.owns(t) for t in topics] == [shard_of(t, 2) == 0 for t in topics]
    assert len(f._cache) <= 8


def test_one_shard_of_one_passes_everything_through() -> None:
    f = ShardFilter(ShardSpec(index=0, count=1), topic_pattern=PATTERN)
    seen: list[str] = []

    def handler(topic: str, _payload: bytes, _qos: int) -> None:
        seen.append(topic)

    f.wrap(handler)("urbanpulse/c/d/air/S1", b"{}", 1)
    assert seen == ["urbanpulse/c/d/air/S1"]


# -- settings ----------------------------------------------------------------------------
def test_mqtt_shard_setting_is_validated_and_normalised() -> None:
    assert MqttSettings(shard=" 1/ 2").shard == "1/2"
    assert MqttSettings().shard is None
    with pytest.raises(ValidationError, match="shard index"):
        MqttSettings(shard="2/2")


def test_shard_settings_give_each_shard_its_own_session_and_directories(tmp_path: Path) -> None:
    base = Settings(
        mqtt=MqttSettings(client_id="up", shard="1/4"),
        spool={"directory": tmp_path / "spool"},
        state_dir=tmp_path / "state",
    )
    s = shard_settings(base)
    assert s.mqtt.client_id == "up-shard-1-of-4"
    assert s.spool.directory == tmp_path / "spool" / "shard-1-of-4"
    assert s.state_dir == tmp_path / "state" / "shard-1-of-4"
    unsharded = Settings(mqtt=MqttSettings(client_id="up"), state_dir=tmp_path / "state")
    assert shard_settings(unsharded) == unsharded
    no_id = shard_settings(Settings(mqtt=MqttSettings(shard="0/2")))
    assert no_id.mqtt.client_id is None  # random ids are distinct already


# -- two real processes ------------------------------------------------------------------
class _RunProcess(PipelineProcess):
    """`urbanpulse run` with extra command-line arguments."""

    def __init__(self, env: dict[str, str], args: list[str]) -> None:
        super().__init__(env)
        self.args = args

    def start(self, *, wait_connected_s: float = 20) -> _RunProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "urbanpulse.cli", "run", *self.args],
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.logs = LogReader(self.proc.stderr)
        self.wait_for(
            lambda: self.logs is not None and self.logs.has("mqtt connected"),
            wait_connected_s,
            "mqtt connected",
        )
        return self


def _messages(city: str, n: int) -> list[tuple[str, bytes]]:
    return city_messages(city, n, seed=5, n_air=40, n_traffic=12)


def _env(mq: MosquittoServer, vm: VictoriaMetricsServer, tmp: Path, **extra: str) -> dict[str, str]:
    # The same client id for both: each shard adds its suffix.
    return pipeline_env(mq, vm, tmp, client_id="up-scale", **extra)


def _checkpoint_sensors(state_dir: Path) -> set[tuple[str, str]]:
    with np.load(state_dir / "checkpoint.npz") as snap:
        meta = json.loads(snap["meta"].tobytes())
    return {(district, sensor_id) for _city, district, _kind, sensor_id, _lane in meta["keys"]}


@pytest.mark.integration
def test_two_shards_store_exactly_what_one_process_would(
    servers: tuple[MosquittoServer, VictoriaMetricsServer], tmp_path: Path
) -> None:
    mq, vm = servers
    city = f"shard{uuid.uuid4().hex[:6]}"
    msgs = _messages(city, 4000)
    expected = len(expected_vm_readings(expected_readings(msgs)))
    env = _env(mq, vm, tmp_path)
    shard0 = PipelineProcess({**env, "URBANPULSE_MQTT__SHARD": "0/2"})
    shard1 = _RunProcess(env, ["--shard", "1/2"])
    try:
        shard0.start()
        shard1.start()
        publish_reliably(mq.port, msgs, rate_per_s=2000)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            vm.force_flush()
            if len(stored_readings(vm, city)) >= expected:
                break
            time.sleep(0.5)
        assert shard0.terminate() == 0
        assert shard1.terminate() == 0
    finally:
        shard0.ensure_dead()
        shard1.ensure_dead()
    check_store(vm, city, msgs)

    per_shard = Counter(shard_of(t, 2) for t, _ in msgs)
    for k, proc in enumerate((shard0, shard1)):
        stats = proc.final_stats()
        assert stats["shard"] == {"spec": f"{k}/2", "skipped": len(msgs) - per_shard[k]}
        assert stats["messages_ok"] == per_shard[k]
        assert stats["duplicates"] == 0
    # Each process held (and checkpointed, in its own state directory) a strict,
    # non-empty subset of the sensors; together they are the fleet, with no overlap.
    held = [_checkpoint_sensors(tmp_path / "state" / f"shard-{k}-of-2") for k in range(2)]
    fleet = {(t.split("/")[2], t.split("/")[4]) for t, _ in msgs}
    assert held[0]
    assert held[1]
    assert not held[0] & held[1]
    assert held[0] | held[1] == fleet
    assert held[0] != fleet
    assert held[1] != fleet
    for k in range(2):
        assert (tmp_path / "spool" / f"shard-{k}-of-2").is_dir()


@pytest.mark.parametrize("bad", ["2/2", "x", "1/0"])
def test_run_refuses_a_bad_shard_option(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    from urbanpulse.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--shard", bad])
    assert exc.value.code == 2
    assert "--shard" in capsys.readouterr().err


def test_run_shard_options_override_the_settings() -> None:
    import argparse

    from urbanpulse.cli import _shard_overrides

    base = Settings(mqtt=MqttSettings(shard="0/4"))
    args = argparse.Namespace(shard="1/2", shard_by="district")
    s = _shard_overrides(base, args)
    assert (s.mqtt.shard, s.mqtt.shard_by) == ("1/2", "district")
    kept = _shard_overrides(base, argparse.Namespace(shard=None, shard_by=None))
    assert (kept.mqtt.shard, kept.mqtt.shard_by) == ("0/4", "topic")


def test_build_pipeline_filters_by_the_configured_shard(tmp_path: Path) -> None:
    from urbanpulse._app import NullWriter, build_pipeline

    s = Settings(
        mqtt=MqttSettings(shard="1/3", shard_by="district"),
        spool={"directory": tmp_path / "spool"},
        state_dir=tmp_path / "state",
    )
    pipeline = build_pipeline(s, writer=NullWriter())
    assert pipeline.shard is not None
    assert pipeline.shard.spec == ShardSpec(index=1, count=3, by="district")
    assert pipeline.shard.district_level == 2
    assert pipeline.snapshot_stats()["shard"] == {"spec": "1/3", "skipped": 0}
    unsharded = build_pipeline(
        Settings(spool={"directory": tmp_path / "spool2"}, state_dir=None), writer=NullWriter()
    )
    assert unsharded.shard is None
    assert "shard" not in unsharded.snapshot_stats()
    for pipe in (pipeline, unsharded):
        if pipe.spool is not None:
            pipe.spool.close()
