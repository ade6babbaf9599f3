"""The interactive Slack bot end to end over real sockets: slack-sdk's Socket Mode client talks
to a local WebSocket server handed out by the fake Web API's `apps.connections.open`; answers
go to response URLs, edits to `chat.update`, the App Home to `views.publish`, all on the fake.
The clock is injected; nothing waits on real time beyond what the sockets need.

Each answer's Block Kit JSON is also written to out/interactive/ (git-ignored) to look at.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.cli import main
from bot.config import load_config
from bot.interactive.service import Interactive
from bot.jobs.alerts import run_alerts
from bot.jobs.send import build, deliver
from bot.jobs.sync import run_sync
from bot.models import Destination
from bot.render import fmt
from tests.conftest import no_wait
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, workspace_org
from tests.fake_socket_mode import APP_TOKEN, Clock, FakeSlackApp, Response, wait_for

NOW = dt.datetime(2026, 3, 11, 9, 0, tzinfo=dt.UTC)
LAST_DAY = dt.date(2026, 3, 10)
OUT = Path(__file__).resolve().parent.parent / "out" / "interactive"
STAGING = (1, 2)  # the sample keys named "staging": in Production, in Contractors
EVIL = "<!channel> <https://evil.example|click> *bold*"


def keep(name: str, body: dict[str, Any] | list[Any]) -> None:
    """Write an answer's Block Kit JSON to out/interactive/ to look at."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")


def write_config(tmp: Path, slack: FakeSlackApp, extra_slack: str = "") -> Path:
    path = tmp / "config.yaml"
    path.write_text(f"""
storage: {{path: {tmp / "history.db"}}}
slack:
  token: ${{SLACK_BOT_TOKEN}}
  app_token: ${{SLACK_APP_TOKEN}}
  base_url: {slack.base_url}
{extra_slack}
reports:
  daily: {{to: ["slack:#ops"], top: 5}}
  weekly: {{to: ["slack:#ops"]}}
alerts:
  to: ["slack:#alerts"]
  repeat_every: 1h
  rules:
    - {{kind: low_credits, below_usd: 1000000, name: credits}}
""")
    return path


@dataclass
class Bot:
    app: App
    service: Interactive
    clock: Clock
    slack: FakeSlackApp
    openrouter: FakeOpenRouter
    org: dict[str, Any]
    env: dict[str, str]
    config: Path

    def ask(self, text: str, user: str = "U0ALICE") -> Response:
        _, url = self.slack.slash(text, user=user)
        return self.slack.response(url)

    def alerts(self) -> list[Any]:
        """One alerts check: the notifications it sent, with their outcomes."""
        return run_alerts(self.app).events

    def alert_posts(self) -> list[dict[str, Any]]:
        return [p for p in self.slack.posts if p["channel"] == "#alerts"]


def start_bot(fake_openrouter: FakeOpenRouter, slack_app: FakeSlackApp, tmp_path: Path,
              extra_slack: str = "") -> Bot:
    org = workspace_org(last_day=LAST_DAY, days=14)
    org["keys"][3]["name"] = EVIL
    fake_openrouter.workspaces = org["workspaces"]
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    env = {
        "OPENROUTER_MANAGEMENT_KEY": MANAGEMENT_KEY,
        "OPENROUTER_BASE_URL": fake_openrouter.base_url,
        "SLACK_BOT_TOKEN": slack_app.token,
        "SLACK_APP_TOKEN": APP_TOKEN,
    }
    config = write_config(tmp_path, slack_app, extra_slack)
    clock = Clock(NOW)
    app = App(config=load_config(config, env), env=env, now=clock.now, sleep=lambda _s: None)
    with app.client() as client:
        run_sync(client, app.store(), now=NOW)
    service = Interactive(app, ping_interval=1.0)
    service.start()
    wait_for("the Socket Mode connection", lambda: slack_app.socket.open_count() == 1)
    return Bot(app, service, clock, slack_app, fake_openrouter, org, env, config)


