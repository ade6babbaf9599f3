"""The Slack app manifest asks for exactly the scopes the program's Web API calls need, and
sets up what the interactive bot uses (Socket Mode, the slash command, buttons, App Home)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.config import SlackConfig

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "slack-app-manifest.yaml"

# Each Web API method the code calls, and the bot scopes it needs (Slack's method reference).
METHOD_SCOPES: dict[str, set[str]] = {
    "auth_test": set(),
    "chat_postMessage": {"chat:write"},
    "chat_update": {"chat:write"},
    "conversations_history": {"channels:history", "groups:history"},
    "conversations_replies": {"channels:history", "groups:history"},
    "conversations_info": {"channels:read", "groups:read"},
    "conversations_list": {"channels:read", "groups:read"},
    "conversations_members": {"channels:read", "groups:read"},
    "files_upload_v2": {"files:write"},
    "usergroups_users_list": {"usergroups:read"},
    "views_publish": set(),
    "apps_connections_open": set(),  # the app-level token's connections:write, not a bot scope
}
_CALL = re.compile(r"\.((?:chat|conversations|files|usergroups|views|apps|auth|users|reactions|"
                   r"team|bots|im|pins|reminders|dnd|emoji|search|stars)_[A-Za-z0-9_]+)\b")


def methods_called() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "bot").rglob("*.py"):
        found.update(_CALL.findall(path.read_text(encoding="utf-8")))
    return found


def test_the_manifest_asks_for_exactly_the_scopes_used() -> None:
    called = methods_called()
    unknown = called - set(METHOD_SCOPES)
    assert not unknown, f"add the scopes of {sorted(unknown)} to METHOD_SCOPES and the manifest"
    needed = set().union(*(METHOD_SCOPES[m] for m in called)) | {"commands"}
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == needed
    assert "user" not in manifest["oauth_config"]["scopes"]


def test_the_manifest_sets_up_the_interactive_bot() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    settings, features = manifest["settings"], manifest["features"]
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"]["is_enabled"] is True
    assert "request_url" not in settings["interactivity"]  # Socket Mode: no public URL
    assert settings["event_subscriptions"]["bot_events"] == ["app_home_opened"]
    assert features["app_home"]["home_tab_enabled"] is True
    [command] = features["slash_commands"]
    assert command["command"] == SlackConfig().command
    assert "url" not in command
