"""Digests, reports and alerts end to end: fake OpenRouter, fake Slack Web API, real SMTP.

Everything talks over loopback sockets: httpx to the OpenRouter fake, slack-sdk to the Slack
fake through `slack.base_url`, smtplib with STARTTLS (a throw-away CA) and AUTH to aiosmtpd.
Each test runs with the history in SQLite and in PostgreSQL (`storage.url`).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.cli import main
from bot.config import load_config
from bot.models import DestinationKind, Status
from bot.render import fmt
from tests.conftest import Clock, no_wait
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, sample_org
from tests.fake_slack import FakeSlack
from tests.fake_smtp import PASSWORD, USERNAME, SmtpServer

EVIL = "<!channel> <@U1> <https://evil.example|click> <script>alert(1)</script>"


@pytest.fixture()
def world(fake_openrouter: FakeOpenRouter, fake_slack: FakeSlack, smtp_tls_server: SmtpServer,
          tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_target: str,
          clock: Clock) -> dict[str, Any]:
    """The fakes serving a 14-day sample org up to the clock's yesterday, and a config that
    sends the daily digest to Slack and e-mail and has two alert rules that fire."""
    org = sample_org(last_day=clock.yesterday, days=14)
    org["keys"][1]["name"] = EVIL  # a key with a limit, so key_limit alerts name it too
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    config = tmp_path / "config.yaml"
    config.write_text(f"""
timezone: {clock.zone}
storage: {{{"url" if db_target.startswith("postgresql:") else "path"}: "{db_target}"}}
slack:
  token: ${{SLACK_BOT_TOKEN}}
  base_url: {fake_slack.base_url}
email:
  host: 127.0.0.1
  port: {smtp_tls_server.port}
  security: starttls
  ca_file: {smtp_tls_server.ca_file}
  username: {USERNAME}
  password: ${{SMTP_PASSWORD}}
  from: "OpenRouter usage <usage@example.com>"
  timeout: 10
reports:
  daily: {{to: ["slack:#ops", "email:lead@example.com"], top: 20}}
  weekly: {{to: ["email:finance@example.com", "slack:#ops"]}}
alerts:
  to: ["slack:#alerts"]
  repeat_every: 24h
  rules:
    - {{kind: low_credits, below_usd: 1000000, name: credits,
       to: ["slack:#alerts", "email:oncall@example.com"]}}
    - {{kind: key_limit, below_percent: 101, name: limits}}
