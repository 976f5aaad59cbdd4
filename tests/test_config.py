"""Settings: precedence, secrets, validation messages, and `urbanpulse config check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from urbanpulse._config import load_settings, masked_dump
from urbanpulse._errors import ConfigError
from urbanpulse.cli import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("URBANPULSE_"):
            monkeypatch.delenv(name)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "urbanpulse.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_valid_and_safe() -> None:
    s = load_settings()
    assert s.mqtt.host == "127.0.0.1"
    assert s.output.kind == "files"
    assert s.ingest.unknown_fields == "reject"
    assert s.windows.widths_ms == [60_000, 900_000]


def test_env_overrides_toml_overrides_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _toml(
        tmp_path, '[mqtt]\nhost = "broker.kota"\nport = 8883\n[windows]\ngrace_ms = 5000\n'
    )
    monkeypatch.setenv("URBANPULSE_MQTT__PORT", "1884")
    s = load_settings(path)
    assert s.mqtt.host == "broker.kota"  # from the file
    assert s.mqtt.port == 1884  # env beats the file
    assert s.windows.grace_ms == 5000


def test_secrets_are_masked_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URBANPULSE_OUTPUT__INFLUX2__TOKEN", "tok-123-secret")
    token_file = tmp_path / "pw"
    token_file.write_text("mqtt-secret\n")
    path = _toml(tmp_path, f'[mqtt]\nusername = "pipe"\npassword_file = "{token_file}"\n')
    s = load_settings(path)
    assert s.output.influx2.token is not None
    assert s.output.influx2.token.get_secret_value() == "tok-123-secret"
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == "mqtt-secret"
    dumped = json.dumps(masked_dump(s))
    assert "tok-123-secret" not in dumped
    assert "mqtt-secret" not in dumped
    assert "tok-123-secret" not in repr(s)
    assert "mqtt-secret" not in str(s)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ("[mqtt]\nhots = 'x'\n", "mqtt.hots"),
        ("[mqtt]\nprotocol = '4'\n", "mqtt.protocol"),
        ("[mqtt]\ntopic_pattern = 'a/{city}/{kind}'\n", "mqtt"),
        ("[windows]\nwidths_ms = [1500]\n", "windows"),
        ("[ingest]\nnaive_timezone = 'Mars/Olympus'\n", "ingest"),
        ("[ingest]\nlimits = { pm99 = [0, 1] }\n", "ingest"),
        ("[output]\nkind = 'kafka'\n", "output.kind"),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, text))
    assert field in str(info.value)


def test_both_secret_and_secret_file_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "t"
    f.write_text("x")
    with pytest.raises(ConfigError, match="token_file"):
        load_settings(_toml(tmp_path, f'[output.influx2]\ntoken = "a"\ntoken_file = "{f}"\n'))


def test_toml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(_toml(tmp_path, "[mqtt\nhost=1"))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_cli_config_check_prints_masked_effective_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _toml(tmp_path, '[output]\nkind = "influx2"\n[output.influx2]\ntoken = "hunter2"\n')
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err
    effective = json.loads(out.out)
    assert effective["output"]["kind"] == "influx2"
    assert effective["output"]["influx2"]["token"] == "**********"
    assert "OK" in out.err


def test_cli_config_check_fails_with_the_field_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _toml(tmp_path, "[ingest]\nbatch_max_messages = 0\n")
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "ingest.batch_max_messages" in err


def test_example_config_in_deploy_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "deploy" / "urbanpulse.example.toml"
    text = example.read_text(encoding="utf-8")
    for name in ("mqtt_password", "influx_token"):  # the secrets it points at
        secret = tmp_path / name
        secret.write_text("x")
        text = text.replace(f"/run/secrets/{name}", str(secret))
    s = load_settings(_toml(tmp_path, text))
    assert s.mqtt.topic_pattern.endswith("{sensor_id}")
    assert s.mqtt.password is not None
    assert s.ingest.limits == {"pm25": (0.0, 2000.0)}


def test_alert_receivers_load_from_toml_and_their_secrets_are_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _toml(
        tmp_path,
        """
[[alerts.webhooks]]
name = "ops"
url = "https://ops.kota.example/hook"
secret = "hmac-shared-secret"

[[alerts.routes]]
name = "air"
receivers = ["ops"]
matchers = ["severity=~warning|critical"]
""",
    )
    s = load_settings(path)
    assert s.alerts.webhooks[0].secret == "hmac-shared-secret"
    assert s.alerts.routes[0].receivers == ("ops",)
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hmac-shared-secret" not in out
    assert json.loads(out)["alerts"]["webhooks"][0]["secret"] == "**********"


def test_a_route_to_an_unknown_receiver_is_refused(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[[alerts.routes]]\nname = "x"\nreceivers = ["nobody"]\n')
    with pytest.raises(ConfigError, match="unknown receiver"):
        load_settings(path)
