"""The daily digest and the weekly report's spend per workspace: figures from the history store
against the local fake, absent with one workspace, hostile names escaped."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.compute.digest import DailyDigest, WeeklyReport, Workspaces, build_daily, build_weekly
from bot.compute.usage import NO_WORKSPACE
from bot.config import Config, OpenRouterConfig
from bot.jobs.send import build
from bot.models import ApiKey
from bot.render.messages import Renderer
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, year_org
from tests.rows import row

TODAY = dt.date(2026, 3, 11)
NOW = dt.datetime(2026, 3, 11, 6, 0, tzinfo=dt.UTC)
LAST = TODAY - dt.timedelta(days=1)
DAY = dt.timedelta(days=1)
AS_OF = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
D0 = dt.date(2026, 11, 24)


@pytest.fixture()
def fake(fake_openrouter: FakeOpenRouter) -> FakeOpenRouter:
    """Three workspaces, a few weeks of history, spend without a key."""
    org = year_org(TODAY, days=20)
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    fake_openrouter.workspaces = org["workspaces"]
    fake_openrouter.deleted_keys = org["deleted_keys"]
    fake_openrouter.keyless_rows = org["keyless"]
    fake_openrouter.today = TODAY
    fake_openrouter.reindex()
    return fake_openrouter


@pytest.fixture()
def app(fake: FakeOpenRouter, tmp_path: Path) -> Iterator[App]:
    config = Config(
        openrouter=OpenRouterConfig(key=MANAGEMENT_KEY, base_url=fake.base_url, max_attempts=2),
        storage_path=tmp_path / "history.db",
    )
    app = App(config=config, env={}, now=lambda: NOW)
    yield app
    app.close()


def money(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def expected(fake: FakeOpenRouter, first: dt.date, last: dt.date) -> dict[str, Decimal]:
    """Cost per workspace name from the server's own per-key rows; keyless spend and keys no
    longer listed under "(no workspace)"."""
    space = {k["hash"]: k["workspace_id"] for k in fake.keys}
    names = {w["id"]: w["name"] for w in fake.workspaces or []}
    out: dict[str, Decimal] = {}
    every = [(h, r) for h, rs in fake.key_activity.items() for r in rs]
    every += [("", r) for r in fake.keyless_rows]
    for key_hash, r in every:
        if str(first) <= str(r["date"])[:10] <= str(last):
            name = names.get(space.get(key_hash, ""), NO_WORKSPACE)
            out[name] = out.get(name, Decimal(0)) + money(r["usage"]) + money(
                r["byok_usage_inference"])
    return {name: cost for name, cost in out.items() if cost}


def test_daily_digest_spend_per_workspace_from_history(fake: FakeOpenRouter, app: App) -> None:
    d = build(app, "daily", LAST).data
    assert isinstance(d, DailyDigest) and d.workspaces is not None
    got = {line.name: line.cost for line in d.workspaces.lines}
    assert {"Default", "Production", "Contractors"} <= set(got)
    assert got == expected(fake, LAST, LAST)
    before = expected(fake, LAST - DAY, LAST - DAY)
    assert {line.name: line.previous for line in d.workspaces.lines} == {
        name: before.get(name, Decimal(0)) for name in got}
    costs = [line.cost for line in d.workspaces.lines]
    assert costs == sorted(costs, reverse=True)
    # the workspaces add up to the day's key-attributed spend, which is the day's total here
    key_total = sum((r.cost for r in app.store().activity(LAST, LAST, None)), Decimal(0))
    assert sum(costs, Decimal(0)) == key_total == d.spend.cost

    renderer = Renderer(None)
    slack = json.dumps(renderer.daily_slack(d).blocks)
    mail = renderer.daily_email(d)
    for text in (slack, mail.html, mail.text):
        assert "Workspaces" in text and "Contractors" in text


def test_weekly_report_spend_per_workspace_week_over_week(fake: FakeOpenRouter,
                                                          app: App) -> None:
    w = build(app, "weekly", LAST).data
    assert isinstance(w, WeeklyReport) and w.workspaces is not None
    start = LAST - DAY * 6
    prev = expected(fake, start - DAY * 7, start - DAY)
    now = expected(fake, start, LAST)
    assert {line.name: (line.cost, line.previous) for line in w.workspaces.lines} == {
        name: (cost, prev.get(name, Decimal(0))) for name, cost in now.items()}
    renderer = Renderer(None)
    mail = renderer.weekly_email(w)
    assert "Workspaces" in json.dumps(renderer.weekly_slack(w).blocks)
    assert "Workspaces" in mail.html and "Workspaces" in mail.text


def _inputs(names: dict[str, str]) -> dict[str, Any]:
    key_rows = {
        "k1": [row(str(D0), usage="3", key="k1"), row(str(D0 - DAY), usage="1", key="k1")],
        "k2": [row(str(D0), usage="2", key="k2")],
        "k3": [row(str(D0), usage="1", key="k3")],
    }
    rows = [r for rs in key_rows.values() for r in rs]
    ids = list(names)
    where = {"k1": ids[0], "k2": ids[-1], "k3": ids[len(ids) // 2]}
    return {"as_of": AS_OF, "rows": rows, "key_rows": key_rows,
            "key_names": {"k1": "a", "k2": "b", "k3": "c"}, "credits": None,
            "workspaces": Workspaces(where, names)}


def test_one_workspace_no_section() -> None:
    args = _inputs({"w1": "Default"})
    d = build_daily(D0, keys=[ApiKey(hash="k1", name="a")], **args)
    w = build_weekly(D0, **args)
    assert d.workspaces is None and w.workspaces is None
    bare = build_daily(D0, keys=[], **{**args, "workspaces": None})
    assert bare.workspaces is None
    renderer = Renderer(None)
    for msg in (renderer.daily_slack(d), renderer.weekly_slack(w)):
        assert "Workspaces" not in json.dumps(msg.blocks)
    for mail in (renderer.daily_email(d), renderer.weekly_email(w)):
        assert "Workspaces" not in mail.html and "Workspaces" not in mail.text
    # the same day with two workspaces has the section
    two = build_daily(D0, keys=[], **_inputs({"w1": "Default", "w2": "Other"}))
    assert two.workspaces is not None
    assert [(x.name, x.cost, x.previous) for x in two.workspaces.lines] == [
        ("Default", Decimal(3), Decimal(1)), ("Other", Decimal(3), Decimal(0))]  # k2 + k3
    assert "Workspaces" in json.dumps(renderer.daily_slack(two).blocks)


def test_hostile_workspace_name_is_escaped() -> None:
    evil = "<!channel> <script>alert(1)</script>"
    args = _inputs({"w1": "Default", "w2": evil, "w3": "Ops"})
    d = build_daily(D0, keys=[], **args)
    w = build_weekly(D0, **args)
    assert d.workspaces is not None and evil in [x.name for x in d.workspaces.lines]
    renderer = Renderer(None)
    for msg in (renderer.daily_slack(d), renderer.weekly_slack(w)):
        raw = json.dumps(msg.blocks, ensure_ascii=False)
        assert "&lt;!channel&gt; &lt;script&gt;alert(1)&lt;/script&gt;" in raw
        assert "<!channel>" not in raw and "<script>" not in raw
    for mail in (renderer.daily_email(d), renderer.weekly_email(w)):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in mail.html
        assert "<script" not in mail.html and "<!channel>" not in mail.html