""")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    env = {
        "OPENROUTER_MANAGEMENT_KEY": MANAGEMENT_KEY,
        "OPENROUTER_BASE_URL": fake_openrouter.base_url,
        "SLACK_BOT_TOKEN": fake_slack.token,
        "SMTP_PASSWORD": PASSWORD,
        "OPENROUTER_USAGE_CONFIG": str(config),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {"or": fake_openrouter, "slack": fake_slack, "smtp": smtp_tls_server,
            "config": config, "env": env, "tmp": tmp_path, "db": db_target,
            "clock": clock}


def history_written(target: str) -> bool:
    """Whether anything was stored: a SQLite file exists, or PostgreSQL tables hold rows."""
    if not target.startswith("postgresql:"):
        return Path(target).exists()
    from bot.store.backend import open_db

    db = open_db(target)
    try:
        return any(db.value(f"SELECT count(*) FROM {t}") for t in db.tables()
                   if t != "schema_migrations")
    finally:
        db.close()



def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), sleep=no_wait)
    out, err = capsys.readouterr()
    return code, out, err


def slack_text(post: dict[str, Any]) -> str:
    blocks = post["blocks"]
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return post.get("text", "") + "\n" + json.dumps(blocks, ensure_ascii=False)


def api_cost(capsys: pytest.CaptureFixture[str], day: dt.date) -> Decimal:
    code, out, _ = cli(capsys, "report", "--json", "--date", str(day), "--no-credits")
    assert code == 0
    return Decimal(str(json.loads(out)["totals"]["cost"]))


def test_daily_digest_to_slack_and_mail_once(world, capsys) -> None:
    slack, smtp = world["slack"], world["smtp"]
    code, out, err = cli(capsys, "send", "daily")
    assert code == 0, err
    assert out.count(": sent") == 2
    [post] = slack.posts
    assert post["channel"] == "#ops"
    text = slack_text(post)
    cost = api_cost(capsys, world["clock"].digest_day)
    assert fmt.money(cost) in text  # the digest's figure matches report --json to the cent
    assert "as of" in text.lower() and "UTC" in text
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text
    assert "<@U1>" not in text and "<https://evil" not in text
    [mail] = smtp.messages
    assert mail.rcpt_tos == ["lead@example.com"] and mail.tls and mail.login == USERNAME
    msg = mail.message
    assert msg["Message-ID"] and msg["Date"]
    assert fmt.money(cost) in msg["Subject"] or fmt.money(cost) in msg.get_body(
        ("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html

    # the same digest again: a no-op that says so
    code, out, _ = cli(capsys, "send", "daily")
    assert code == 0 and out.count("already sent") == 2
    assert len(slack.posts) == 1 and len(smtp.messages) == 1
    # --force sends again
    code, out, _ = cli(capsys, "send", "daily", "--force", "--to", "slack:#ops")
    assert code == 0 and len(slack.posts) == 2 and len(smtp.messages) == 1


def test_slack_outage_keeps_the_digest_and_delivers_it_later_once(world, capsys) -> None:
    slack, smtp = world["slack"], world["smtp"]
    slack.fail_next("chat.postMessage", 503, n=50)
    waits: list[float] = []
    code = main(["send", "daily"], sleep=waits.append)
    out = capsys.readouterr().out
    assert code == 1  # a delivery failed
    # a 503 may come after Slack took the post: not retried blindly, looked up instead
    assert waits == [] and len(slack.calls_to("chat.postMessage")) == 1
    assert "slack:#ops: failed" in out and "may have been posted" in out
    assert "email:lead@example.com: sent" in out
    assert slack.posts == [] and len(smtp.messages) == 1
    slack.faults.clear()
    later = world["clock"].now + dt.timedelta(minutes=2)
    code = main(["send", "daily"], now=lambda: later, sleep=no_wait)
    out = capsys.readouterr().out
    assert code == 0, out
    assert len(slack.posts) == 1 and len(smtp.messages) == 1  # e-mail not sent twice
    assert slack.calls_to("conversations.history")  # looked for before posting again
    code, out, _ = cli(capsys, "send", "daily")
    assert len(slack.posts) == 1 and "already sent" in out


def test_config_error_at_send_time_exits_2_and_delivers_once_fixed(world, capsys) -> None:
    config = world["config"]
    good = config.read_text()
    config.write_text(good.replace(
        f"ca_file: {world['smtp'].ca_file}", f"ca_file: {world['tmp'] / 'missing-ca.pem'}"))
    code, out, err = cli(capsys, "send", "daily")
    assert code == 2  # a configuration error, not a delivery failure
    assert err.count("\n") == 1 and "email.ca_file: cannot load" in err
    assert "email:lead@example.com: config error" in out and "slack:#ops: sent" in out
    assert world["smtp"].messages == [] and len(world["slack"].posts) == 1
    config.write_text(good)  # fixed: the pending e-mail goes out, the Slack post is not repeated
    code, out, _ = cli(capsys, "send", "daily")
    assert code == 0 and "email:lead@example.com: sent" in out
    assert len(world["smtp"].messages) == 1 and len(world["slack"].posts) == 1


def test_dry_run_prints_and_sends_nothing(world, capsys) -> None:
    code, out, _ = cli(capsys, "send", "weekly", "--dry-run")
    assert code == 0
    assert "dry run, nothing sent" in out and "Subject: OpenRouter weekly" in out
    assert '"blocks"' in out and "HTML body written to" in out
    html_file = Path(out.split("HTML body written to ")[1].split("\n")[0])
    assert (world["tmp"] / html_file).read_text().startswith("<!DOCTYPE html>")
    assert world["slack"].posts == [] and world["smtp"].messages == []
    code, out, _ = cli(capsys, "send", "weekly")
    assert code == 0 and out.count(": sent") == 2  # the dry run recorded nothing


def test_weekly_mail_has_chart_csv_and_matching_totals(world, capsys) -> None:
    code, _, err = cli(capsys, "send", "weekly")
    assert code == 0, err
    [mail] = world["smtp"].messages
    msg = mail.message
    assert msg.get_content_type() == "multipart/mixed"
    html_part = msg.get_body(("html",))
    assert 'src="cid:chart"' in html_part.get_content()
    images = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert images and images[0]["Content-ID"] == "<chart>"
    [csv_part] = [p for p in msg.walk() if p.get_filename() and p.get_filename().endswith(".csv")]
    lines = csv_part.get_content().strip().splitlines()
    end = world["clock"].digest_day
    start = end - dt.timedelta(days=6)
    code, out, _ = cli(capsys, "report", "--json", "--from", str(start), "--to", str(end))
    doc = json.loads(out)
    assert len(lines) - 1 == len(doc["activity"])
    week = Decimal(str(doc["totals"]["cost"]))
    assert fmt.money(week) in msg["Subject"]
    assert fmt.money(week) in html_part.get_content()


def alerts_app(world: dict[str, Any], later: dt.timedelta = dt.timedelta(0)) -> App:
    """An App whose clock stands `later` after the test's clock."""
    now = world["clock"].now + later
    return App(config=load_config(world["config"], world["env"]), env=world["env"],
               now=lambda: now, sleep=no_wait)


