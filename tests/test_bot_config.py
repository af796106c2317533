"""Bot settings: every variable read from the environment, clear errors, secrets never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import BotConfig, ConfigError, host_allowed

BASE = {"SLACK_BOT_TOKEN": "xoxb-secret-1", "SLACK_APP_TOKEN": "xapp-secret-2"}


def test_defaults_are_socket_mode_and_slack_hosts() -> None:
    cfg = BotConfig.from_env(BASE)
    assert cfg.mode == "socket"
    assert cfg.slack_api_url == "https://slack.com/api/"
    assert cfg.file_hosts == ("files.slack.com",)
    assert cfg.db_path == Path("defect_glm_bot.sqlite3")
    assert not cfg.upload_map


def test_every_variable_is_read() -> None:
    env = {
        "SLACK_BOT_TOKEN": "xoxb-a", "SLACK_SIGNING_SECRET": "shh-secret", "PORT": "0",
        "SLACK_API_URL": "http://127.0.0.1:9/api", "SLACK_FILE_HOSTS": "files.example.com, 127.0.0.1:8081",
        "DEFECT_GLM_SERVER_URL": "http://model:8080/", "DEFECT_GLM_BOT_DB": "/tmp/x.sqlite3",
        "DEFECT_GLM_BOT_CHANNELS": "C1, C2", "DEFECT_GLM_BOT_MAX_IMAGE_BYTES": "1000",
        "DEFECT_GLM_BOT_RETRY_FOR_S": "5", "DEFECT_GLM_BOT_UPLOAD_MAP": "yes", "DEFECT_GLM_BOT_WORKERS": "2",
    }
    cfg = BotConfig.from_env(env)
    assert cfg.mode == "http" and cfg.port == 0
    assert cfg.slack_api_url == "http://127.0.0.1:9/api/"
    assert cfg.file_hosts == ("files.example.com", "127.0.0.1:8081")
    assert cfg.server_url == "http://model:8080"
    assert cfg.channel_allowlist == frozenset({"C1", "C2"})
    assert (cfg.max_image_bytes, cfg.retry_for_s, cfg.upload_map, cfg.workers) == (1000, 5.0, True, 2)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({}, "SLACK_BOT_TOKEN is required"),
        ({"SLACK_BOT_TOKEN": "xoxb-a"}, "SLACK_SIGNING_SECRET"),
        ({**BASE, "DEFECT_GLM_BOT_MODE": "http"}, "SLACK_SIGNING_SECRET"),
        ({"SLACK_BOT_TOKEN": "x", "DEFECT_GLM_BOT_MODE": "socket"}, "SLACK_APP_TOKEN"),
        ({**BASE, "DEFECT_GLM_BOT_MODE": "carrier-pigeon"}, "'socket' or 'http'"),
        ({**BASE, "PORT": "eighty"}, "PORT must be a whole number, got 'eighty'"),
        ({**BASE, "DEFECT_GLM_BOT_RETRY_FOR_S": "-1"}, "DEFECT_GLM_BOT_RETRY_FOR_S must not be negative"),
        ({**BASE, "DEFECT_GLM_BOT_MAX_IMAGE_BYTES": "0"}, "DEFECT_GLM_BOT_MAX_IMAGE_BYTES must be at least 1"),
        ({**BASE, "DEFECT_GLM_BOT_UPLOAD_MAP": "maybe"}, "DEFECT_GLM_BOT_UPLOAD_MAP must be 1/0"),
        ({**BASE, "SLACK_API_URL": "slack.com/api"}, "SLACK_API_URL must be an http(s) URL"),
        ({**BASE, "SLACK_FILE_HOSTS": "https://files.slack.com/"}, "not URLs"),
    ],
)
def test_bad_settings_name_the_variable(env: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        BotConfig.from_env(env)
    assert needle in str(info.value)


def test_secrets_are_masked_in_printable_settings() -> None:
    cfg = BotConfig.from_env({**BASE, "SLACK_SIGNING_SECRET": "sig-secret-3"})
    shown = repr(cfg) + str(cfg.verbose)
    for secret in ("xoxb-secret-1", "xapp-secret-2", "sig-secret-3"):
        assert secret not in shown
    assert cfg.verbose["bot_token"] == "set"


def test_file_hosts_match_exact_hosts_only() -> None:
    hosts = ("files.slack.com", "127.0.0.1:8081")
    assert host_allowed("https://files.slack.com/files-pri/T1-F1/x.png", hosts)
    assert host_allowed("https://FILES.slack.com/a", hosts)
    assert host_allowed("http://127.0.0.1:8081/files/F1/x.png", hosts)
    assert not host_allowed("http://127.0.0.1:9999/files/F1/x.png", hosts)  # port pinned
    assert not host_allowed("https://files.slack.com.evil.example/a", hosts)
    assert not host_allowed("https://evil.example/files.slack.com/a", hosts)
    assert not host_allowed("ftp://files.slack.com/a", hosts)
    assert not host_allowed("https://user@evil.example/a", hosts)


def test_channel_allowlist_always_lets_dms_through() -> None:
    cfg = BotConfig.from_env({**BASE, "DEFECT_GLM_BOT_CHANNELS": "C1"})
    assert cfg.allows_channel("C1") and not cfg.allows_channel("C2")
    assert cfg.allows_channel("D9", "im")
    assert BotConfig.from_env(BASE).allows_channel("C2")


def test_cli_prints_the_settings_with_secrets_masked(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from defect_glm import main

    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-cli-secret-1")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-cli-secret-2")
    monkeypatch.delenv("DEFECT_GLM_BOT_MODE", raising=False)
    assert main(["bot", "--print-config", "--port", "0", "--upload-map"]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["mode"] == "socket" and shown["port"] == 0 and shown["upload_map"] is True
    assert shown["bot_token"] == "set" and "xoxb-cli-secret-1" not in out and "xapp-cli-secret-2" not in out


def test_cli_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from defect_glm import main

    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "DEFECT_GLM_BOT_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-cli-secret-1")
    assert main(["bot", "--print-config"]) == 2  # neither an app token nor a signing secret
    assert "SLACK_SIGNING_SECRET" in capsys.readouterr().err
