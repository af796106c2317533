"""manifest.yml asks for exactly the scopes and events the bot's code uses."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = yaml.safe_load((ROOT / "bot" / "manifest.yml").read_text(encoding="utf-8"))

#: Web API method (as called on the client) → the bot scope it needs.
METHOD_SCOPES = {
    "auth_test": None,
    "chat_postMessage": "chat:write",
    "chat_update": "chat:write",
    "chat_postEphemeral": "chat:write",
    "reactions_add": "reactions:write",
    "reactions_remove": "reactions:write",
    "files_info": "files:read",
    "files_upload_v2": "files:write",
    "conversations_replies": "channels:history",  # and groups/im/mpim:history for those conversation kinds
}
#: Events the bot subscribes to → the scope each needs.
EVENT_SCOPES = {
    "app_mention": "app_mentions:read",
    "message.channels": "channels:history",
    "message.groups": "groups:history",
    "message.im": "im:history",
    "message.mpim": "mpim:history",
}


def slack_calls() -> set[str]:
    """Every method called on a Slack Web API client in bot/ (`slack.x(...)`, `client.x(...)`)."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "bot").glob("*.py"))
    return set(re.findall(r"\b(?:slack|client)\.(\w+)\(", source))


def test_every_called_method_is_known_and_scoped() -> None:
    called = slack_calls()
    assert called == set(METHOD_SCOPES), f"update METHOD_SCOPES and the manifest: {called ^ set(METHOD_SCOPES)}"


def test_scopes_are_exactly_those_used() -> None:
    events = set(MANIFEST["settings"]["event_subscriptions"]["bot_events"])
    assert events == set(EVENT_SCOPES)
    needed = {s for s in METHOD_SCOPES.values() if s} | set(EVENT_SCOPES.values()) | {"commands"}
    assert set(MANIFEST["oauth_config"]["scopes"]["bot"]) == needed


def test_features_match_the_listeners() -> None:
    source = (ROOT / "bot" / "app.py").read_text(encoding="utf-8")
    commands = [c["command"] for c in MANIFEST["features"]["slash_commands"]]
    assert commands == ["/wafer"] and '@app.command("/wafer")' in source
    assert MANIFEST["settings"]["interactivity"]["is_enabled"] and "@app.action(" in source
    assert MANIFEST["settings"]["socket_mode_enabled"] is True
    assert MANIFEST["features"]["app_home"]["messages_tab_enabled"]  # DMs to the bot
    for event in ("message", "app_mention"):
        assert f'@app.event("{event}")' in source