def test_alert_lifecycle_in_slack_threads(world) -> None:
    from bot.jobs.alerts import run_alerts

    slack = world["slack"]
    fired = run_alerts(alerts_app(world)).events
    actions = sorted((e.action, e.obs.rule.id) for e, _ in fired)
    assert ("fire", "credits") in actions and ("fire", "limits") in actions
    credit_posts = [p for p in slack.posts if "Low credits" in slack_text(p)]
    assert len(credit_posts) == 1 and "thread_ts" not in credit_posts[0]
    [mail] = world["smtp"].messages
    assert mail.rcpt_tos == ["oncall@example.com"]
    assert mail.message["Subject"].startswith("Alert: OpenRouter credits are low")
    assert "openrouter.ai/settings/credits" in mail.message.get_body(("plain",)).get_content()
    first_ts = credit_posts[0]["ts"]
    limit_text = "\n".join(slack_text(p) for p in slack.posts)
    assert "&lt;!channel&gt;" in limit_text and "<!channel>" not in limit_text

    # 15 minutes later: still firing, nothing new
    assert run_alerts(alerts_app(world, dt.timedelta(minutes=15))).events == []
    count = len(slack.posts)

    # 24 hours later: one repeat per alert, in the first message's thread
    repeated = run_alerts(alerts_app(world, dt.timedelta(hours=24))).events
    assert {e.action for e, _ in repeated} == {"repeat"}
    repeat = [p for p in slack.posts[count:] if "Low credits" in slack_text(p)]
    assert len(repeat) == 1 and repeat[0]["thread_ts"] == first_ts

    # credits topped up well past the margin: resolved, in the thread and the channel
    world["or"].credits = {"total_credits": 5_000_000, "total_usage": 10}
    resolved = run_alerts(alerts_app(world, dt.timedelta(hours=25))).events
    assert [e.obs.rule.id for e, _ in resolved if e.action == "resolve"] == ["credits"]
    last = [p for p in slack.posts if "Resolved" in slack_text(p)]
    assert len(last) == 1 and last[0]["thread_ts"] == first_ts
    assert str(last[0].get("reply_broadcast")).lower() == "true"
    assert run_alerts(alerts_app(world, dt.timedelta(hours=26))).events == []


def test_alert_while_slack_is_down_is_delivered_at_next_check(world) -> None:
    from bot.jobs.alerts import run_alerts

    slack = world["slack"]
    slack.fail_next("chat.postMessage", 503, n=100)
    results = run_alerts(alerts_app(world)).events
    outcomes = [o for _, outs in results for o in outs]
    assert results and all(o.status is Status.FAILED for o in outcomes
                           if o.destination.kind is DestinationKind.SLACK)
    assert [o.status for o in outcomes
            if o.destination.kind is DestinationKind.EMAIL] == [Status.SENT]
    assert slack.posts == []
    slack.faults.clear()
    assert run_alerts(alerts_app(world, dt.timedelta(minutes=15))).events == []
    fired = [p for p in slack.posts if "Low credits" in slack_text(p)]
    assert len(fired) == 1  # delivered once, by the retry at the next check
    run_alerts(alerts_app(world, dt.timedelta(minutes=30)))
    assert len([p for p in slack.posts if "Low credits" in slack_text(p)]) == 1
    repeated = run_alerts(alerts_app(world, dt.timedelta(hours=24, minutes=1))).events
    assert any(e.action == "repeat" for e, _ in repeated)
    repeat = [p for p in slack.posts if "Still firing" in slack_text(p)
              and "Low credits" in slack_text(p)]
    assert repeat and repeat[0]["thread_ts"] == fired[0]["ts"]


