"""The interactive bot's pure parts: parsing the slash text, name matching, which notifications
a silence holds back, button payloads, message edits, config and the store's new records."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from bot.compute.alert_rules import Inputs
from bot.compute.silence import held
from bot.config import AlertRule, parse_config
from bot.errors import ConfigError
from bot.interactive.actions import edited_blocks, parse_press
from bot.interactive.answers import month_bounds
from bot.interactive.commands import Request, parse
from bot.interactive.match import match
from bot.jobs.alerts import plan
from bot.models import AlertState, ApiKey, Credits, Silence, key_labels
from bot.store import Store, connect

T0 = dt.datetime(2026, 3, 11, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize("text, request_", [
    ("", Request("help")),
    ("  HELP ", Request("help")),
    ("yest", Request("yesterday")),
    ("Today", Request("today")),
    ("daily", Request("yesterday")),
    ("top", Request("top", "models")),
    ("top key", Request("top", "keys")),
    ("top WOR", Request("top", "workspaces")),
    ("providers", Request("top", "providers")),
    ("key", Request("top", "keys")),
    ("keys staging", Request("key", "staging")),
    ("key  staging   eu ", Request("key", "staging eu")),
    ("model claude-opus", Request("model", "claude-opus")),
    ("cred", Request("credits")),
    ("t", Request("help", unknown="t")),  # today or top: not guessed
    ("month of may", Request("help", unknown="month of may")),
    ("top spenders", Request("help", unknown="top spenders")),
    ("frobnicate", Request("help", unknown="frobnicate")),
])
def test_parse_the_slash_text(text: str, request_: Request) -> None:
    assert parse(text) == request_


MODELS = ["anthropic/claude-opus-4", "anthropic/claude-opus-4.1", "anthropic/claude-sonnet-4",
          "openai/gpt-4o", "openai/gpt-4o-mini"]


def test_match_prefers_exact_then_prefix_then_substring_and_never_guesses() -> None:
    same = lambda n: n  # noqa: E731
    assert match("OPENAI/GPT-4O", MODELS, same).found == ["openai/gpt-4o"]
    assert match("sonnet", MODELS, same).found == ["anthropic/claude-sonnet-4"]  # a word start
    assert match("opus", MODELS, same).ambiguous == ["anthropic/claude-opus-4",
                                                    "anthropic/claude-opus-4.1"]
    assert match("4o-m", MODELS, same).found == ["openai/gpt-4o-mini"]  # anywhere
    nothing = match("gpt-5", MODELS, same)
    assert nothing.found == [] and nothing.ambiguous == []
    assert match("claude-sonet-4", MODELS, same).suggestions[0] == "anthropic/claude-sonnet-4"
    assert match("  ", MODELS, same).found == []


def test_keys_sharing_a_name_are_all_found_and_labelled_apart() -> None:
    keys = [ApiKey("a" * 64, "staging", label="sk-or-v1-aaa...aaa"),
            ApiKey("b" * 64, "Staging", label="sk-or-v1-bbb...bbb"),
            ApiKey("c" * 64, "staging-eu"), ApiKey("d" * 64, "", label="sk-or-v1-ddd...ddd")]
    found = match("STAGING", keys, lambda k: k.display_name).found
    assert [k.hash[0] for k in found] == ["a", "b"]
    assert match("stag", keys, lambda k: k.display_name).ambiguous == ["staging", "staging-eu"]
    labels = key_labels(keys, {})
    assert labels["a" * 64] == "staging" and labels["b" * 64] == "Staging"  # names differ


def test_month_bounds_clamp_to_the_shorter_month() -> None:
    assert month_bounds(dt.date(2026, 3, 31)) == (
        dt.date(2026, 3, 1), dt.date(2026, 2, 1), dt.date(2026, 2, 28), dt.date(2026, 2, 28))
    assert month_bounds(dt.date(2026, 1, 15)) == (
        dt.date(2026, 1, 1), dt.date(2025, 12, 1), dt.date(2025, 12, 15), dt.date(2025, 12, 31))


def test_a_silence_holds_back_repeats_or_everything_but_never_a_resolution() -> None:
    since = T0
    acked = Silence("r", "s", acked_since=since, acked_by="U1", acked_at=T0)
    assert held(acked, "repeat", since, T0 + HOUR) == "acknowledged"
    assert held(acked, "repeat", since + HOUR, T0 + HOUR) is None  # another episode
    assert held(acked, "fire", None, T0 + HOUR) is None
    snoozed = Silence("r", "s", snoozed_until=T0 + HOUR * 24, snoozed_by="U1")
    assert held(snoozed, "fire", None, T0) == "snoozed"
    assert held(snoozed, "repeat", since, T0 + HOUR * 23) == "snoozed"
    assert held(snoozed, "repeat", since, T0 + HOUR * 24) is None  # over
    for silence in (acked, snoozed):
        assert held(silence, "resolve", since, T0) is None
    assert held(None, "repeat", since, T0) is None


def _inputs(remaining: int) -> Inputs:
    return Inputs(as_of=T0, day=T0.date() - dt.timedelta(days=1),
                  credits=Credits(Decimal(1000), Decimal(1000 - remaining)), keys=[], rows=[])


def test_plan_holds_back_what_people_silenced() -> None:
    rule = AlertRule("low_credits", 0, name="credits", below_usd=Decimal(100))
    firing = AlertState("credits", "account", "firing", "60", T0, T0, {"slack:#a": "1.1"})
    states = {("credits", "account"): firing}
    later = T0 + HOUR * 30
    events, _ = plan((rule,), _inputs(50), states, now=later, repeat_every=HOUR,
                     margin=Decimal("0.05"))
    assert [e.action for e in events] == ["repeat"]
    ack = {("credits", "account"): Silence("credits", "account", acked_since=T0,
                                           acked_by="U1", acked_at=T0)}
    events, nxt = plan((rule,), _inputs(50), states, now=later, repeat_every=HOUR,
                       margin=Decimal("0.05"), silences=ack)
    assert events == [] and nxt[0].last_notified_at == T0  # still due once it is not held
    events, _ = plan((rule,), _inputs(500), states, now=later, repeat_every=HOUR,
                     margin=Decimal("0.05"), silences=ack)
    assert [e.action for e in events] == ["resolve"]
    snooze = {("credits", "account"): Silence("credits", "account", snoozed_until=later)}
    events, nxt = plan((rule,), _inputs(50), {}, now=T0, repeat_every=HOUR,
                       margin=Decimal("0.05"), silences=snooze)
    assert events == [] and nxt == []  # a new alert waits for the snooze to end
    events, _ = plan((rule,), _inputs(50), {}, now=later, repeat_every=HOUR,
                     margin=Decimal("0.05"), silences=snooze)
    assert [e.action for e in events] == ["fire"]


def _payload(**over: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "type": "block_actions", "user": {"id": "U0ALICE"},
        "container": {"type": "message", "channel_id": "C000ALERT", "message_ts": "1.2"},
        "message": {"ts": "1.2", "text": "alert", "blocks": []},
        "response_url": "https://hooks.slack.com/actions/x",
        "actions": [{"action_id": "alert_ack",
                     "value": json.dumps({"rule": "credits", "subject": "account"})}],
    }
    payload.update(over)
    return payload


def test_parse_a_button_press() -> None:
    press = parse_press(_payload())
    assert press is not None
    assert (press.action, press.rule_id, press.subject, press.user, press.where,
            press.channel, press.message_ts) == ("alert_ack", "credits", "account", "U0ALICE",
                                                 "message", "C000ALERT", "1.2")
    home = parse_press(_payload(container={"type": "view", "view_id": "V1"}))
    assert home is not None and home.where == "home" and home.channel == ""
    eph = parse_press(_payload(container={"type": "message", "is_ephemeral": True,
                                          "channel_id": "C0000OPS"}))
    assert eph is not None and eph.where == "ephemeral"
    # a link button, a value that is not ours, a user that is not a user ID: not presses
    assert parse_press(_payload(actions=[{"action_id": "WkX", "url": "https://x"}])) is None
    assert parse_press(_payload(actions=[{"action_id": "alert_ack", "value": "nope"}])) is None
    assert parse_press(_payload(user={"id": "<!channel>"})) is None
    assert parse_press(_payload(type="view_submission")) is None


def test_the_edit_replaces_status_and_buttons_and_keeps_the_link() -> None:
    link = {"type": "button", "text": {"type": "plain_text", "text": "Open"}, "url": "https://o"}
    blocks = [{"type": "header", "block_id": "h"},
              {"type": "actions", "block_id": "alert_actions",
               "elements": [link, {"type": "button", "action_id": "alert_ack"}]},
              {"type": "context", "block_id": "asof"}]
    status = {"type": "context", "block_id": "alert_status", "elements": []}
    buttons = {"type": "actions", "block_id": "alert_actions",
               "elements": [{"type": "button", "action_id": "alert_unsnooze"}]}
    once = edited_blocks(blocks, [status, buttons])
    assert [b["block_id"] for b in once] == ["h", "alert_status", "alert_actions", "asof"]
    assert [e.get("action_id") or e["url"] for e in once[2]["elements"]] == ["https://o",
                                                                              "alert_unsnooze"]
    twice = edited_blocks(once, [status])  # resolved: no buttons but the link
    assert [b["block_id"] for b in twice] == ["h", "alert_status", "alert_actions", "asof"]
    assert twice[2]["elements"] == [link]
    bare = edited_blocks([{"type": "header"}, {"type": "context"}], [status])
    assert [b["type"] for b in bare] == ["header", "context", "context"]
    assert bare[1] is status


def test_config_of_the_interactive_bot() -> None:
    env: dict[str, str] = {}
    base = {"slack": {"token": "xoxb-1", "app_token": "xapp-1-A-1-abc"}}
    cfg = parse_config(base, env)
    assert cfg.slack.app_token == "xapp-1-A-1-abc" and cfg.slack.command == "/openrouter"
    assert parse_config({"slack": {"token": "xoxb-1"}}, env).slack.app_token is None
    bad = [
        ({"slack": {"app_token": "xapp-1"}}, "slack.app_token: the interactive bot also needs"),
        ({"slack": {"token": "x", "app_token": "xoxb-1"}}, "slack.app_token: expected an app"),
        ({"slack": {"token": "x", "command": "openrouter"}}, "slack.command: expected a slash"),
        ({"slack": {"token": "x", "allowed_users": ["bob"]}}, "slack.allowed_users[0]: expected"),
    ]
    for data, message in bad:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_config(data, env)
    users = parse_config({"slack": {"token": "x", "allowed_users": ["U0A1", "S0ONCALL"]}}, env)
    assert users.slack.allowed_users == ("U0A1", "S0ONCALL")


def test_store_keeps_silences_actions_and_home_users(db_target: str) -> None:
    store = Store(connect(db_target))
    assert store.silences() == {}
    store.silence_ack("credits", "account", T0, "U0BOB", T0 + HOUR)
    store.silence_snooze("credits", "account", T0 + HOUR * 25, "U0ALICE", T0 + HOUR)
    [sil] = store.silences().values()
    assert (sil.acked_since, sil.acked_by, sil.acked_at) == (T0, "U0BOB", T0 + HOUR)
    assert (sil.snoozed_until, sil.snoozed_by) == (T0 + HOUR * 25, "U0ALICE")
    store.silence_snooze("credits", "account", None, "U0BOB", T0 + HOUR * 2)
    [sil] = store.silences().values()
    assert sil.snoozed_until is None and sil.acked_by == "U0BOB"  # the ack stays
    store.action_log(T0, "U0CAROL", "alert_ack", "credits", "account", "C0", "refused: no")
    store.action_log(T0 + HOUR, "U0BOB", "alert_ack", "credits", "account", "C0", "done")
    assert [a["user_id"] for a in store.actions()] == ["U0BOB", "U0CAROL"]
    store.home_user_add("U0BOB", T0)
    store.home_user_add("U0BOB", T0 + HOUR)
    store.home_user_add("U0ALICE", T0)
    assert store.home_users() == ["U0ALICE", "U0BOB"]
    store.conn.close()
