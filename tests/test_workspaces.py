"""Every workspace, every key once, the right key or a clear refusal: against the local fake."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.config import Config, OpenRouterConfig
from bot.errors import NotManagementKey
from bot.jobs.check import checks
from bot.jobs.report import gather_report, resolve_period
from bot.jobs.sync import run_sync
from bot.openrouter import MANAGEMENT_KEYS_URL
from bot.render.text import format_text, to_json, write_groups_csv
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, workspace_org

NOW = dt.datetime(2026, 3, 11, 6, 0, tzinfo=dt.UTC)
LAST = dt.date(2026, 3, 10)


@pytest.fixture()
def fake(fake_openrouter: FakeOpenRouter) -> FakeOpenRouter:
    """Three workspaces, keys spread over them, two keys named "staging"."""
    org = workspace_org(LAST, days=3)
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    fake_openrouter.workspaces = org["workspaces"]
    fake_openrouter.today = NOW.date()
    return fake_openrouter


def make_app(fake: FakeOpenRouter, tmp_path: Path, now: dt.datetime = NOW) -> App:
    config = Config(
        openrouter=OpenRouterConfig(key=MANAGEMENT_KEY, base_url=fake.base_url, max_attempts=2),
        storage_path=tmp_path / "history.db",
    )
    return App(config=config, env={}, now=lambda: now)


@pytest.fixture()
def app(fake: FakeOpenRouter, tmp_path: Path) -> Iterator[App]:
    app = make_app(fake, tmp_path)
    yield app
    app.close()


def D(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def close(a: float, b: Decimal) -> bool:
    return abs(Decimal(str(a)) - b) <= abs(b) * Decimal("1e-9") + Decimal("1e-12")


def sums(rows: list[dict[str, Any]]) -> dict[str, Decimal]:
    usage = sum((D(r["usage"]) for r in rows), Decimal(0))
    byok = sum((D(r["byok_usage_inference"]) for r in rows), Decimal(0))
    return {"usage": usage, "byok_usage": byok, "cost": usage + byok,
            "requests": sum((D(r["requests"]) for r in rows), Decimal(0))}


def workspace_name(fake: FakeOpenRouter, key_hash: str) -> str:
    space = next(k["workspace_id"] for k in fake.keys if k["hash"] == key_hash)
    return next(w["name"] for w in fake.workspaces or [] if w["id"] == space)


# -- listing -------------------------------------------------------------------------------------


def test_every_workspace_and_every_key_in_each(fake: FakeOpenRouter, app: App) -> None:
    fake.workspace_page_cap = 2  # the server serves fewer than asked: keep going to total_count
    with app.client() as client:
        inventory = client.inventory()
    assert [w.name for w in inventory.workspaces] == ["Default", "Production", "Contractors"]
    assert [r.query["offset"] for r in fake.requests_to("/workspaces")] == ["0", "2"]
    assert sorted(k.hash for k in inventory.keys) == sorted(k["hash"] for k in fake.keys)
    assert {k.hash: k.workspace_id for k in inventory.keys} == {
        k["hash"]: k["workspace_id"] for k in fake.keys}
    asked = fake.requests_to("/keys")
    assert {r.query.get("workspace_id") for r in asked} == {w["id"] for w in fake.workspaces or []}
    assert all(r.query["include_disabled"] == "true" for r in asked)
    assert any(k.disabled for k in inventory.keys)


def test_plain_keys_leave_out_other_workspaces(fake: FakeOpenRouter) -> None:
    # the reason for listing workspaces: the server's /keys alone is the default workspace's
    fake.page_size = 100
    status, body = fake.answer("/keys", {"include_disabled": "true"}, f"Bearer {MANAGEMENT_KEY}")
    assert status == 200 and 0 < len(body["data"]) < len(fake.keys)


def test_no_workspaces_api_falls_back_to_plain_keys_with_one_debug_line(
    fake: FakeOpenRouter, app: App, caplog: pytest.LogCaptureFixture
) -> None:
    fake.workspaces = None  # an older server: /workspaces is a 404, /keys lists every key
    caplog.set_level(logging.DEBUG, logger="bot")
    with app.client() as client:
        inventory = client.inventory()
    assert not inventory.has_workspaces and inventory.workspaces == []
    assert len(inventory.keys) == len(fake.keys)
    assert all("workspace_id" not in r.query for r in fake.requests_to("/keys"))
    lines = [r for r in caplog.records if "/workspaces (404)" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG


# -- the key -------------------------------------------------------------------------------------


def test_an_inference_key_is_refused_before_any_figure(fake: FakeOpenRouter, app: App) -> None:
    fake.management = False  # /credits would answer 200 with zeros, as in the wild
    period = resolve_period(NOW)
    with app.client() as client, pytest.raises(NotManagementKey) as err:
        gather_report(client, None, period, now=NOW, with_keys=True)
    message = str(err.value)
    assert "not a management key" in message and MANAGEMENT_KEYS_URL in message
    assert "\n" not in message
    assert [r.path for r in fake.requests] == ["/key"]
    with app.client() as client, pytest.raises(NotManagementKey):
        run_sync(client, app.store(), now=NOW)
    assert app.store().credits_at() is None  # zeros never became a balance
    assert fake.requests_to("/credits") == []


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"is_management_key": False, "is_provisioning_key": True}, True),
        ({"is_management_key": True, "is_provisioning_key": False}, False),
        ({"is_provisioning_key": False}, True),  # the deprecated field, when alone
        ({"is_provisioning_key": True}, False),
        ({}, False),  # says nothing: let through, each call still checks
    ],
)
def test_key_type_fields(fake: FakeOpenRouter, app: App, fields: dict[str, bool],
                         refused: bool) -> None:
    fake.key_fields = fields
    with app.client() as client:
        if refused:
            with pytest.raises(NotManagementKey):
                client.credits()
        else:
            assert client.credits().total_credits == 250


def test_key_is_asked_once_per_run_and_a_server_without_it_is_let_through(
    fake: FakeOpenRouter, app: App
) -> None:
    with app.client() as client:
        client.snapshot(now=NOW, per_key=True)
        client.credits()
    assert len(fake.requests_to("/key")) == 1
    assert fake.requests[0].path == "/key"
    fake.key_endpoint = False
    with app.client() as client:
        assert client.credits().total_credits == 250


# -- reports -------------------------------------------------------------------------------------


def test_shared_names_in_three_workspaces_report_every_key_once(
    fake: FakeOpenRouter, app: App
) -> None:
    period = resolve_period(NOW)
    with app.client() as client:
        report = gather_report(client, None, period, now=NOW, with_keys=True, by_workspace=True)
    doc = json.loads(to_json(report))
    by_key = doc["by_key"]
    hashes = [k["hash"] for k in by_key]
    assert len(hashes) == len(set(hashes))
    assert set(hashes) == {h for h, rows in fake.key_activity.items() if rows}
    for item in by_key:
        want = sums(fake.key_activity[item["hash"]])
        for name in ("usage", "byok_usage", "cost", "requests"):
            assert close(item[name], want[name]), (item["key"], name)
    staging = {k["hash"] for k in fake.keys if k["name"] == "staging"}
    labels = {k["key"] for k in by_key if k["hash"] in staging}
    assert labels == {"staging (Production)", "staging (Contractors)"}
    assert len({k["key"] for k in by_key}) == len(by_key)  # names tell keys apart too

    spaces = doc["by_workspace"]
    assert {w["workspace"] for w in spaces} == {"Default", "Production", "Contractors"}
    assert {w["id"] for w in spaces} == {w["id"] for w in fake.workspaces or []}
    for name in ("usage", "byok_usage", "cost", "requests"):
        assert close(sum(w[name] for w in spaces), D(doc["totals"][name])), name
    for space in spaces:
        rows = [r for h, rs in fake.key_activity.items() for r in rs
                if workspace_name(fake, h) == space["workspace"]]
        assert close(space["cost"], sums(rows)["cost"]), space["workspace"]
    assert [w["cost"] for w in spaces] == sorted((w["cost"] for w in spaces), reverse=True)
    # the split came from the API in one request, not from the per-key fan-out
    split = [r for r in fake.requests_to("/activity") if r.query.get("group_by") == "workspace"]
    assert len(split) == 1

    text = format_text(report)
    assert "Spend by workspace" in text and "staging (Contractors)" in text
    out = io.StringIO()
    assert report.by_workspace is not None
    write_groups_csv(report.by_workspace, "workspace", out)
    lines = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [line["workspace"] for line in lines] == [w["workspace"] for w in spaces]
    assert set(lines[0]) >= {"workspace", "id", "usage", "byok_usage", "cost", "requests"}


def test_sync_keeps_workspaces_and_history_answers_by_key_and_workspace(
    fake: FakeOpenRouter, app: App, tmp_path: Path
) -> None:
    with app.client() as client:
        result = run_sync(client, app.store(), now=NOW)
    assert "3 workspaces" in result.summary()
    store = app.store()
    assert {w.name for w in store.workspaces()} == {"Default", "Production", "Contractors"}
    assert {k.hash: k.workspace_id for k in store.keys()} == {
        k["hash"]: k["workspace_id"] for k in fake.keys}
    names = store.key_names()
    assert sorted(n for n in names.values() if n.startswith("staging")) == [
        "staging (Contractors)", "staging (Production)"]
    app.close()

    # forty days on, those days are history: the same figures come from the database
    later = NOW + dt.timedelta(days=40)
    fake.today = later.date()
    old = make_app(fake, tmp_path, later)
    period = resolve_period(later, start=str(LAST - dt.timedelta(days=2)), end=str(LAST))
    with old.client() as client:
        report = gather_report(client, old.existing_store(), period, now=later,
                               with_keys=True, by_workspace=True)
    doc = json.loads(to_json(report))
    assert doc["missing_days"] == []
    for item in doc["by_key"]:
        assert close(item["cost"], sums(fake.key_activity[item["hash"]])["cost"])
    assert close(sum(w["cost"] for w in doc["by_workspace"]), D(doc["totals"]["cost"]))
    assert {w["workspace"] for w in doc["by_workspace"]} == {"Default", "Production",
                                                              "Contractors"}
    old.close()


def test_check_counts_workspaces_and_keys(fake: FakeOpenRouter, app: App) -> None:
    first = checks(app)[0]
    assert first.name == "OpenRouter"
    run = first.probe
    assert "3 workspaces, 12 API keys" in run() and "analytics" not in run()
    fake.analytics_status = 403
    assert "analytics API not available (403)" in run()
    fake.workspaces = None
    assert "no workspaces API, 12 API keys" in run()