def test_alerts_dry_run_changes_nothing(world, capsys) -> None:
    code, out, _ = cli(capsys, "alerts", "--dry-run")
    assert code == 0 and "FIRE" in out and "dry run" in out
    assert '"blocks"' in out and "Subject: Alert: OpenRouter credits are low" in out
    assert world["slack"].posts == []
    assert not history_written(world["db"])  # no state, no history written
    code, out, _ = cli(capsys, "alerts")
    assert code == 0 and "FIRE" in out and ": sent" in out
    assert world["slack"].posts
    code, out, _ = cli(capsys, "alerts")
    assert code == 0 and "nothing changed" in out


def test_check_reports_each_connection(world, capsys) -> None:
    code, out, err = cli(capsys, "check")
    assert code == 0, out + err
    assert "ok    OpenRouter: management key works" in out
    assert "ok    Slack auth" in out and "ok    SMTP" in out
    assert "ok    Slack #ops" in out and "ok    Slack #alerts" in out
    world["or"].management = False
    code, out, _ = cli(capsys, "check")
    assert code == 1 and "FAIL  OpenRouter" in out and "management" in out
    assert MANAGEMENT_KEY not in out and PASSWORD not in out


def test_credits_added_since_the_last_digest(world, capsys) -> None:
    day_before = world["clock"].digest_day - dt.timedelta(days=1)
    code, _, _ = cli(capsys, "send", "daily", "--date", str(day_before),
                     "--to", "slack:#ops")
    assert code == 0
    world["or"].credits = dict(world["or"].credits,
                               total_credits=world["or"].credits["total_credits"] + 100)
    code, _, _ = cli(capsys, "send", "daily", "--to", "slack:#ops")
    assert code == 0
    first, second = world["slack"].posts
    assert "Credits added" not in slack_text(first)
    assert "Credits added since the last digest: *$100.00*" in slack_text(second)


def test_overlapping_alert_runs_do_not_both_notify(world) -> None:
    from bot.errors import BotError
    from bot.jobs.alerts import LEASE, run_alerts

    app = alerts_app(world)
    assert app.store().lease_acquire(LEASE, "another-run", app.now(), dt.timedelta(minutes=5))
    with pytest.raises(BotError, match="another alerts run is in progress"):
        run_alerts(app)
    assert world["slack"].posts == []
    app.store().lease_release(LEASE, "another-run")
    assert run_alerts(app).events and world["slack"].posts


def test_already_sent_needs_no_openrouter_and_stdout_gets_the_digest(world, capsys) -> None:
    code, out, _ = cli(capsys, "send", "daily", "--to", "slack:#ops", "stdout")
    assert code == 0
    assert "*Top models*" in out and "Last 14 days (UTC)" in out  # the digest, not one line
    world["or"].expected_key = "rotated"  # OpenRouter now refuses us
    code, out, err = cli(capsys, "send", "daily", "--to", "slack:#ops")
    assert code == 0 and "already sent" in out, err


def test_today_so_far_counts_only_keys_that_still_exist(world, capsys) -> None:
    keys = world["or"].keys
    live = [k for k in keys if not k["disabled"]]
    day_before = world["clock"].digest_day - dt.timedelta(days=1)
    cli(capsys, "send", "daily", "--date", str(day_before), "--to",
        "slack:#ops")
    world["or"].keys = [k for k in keys if k is not live[0]]  # a key is deleted
    code, _, _ = cli(capsys, "send", "daily", "--to", "slack:#ops")
    assert code == 0
    today = sum(Decimal(str(k["usage_daily"])) for k in live[1:])
    assert f"*Today so far* (UTC, in progress)\\n{fmt.money(today)}" in slack_text(
        world["slack"].posts[-1])


def test_chart_png_goes_into_the_digest_thread(world, capsys) -> None:
    config: Path = world["config"]
    config.write_text(config.read_text().replace("slack:\n", "slack:\n  charts: true\n", 1))
    code, _, err = cli(capsys, "send", "daily", "--to", "slack:#ops")
    assert code == 0, err
    [post] = world["slack"].posts
    [upload] = world["slack"].uploads
    assert upload["thread_ts"] == post["ts"]
    assert upload["data"].startswith(b"\x89PNG")