@pytest.fixture
def bot(fake_openrouter: FakeOpenRouter, slack_app: FakeSlackApp, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Bot]:
    monkeypatch.chdir(tmp_path)
    b = start_bot(fake_openrouter, slack_app, tmp_path)
    try:
        yield b
    finally:
        b.service.stop()
        b.app.close()


def section_texts(blocks: list[dict[str, Any]]) -> list[str]:
    return [b["text"]["text"] for b in blocks if b.get("type") == "section" and "text" in b]


def blocks_of(post: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = post["blocks"]
    return json.loads(blocks) if isinstance(blocks, str) else list(blocks)


def key_cost(org: dict[str, Any], index: int, day: dt.date) -> Decimal:
    """What one sample key cost on `day`, from the fake's own rows."""
    rows = org["key_activity"][org["keys"][index]["hash"]]
    return sum((Decimal(str(r["usage"] or 0)) + Decimal(str(r["byok_usage_inference"] or 0))
                for r in rows if str(r["date"])[:10] == day.isoformat()), Decimal(0))


# --- the connection ----------------------------------------------------------------------


def test_connects_with_the_app_token_and_unknown_input_gets_help(bot: Bot) -> None:
    opens = bot.slack.calls_to("apps.connections.open")
    assert opens and all(c.has_auth for c in opens)
    answer = bot.ask("")
    keep("help", answer.body)
    assert answer.body["response_type"] == "ephemeral"
    assert "/openrouter yesterday" in answer.text() and "key NAME" in answer.text()
    answer = bot.ask("frobnicate <!channel> `x`")
    keep("help-unknown", answer.body)
    text = section_texts(answer.blocks)[0]
    assert text.startswith("I don't know `frobnicate &lt;!channel&gt;")
    assert "<!channel>" not in answer.text()
    assert "/openrouter week" in answer.text()


def test_killing_the_websocket_reconnects_within_seconds(bot: Bot) -> None:
    import time

    socket = bot.slack.socket
    first = socket.current
    opens = len(bot.slack.calls_to("apps.connections.open"))
    dropped = time.monotonic()
    socket.drop()  # the TCP connection dies, no close frame
    # slack-sdk runs each connection on one runner thread, so the new connection starts only
    # once the old one's receive loop has ended: usually within a second, on a loaded machine
    # sometimes past 10 s. What matters is that it follows, so the wait is generous.
    second = wait_for(
        "a new connection",
        lambda: next((c for c in reversed(socket.connections) if c.open and c is not first),
                     None),
        timeout=45.0,
    )
    assert second.opened_at - dropped < 3
    assert len(bot.slack.calls_to("apps.connections.open")) > opens  # a fresh URL each time
    assert "yesterday" in bot.ask("help").text()  # answered over the new connection
    # a clean close (as when Slack refreshes its connections) reconnects too
    closed = time.monotonic()
    socket.close()
    third = wait_for("another connection", lambda: socket.current is not second and socket.current)
    assert third.opened_at - closed < 3
    assert "credits" in bot.ask("help").text()
    assert bot.service.listener.connections >= 3


def test_every_envelope_is_acked_exactly_once_and_handled_once(bot: Bot) -> None:
    envelope, url = bot.slack.slash("credits")
    bot.slack.response(url)
    assert len(bot.slack.socket.acks_for(envelope)) == 1
    assert bot.slack.socket.acks_for(envelope)[0].message == {"envelope_id": envelope}
    # Slack delivers the same envelope again: acknowledged again, answered once
    payload = next(s.payload for s in bot.slack.socket.sent if s.envelope_id == envelope)
    bot.slack.socket.send("slash_commands", payload, envelope_id=envelope, retry_attempt=1)
    wait_for("the second ack", lambda: len(bot.slack.socket.acks_for(envelope)) == 2)
    assert "credits" in bot.ask("help").text()  # a later envelope is answered: the first was
    assert len(bot.slack.responses_to(url)) == 1  # not answered twice
    # events and the hello are not answered with an ack of their own
    assert bot.slack.socket.other == []


def test_a_slow_answer_is_still_acked_within_3_seconds(bot: Bot) -> None:
    bot.clock.advance(minutes=10)  # the last sync is stale: today so far is read from /keys
    bot.openrouter.fail_next("/keys", "slow", delay=60)  # held until the test lets it go
    envelope, url = bot.slack.slash("today")
    assert bot.slack.socket.ack_delay(envelope) < 3
    wait_for("the answer to start", lambda: bot.openrouter.requests_to("/keys"))
    assert bot.slack.responses_to(url) == []  # still working on it, acked all the same
    # another envelope meanwhile is acknowledged and answered without waiting
    quick, quick_url = bot.slack.slash("help")
    assert bot.slack.socket.ack_delay(quick) < 3
    bot.slack.response(quick_url)
    bot.openrouter.stopping.set()  # the slow OpenRouter answers now
    answer = bot.slack.response(url)
    keep("today", answer.body)
    assert "read from OpenRouter just now" in answer.text()


# --- the slash command ---------------------------------------------------------------------


def test_yesterday_answers_with_the_daily_digests_figures(bot: Bot) -> None:
    built = build(bot.app, "daily", LAST_DAY)
    [outcome] = deliver(bot.app, built, [Destination.parse("slack:#ops")])
    assert outcome.status == "sent"
    digest = blocks_of(bot.slack.posts[-1])
    answer = bot.ask("yesterday")
    keep("yesterday", answer.body)
    ours = answer.blocks
    assert ours[0] == digest[0]  # the header names the same day
    # the lead figure, the rankings, new models and the chart: the same sections
    assert section_texts(ours)[: len(section_texts(digest))] == section_texts(digest)
    total = sum((key_cost(bot.org, i, LAST_DAY) for i in range(12)), Decimal(0))
    assert f"*{fmt.money(total)}* spent on" in section_texts(ours)[0]
    assert "same figures as the scheduled digest" in answer.text()


def test_key_staging_shows_both_keys_apart(bot: Bot) -> None:
    answer = bot.ask("key staging")
    keep("key-staging", answer.body)
    text = answer.text()
    assert "2 API keys with that name" in text
    leads = [t for t in section_texts(answer.blocks) if t.startswith("*staging")]
    assert len(leads) == 2
    leads.sort(key=lambda t: "Contractors" in t)  # Production first, as STAGING
    for index, workspace, lead in zip(STAGING, ("Production", "Contractors"), leads,
                                      strict=True):
        key = bot.org["keys"][index]
        assert f"hash `{key['hash'][:8]}`" in lead and key["label"] in lead
        assert f"workspace {workspace}" in lead
        assert fmt.money(key_cost(bot.org, index, LAST_DAY)) in text
    # forgiving: any case, the start of the name
    again = bot.ask("KEY Stag")
    assert section_texts(again.blocks) == section_texts(answer.blocks)
    # a name several keys start with is listed, not guessed
    choices = bot.ask("key key-0")
    keep("key-ambiguous", choices.body)
    assert "could be" in choices.text() and "key-03" not in choices.text()
    assert "key-04" in choices.text() and "key-05" in choices.text()
    assert "hash `" not in choices.text()
    missing = bot.ask("key stagin-typo")
    keep("key-missing", missing.body)
    assert "Did you mean staging" in missing.text()


def test_model_top_week_month_credits_alerts_answers(bot: Bot) -> None:
    model = bot.ask("model sonnet")
    keep("model", model.body)
    assert "anthropic/claude-sonnet-4" in model.text()
    assert "API keys using it" in model.text() and "Amazon Bedrock" in model.text()
    for kind in ("models", "keys", "providers"):
        top = bot.ask(f"top {kind}")
        keep(f"top-{kind}", top.body)
        assert "7 days to Tue 2026-03-10" in top.text()
        assert re.search(r"\* \([+-]\d+\.\d% vs the 7 days before, \$[\d.]+\)", top.text())
    top_keys = bot.ask("top k")
    assert "Top API keys" in top_keys.text()
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt;" in top_keys.text()
    assert "<!channel>" not in top_keys.text() and "<https://evil" not in top_keys.text()
    evil = bot.ask("key <!chan")
    assert "&lt;!channel&gt;" in evil.text() and "<!channel>" not in evil.text()
    spaces = bot.ask("top workspaces")
    keep("top-workspaces", spaces.body)
    ranking = section_texts(spaces.blocks)[0]
    assert all(name in ranking for name in ("Default", "Production", "Contractors"))
    week_total = sum((key_cost(bot.org, i, LAST_DAY - dt.timedelta(days=d))
                      for i in range(12) if i % 3 == 1 for d in range(7)), Decimal(0))
    assert f"Production: *{fmt.money(week_total)}*" in ranking
    space = bot.ask("workspace contr")
    keep("workspace", space.body)
    assert "*Contractors* · 4 API keys" in space.text() and "staging" in space.text()
    assert "could be" in bot.ask("workspace o").text()  # Production, Contractors
    week = bot.ask("week")
    keep("week", week.body)
    assert "OpenRouter weekly" in week.text()
    month = bot.ask("month")
    keep("month", month.body)
    assert "March 2026 so far" in month.text() and "Projected for March 2026" in month.text()
    credits = bot.ask("credits")
    keep("credits", credits.body)
    remaining = (Decimal(str(bot.org["credits"]["total_credits"]))
                 - Decimal(str(bot.org["credits"]["total_usage"])))
    assert f"*{fmt.money(remaining)}* of credits remaining" in credits.text()
    assert "Nothing is firing" in bot.ask("alerts").text()
    bot.alerts()
    firing = bot.ask("alerts")
    keep("alerts", firing.body)
    assert "*Low credits* · now *$" in firing.text() and "alert_ack" in firing.text()


# --- alert buttons -------------------------------------------------------------------------


def test_acknowledge_stops_the_repeats_and_edits_the_message(bot: Bot) -> None:
    [(event, outcomes)] = bot.alerts()
    assert event.action == "fire" and outcomes[0].status == "sent"
    [post] = bot.alert_posts()
    keep("alert-fired", {"text": post["text"], "blocks": blocks_of(post)})
    bot.clock.advance(minutes=5)
    bot.slack.press("alert_ack", post, user="U0BOB")
    [update] = wait_for("chat.update", lambda: bot.slack.updates)
    blocks = json.loads(update["blocks"]) if isinstance(update["blocks"], str) \
        else update["blocks"]
    keep("alert-acknowledged", {"text": update["text"], "blocks": blocks})
    assert update["channel"] == post["channel_id"] and update["ts"] == post["ts"]
    status = next(b for b in blocks if b.get("block_id") == "alert_status")
    assert "Acknowledged by <@U0BOB> at 2026-03-11 09:05 UTC" in json.dumps(status)
    buttons = [e.get("action_id") or e.get("url") for b in blocks if b["type"] == "actions"
               for e in b["elements"]]
    assert "alert_ack" not in buttons and "alert_snooze_1d" in buttons
    assert any(str(b).startswith("https://openrouter.ai") for b in buttons)  # link kept
    # no repeat while it holds, long after repeat_every
    for hours in (1, 5, 30):
        bot.clock.advance(hours=hours)
        assert bot.alerts() == []
    assert len(bot.alert_posts()) == 1
    # it still resolves
    bot.openrouter.credits = {"total_credits": 3_000_000, "total_usage": 10}
    [(resolved, _)] = bot.alerts()
    assert resolved.action == "resolve"
    # a new episode notifies again: the acknowledgement was for the last one
    bot.openrouter.credits = bot.org["credits"]
    bot.clock.advance(minutes=15)
    [(fired, _)] = bot.alerts()
    assert fired.action == "fire"
    bot.clock.advance(hours=2)
    [(repeat, _)] = bot.alerts()
    assert repeat.action == "repeat"
    [log] = bot.app.store().actions()
    assert (log["user_id"], log["action"], log["outcome"]) == ("U0BOB", "alert_ack", "done")


def test_snooze_one_day_silences_it_and_it_fires_again_after(bot: Bot) -> None:
    bot.alerts()
    [post] = bot.alert_posts()
    bot.clock.advance(minutes=5)
    bot.slack.press("alert_snooze_1d", post, user="U0ALICE")
    [update] = wait_for("chat.update", lambda: bot.slack.updates)
    assert "Snoozed by <@U0ALICE> until 2026-03-12 09:05 UTC" in json.dumps(update)
    assert "alert_unsnooze" in json.dumps(update)
    for hours in (2, 12, 23):  # silent the whole day, past repeat_every
        bot.clock.at = NOW + dt.timedelta(hours=hours)
        assert bot.alerts() == []
    bot.clock.at = NOW + dt.timedelta(days=1, minutes=6)  # the snooze is over
    [(event, outcomes)] = bot.alerts()
    assert event.action == "repeat" and outcomes[0].status == "sent"
    assert len(bot.alert_posts()) == 2


def test_a_snoozed_alert_still_resolves_and_unsnooze_lets_it_repeat(bot: Bot) -> None:
    bot.alerts()
    [post] = bot.alert_posts()
    bot.slack.press("alert_snooze_1w", post, user="U0ALICE")
    wait_for("chat.update", lambda: bot.slack.updates)
    bot.clock.advance(hours=3)
    assert bot.alerts() == []
    bot.slack.press("alert_unsnooze", bot.slack.posts[0], user="U0ALICE")
    wait_for("the unsnooze edit", lambda: len(bot.slack.updates) == 2)
    assert "alert_ack" in json.dumps(bot.slack.updates[-1])
    [(repeat, _)] = bot.alerts()
    assert repeat.action == "repeat"
    bot.slack.press("alert_snooze_1d", bot.slack.posts[0], user="U0ALICE")
    wait_for("the snooze edit", lambda: len(bot.slack.updates) == 3)
    bot.openrouter.credits = {"total_credits": 3_000_000, "total_usage": 10}
    bot.clock.advance(minutes=15)
    [(resolved, outcomes)] = bot.alerts()
    assert resolved.action == "resolve" and outcomes[0].status == "sent"
    # snoozed still: it starts firing again unseen, and fires once the snooze ends
    bot.openrouter.credits = bot.org["credits"]
    bot.clock.advance(minutes=15)
    assert bot.alerts() == []
    bot.clock.advance(days=1)
    [(fired, _)] = bot.alerts()
    assert fired.action == "fire"


def test_a_user_outside_the_channel_is_refused(bot: Bot) -> None:
    bot.alerts()
    [post] = bot.alert_posts()
    _, url = bot.slack.press("alert_ack", post, user="U0CAROL")  # in #ops, not in #alerts
    answer = bot.slack.response(url)
    keep("refused", answer.body)
    assert answer.body["response_type"] == "ephemeral"
    assert "not allowed to acknowledge this alert" in answer.text()
    assert "<#C000ALERT>" in answer.text()
    assert bot.slack.updates == [] and bot.app.store().silences() == {}
    [log] = bot.app.store().actions()
    assert log["user_id"] == "U0CAROL" and log["outcome"].startswith("refused")
    bot.clock.advance(hours=2)
    [(repeat, _)] = bot.alerts()  # nothing changed: it repeats
    assert repeat.action == "repeat"


def test_allowed_users_narrow_who_may_act(fake_openrouter: FakeOpenRouter,
                                          slack_app: FakeSlackApp, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    b = start_bot(fake_openrouter, slack_app, tmp_path, '  allowed_users: ["S0ONCALL"]')
    try:
        b.alerts()
        [post] = b.alert_posts()
        _, url = slack_app.press("alert_ack", post, user="U0ALICE")  # in #alerts, not on call
        assert "slack.allowed_users" in slack_app.response(url).text()
        slack_app.press("alert_ack", post, user="U0BOB")  # in #alerts and in the group
        wait_for("chat.update", lambda: slack_app.updates)
        assert [a["outcome"][:7] for a in reversed(b.app.store().actions())] == ["refused",
                                                                                 "done"]
    finally:
        b.service.stop()
        b.app.close()


# --- App Home, the daemon, check, dry run ------------------------------------------------------


def test_app_home_is_published_when_opened_and_after_each_sync(bot: Bot) -> None:
    bot.alerts()
    bot.slack.open_home("U0ALICE")
    [view] = wait_for("views.publish", lambda: bot.slack.views)
    keep("home", view["view"])
    assert view["user_id"] == "U0ALICE"
    text = json.dumps(view["view"])
    for label in ("Credits remaining", "Runway", "Today so far", "March 2026 so far",
                  "Firing alerts", "alert_ack"):
        assert label in text
    # a button in the App Home: Bob (in #alerts) acknowledges from there
    bot.slack.press_in_home("alert_ack", view["view"], user="U0BOB")
    wait_for("the home refreshed", lambda: len(bot.slack.views) == 2)
    assert "Acknowledged by <@U0BOB>" in json.dumps(bot.slack.views[-1])
    # after a sync, everyone who opened it gets it again
    from bot.scheduler import Daemon

    daemon = Daemon(bot.app, interactive=bot.service)
    assert "App Home refreshed for 1 user" in daemon.sync()
    assert len(bot.slack.views) == 3


def test_the_daemon_starts_the_bot_only_with_an_app_token(
        fake_openrouter: FakeOpenRouter, slack_app: FakeSlackApp, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.scheduler import Daemon

    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, slack_app)
    env = {"OPENROUTER_MANAGEMENT_KEY": MANAGEMENT_KEY,
           "OPENROUTER_BASE_URL": fake_openrouter.base_url,
           "SLACK_BOT_TOKEN": slack_app.token, "SLACK_APP_TOKEN": APP_TOKEN}
    app = App(config=load_config(config, env), env=env, now=lambda: NOW)
    daemon = Daemon(app)
    daemon.setup()
    daemon.listen()
    try:
        wait_for("the daemon's connection", lambda: slack_app.socket.open_count() == 1)
        _, url = slack_app.slash("help")
        assert "yesterday" in slack_app.response(url).text()
    finally:
        daemon.interactive.stop()
        app.close()
    # without an app token nothing of it is scheduled
    plain = tmp_path / "plain.yaml"
    plain.write_text(re.sub(r"\n  app_token: .*", "", config.read_text()))
    app = App(config=load_config(plain, env), env=env, now=lambda: NOW)
    sched = Daemon(app).setup()
    assert all("listen" not in repr(job.job_func) for job in sched.get_jobs())
    app.close()


def test_a_bad_app_token_is_one_clear_line(fake_openrouter: FakeOpenRouter,
                                           slack_app: FakeSlackApp, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, slack_app)
    for name, value in {"OPENROUTER_MANAGEMENT_KEY": MANAGEMENT_KEY,
                        "OPENROUTER_BASE_URL": fake_openrouter.base_url,
                        "SLACK_BOT_TOKEN": slack_app.token,
                        "SLACK_APP_TOKEN": APP_TOKEN}.items():
        monkeypatch.setenv(name, value)
    code = main(["--config", str(config), "check"], now=lambda: NOW, sleep=no_wait)
    out, _ = capsys.readouterr()
    assert "ok    Slack app token: app token works" in out
    assert code == 0
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-1-wrong-token")
    code = main(["--config", str(config), "check"], now=lambda: NOW, sleep=no_wait)
    out, err = capsys.readouterr()
    assert "FAIL  Slack app token: Slack apps.connections.open failed: invalid_auth" in out
    assert code == 1 and "xapp-1-wrong" not in out + err
    # the bot itself refuses to start with it, in one line
    env = {"OPENROUTER_MANAGEMENT_KEY": MANAGEMENT_KEY, "SLACK_BOT_TOKEN": slack_app.token,
           "SLACK_APP_TOKEN": "xapp-1-wrong-token"}
    app = App(config=load_config(config, env), env=env, now=lambda: NOW)
    service = Interactive(app)
    with pytest.raises(Exception, match="cannot connect with slack.app_token: invalid_auth"):
        service.start()
    app.close()


def test_alerts_dry_run_shows_acknowledged_and_snoozed_alerts(
        bot: Bot, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    bot.alerts()
    [post] = bot.alert_posts()
    bot.slack.press("alert_ack", post, user="U0BOB")
    wait_for("chat.update", lambda: bot.slack.updates)
    for name, value in bot.env.items():
        monkeypatch.setenv(name, value)
    later = NOW + dt.timedelta(hours=2)
    code = main(["--config", str(bot.config), "alerts", "--dry-run"],
                now=lambda: later, sleep=no_wait)
    out, _ = capsys.readouterr()
    assert code == 0
    assert "ACKED    credits credits" not in out  # the subject is shown by its key name
    assert "ACKED    credits account: by U0BOB at 2026-03-11 09:00 UTC" in out
    bot.slack.press("alert_snooze_1w", bot.slack.posts[0], user="U0BOB")
    wait_for("the snooze edit", lambda: len(bot.slack.updates) == 2)
    main(["--config", str(bot.config), "alerts", "--dry-run"], now=lambda: later, sleep=no_wait)
    out, _ = capsys.readouterr()
    assert "SNOOZED  credits account: until 2026-03-18 09:00 UTC (by U0BOB)" in out


def test_run_starts_the_bot_answers_and_stops_cleanly(
        fake_openrouter: FakeOpenRouter, slack_app: FakeSlackApp, tmp_path: Path) -> None:
    """The real daemon in a subprocess: it connects, answers over the socket, and SIGTERM
    closes the connection and exits 0."""
    import os
    import signal
    import subprocess
    import sys

    config = write_config(tmp_path, slack_app)
    env = dict(os.environ, OPENROUTER_MANAGEMENT_KEY=MANAGEMENT_KEY,
               OPENROUTER_BASE_URL=fake_openrouter.base_url, SLACK_BOT_TOKEN=slack_app.token,
               SLACK_APP_TOKEN=APP_TOKEN, OPENROUTER_USAGE_CONFIG=str(config))
    exe = str(Path(sys.executable).parent / "openrouter-usage")
    proc = subprocess.Popen([exe, "run"], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for("the daemon's connection", lambda: slack_app.socket.open_count() == 1, 60)
        _, url = slack_app.slash("help")
        assert "yesterday" in slack_app.response(url).text()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Slack Socket Mode: connected" in err and "Slack Socket Mode: disconnected" in err
    assert "daemon stopped" in err
    assert APP_TOKEN not in err and slack_app.token not in err
    wait_for("the connection closed", lambda: slack_app.socket.open_count() == 0)


def test_buttons_in_an_alerts_answer_redraw_it(bot: Bot) -> None:
    bot.alerts()
    answer = bot.ask("alerts", user="U0BOB")
    shown = {"ts": "", "channel_id": "C0000OPS", "text": answer.body["text"],
             "blocks": answer.blocks}
    _, url = bot.slack.press("alert_ack", shown, user="U0BOB", ephemeral=True)
    redrawn = bot.slack.response(url)
    assert redrawn.body["replace_original"] is True
    assert redrawn.body["response_type"] == "ephemeral"
    assert "Acknowledged by <@U0BOB>" in redrawn.text() and "alert_ack" not in redrawn.text()
    assert bot.slack.updates == []  # an ephemeral answer is not a message to edit
    # Carol (not in #alerts, where the rule posts) is refused there too
    _, url = bot.slack.press("alert_snooze_1d", shown, user="U0CAROL", ephemeral=True)
    assert "not allowed" in bot.slack.response(url).text()


def test_slack_asking_to_reconnect_is_followed(bot: Bot) -> None:
    socket = bot.slack.socket
    first = socket.current
    asked = time.monotonic()
    first.ws.send(json.dumps({"type": "disconnect", "reason": "refresh_requested"}))
    # slack-sdk starts the new connection only once the old one's receive loop has ended;
    # the bot ends that loop when the SDK closes the old connection, so the new one follows
    # at once (left alone, the loop sat up to 10 s in select() on the closed socket)
    second = wait_for(
        "a new connection",
        lambda: next((c for c in reversed(socket.connections) if c.open and c is not first),
                     None),
        timeout=30.0,
    )
    assert time.monotonic() - asked < 5.0
    assert second.opened_at > first.opened_at
    assert "credits" in bot.ask("help").text()
