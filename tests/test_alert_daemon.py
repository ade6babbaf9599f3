"""The daemon with `alerts.check_every: 1m`: a key that starts spending $2 a minute is alerted
within 2 minutes and resolved after it stops, through the real scheduler's `run_pending`, the
job wrapper and the database lease, on an injected clock.

`schedule` reads the wall clock itself (no clock can be handed to it), so the test moves its
jobs' `next_run` back by each simulated minute, which is what a minute passing looks like to
it, while the app's clock moves forward by the same minute: nothing waits on real time."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import schedule

from bot.app import App
from bot.config import load_config
from bot.scheduler import Daemon
from tests.alert_world import each_day, key_hash, make_world, slack_texts

D = Decimal
MINUTE = dt.timedelta(minutes=1)
T0 = dt.datetime(2026, 11, 18, 10, 0, tzinfo=dt.UTC)
OPUS, MINI = "anthropic/claude-opus-4", "openai/gpt-4o-mini"


def test_daemon_checking_every_minute_alerts_a_runaway_key_within_two_minutes(
        fake_openrouter, fake_slack, tmp_path: Path) -> None:
    world = make_world(tmp_path, fake_openrouter, """
  check_every: 1m
  to: ["slack:#alerts"]
  rules:
    - {kind: burn_rate, name: runaway, per: key, above_usd_per_hour: 60}
""", slack=fake_slack, extra_yaml="sync_every: 1h\nhistory: {backfill: 30d}\n")
    t = world.timeline
    t.key("prod-agent")
    for day in each_day(dt.date(2026, 11, 4), dt.date(2026, 11, 17)):
        t.spend(day, "prod-agent", MINI, 5)
    t.today = {"prod-agent": D(2)}
    clock = [T0]
    app = App(config=load_config(world.config, world.env), env=world.env,
              now=lambda: clock[0], sleep=lambda _seconds: None)
    t.serve(fake_openrouter, T0)
    daemon = Daemon(app)
    sched = daemon.setup()
    def name(job: schedule.Job) -> str:  # the name the daemon's job wrapper was given
        cells = job.job_func.func.__closure__ or ()  # type: ignore[union-attr]
        return next((c.cell_contents for c in cells if isinstance(c.cell_contents, str)), "")

    [alerts_job] = [j for j in sched.get_jobs() if name(j) == "alerts"]
    assert (alerts_job.interval, alerts_job.unit) == (60, "seconds")
    sched.run_all()  # what the loop does first: sync, alerts, deliveries, slots
    assert daemon.leader and fake_slack.posts == []

    agent = key_hash("prod-agent")
    start = T0 + MINUTE * 5  # the key starts looping at 10:05, $2 a minute, for 4 minutes
    fired = resolved = None
    for i in range(1, 31):
        now = T0 + MINUTE * i
        minute = now - MINUTE
        if start <= minute < start + MINUTE * 4:
            fake_openrouter.minute_spend.append((minute + dt.timedelta(seconds=10), agent,
                                                 OPUS, D(2), D(0)))
            t.today["prod-agent"] += 2
        clock[0] = now
        t.serve(fake_openrouter, now)
        for job in sched.get_jobs():  # a minute passes, as the scheduler sees it
            assert job.next_run is not None
            job.next_run -= MINUTE
        posts = len(fake_slack.posts)
        sched.run_pending()
        texts = slack_texts(fake_slack, posts)
        if any("Alert" in x and "API key prod-agent is spending" in x for x in texts):
            assert fired is None
            fired = now
        if any("Resolved" in x and "Burn rate" in x for x in texts):
            resolved = now
    assert fired is not None and fired - start <= 2 * MINUTE
    assert fired == start + MINUTE  # the first check after the first spending minute
    assert resolved is not None and start + MINUTE * 4 < resolved <= start + MINUTE * 20
    # the alerts job ran once a minute, each time as its own wrapped, leased job
    minute_queries = [q for q in fake_openrouter.analytics_queries
                      if q.get("granularity") == "minute"]
    assert len(minute_queries) == 31
    assert alerts_job.last_run is not None
    app.close()
