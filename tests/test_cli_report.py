"""`report` and `sync` end to end: the CLI against the local fake OpenRouter over real sockets."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from tests.conftest import Clock, no_wait
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, sample_org


@pytest.fixture()
def org(fake_openrouter: FakeOpenRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        clock: Clock):
    """The fake serving a sample org whose last day is the clock's yesterday, and a clean
    environment."""
    data = sample_org(last_day=clock.yesterday, days=3)
    fake_openrouter.credits = data["credits"]
    fake_openrouter.activity_rows = data["activity"]
    fake_openrouter.key_activity = data["key_activity"]
    fake_openrouter.keys = data["keys"]
    monkeypatch.chdir(tmp_path)
    for var in ("OPENROUTER_API_KEY", "OPENROUTER_USAGE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENROUTER_MANAGEMENT_KEY", MANAGEMENT_KEY)
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake_openrouter.base_url)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return fake_openrouter


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), sleep=no_wait)
    out, err = capsys.readouterr()
    return code, out, err


def D(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def expected_totals(rows: list[dict[str, Any]]) -> dict[str, Decimal]:
    usage = sum((D(r["usage"]) for r in rows), Decimal(0))
    byok = sum((D(r["byok_usage_inference"]) for r in rows), Decimal(0))
    return {"usage": usage, "byok_usage": byok, "cost": usage + byok,
            "requests": sum((D(r["requests"]) for r in rows), Decimal(0))}


def close(a: float, b: Decimal) -> bool:
    return abs(Decimal(str(a)) - b) <= abs(b) * Decimal("1e-9") + Decimal("1e-12")


def test_json_matches_the_api_rows(org: FakeOpenRouter, capsys, clock: Clock) -> None:
    yesterday = clock.yesterday
    code, out, err = run(capsys, "report", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) >= {"credits", "activity", "period", "totals", "by_model", "by_provider",
                        "by_date"}
    assert "by_key" not in doc
    want = expected_totals(org.activity_rows)
    for name in ("usage", "byok_usage", "cost", "requests"):
        assert close(doc["totals"][name], want[name]), name
    c = org.credits
    assert close(doc["credits"]["remaining"], D(c["total_credits"]) - D(c["total_usage"]))
    assert doc["period"] == {"from": str(yesterday - dt.timedelta(days=29)),
                             "to": str(yesterday)}
    assert len(doc["activity"]) == len(org.activity_rows)
    assert all(len(r["date"]) == 10 for r in doc["activity"])  # both formats normalised
    assert all(r["reasoning_tokens"] is not None for r in doc["activity"])  # nulls -> 0
    costs = [m["cost"] for m in doc["by_model"]]
    assert costs == sorted(costs, reverse=True)
    assert [d["date"] for d in doc["by_date"]] == sorted(d["date"] for d in doc["by_date"])
    assert len(doc["by_date"]) == 30
    assert close(sum(d["cost"] for d in doc["by_date"]), want["cost"])
    for item in doc["by_model"] + doc["by_provider"]:
        assert set(item) >= {"usage", "byok_usage", "cost", "requests", "prompt_tokens",
                             "completion_tokens", "reasoning_tokens"}
    assert all(r.method == "GET" for r in org.requests)


def test_by_key_covers_every_key_including_disabled(org: FakeOpenRouter, capsys) -> None:
    code, out, err = run(capsys, "report", "--json", "--by-key")
    assert code == 0, err
    doc = json.loads(out)
    hashes = {k["hash"] for k in org.keys}
    asked = {r.query.get("api_key_hash") for r in org.requests_to("/activity")} - {None}
    assert asked == hashes  # one per key, disabled included
    assert all(r.query.get("include_disabled") == "true" for r in org.requests_to("/keys"))
    by_key = doc["by_key"]
    assert {k["hash"] for k in by_key} <= hashes
    disabled = next(k for k in org.keys if k["disabled"])
    assert disabled["hash"] in {k["hash"] for k in by_key}
    assert close(sum(k["cost"] for k in by_key), expected_totals(org.activity_rows)["cost"])
    byok_key = next(k for k in by_key if k["byok_usage"] > 0)
    assert byok_key["usage"] == 0
    unnamed = next(k for k in org.keys if not k["name"])
    assert next(k["key"] for k in by_key if k["hash"] == unnamed["hash"]) == unnamed["label"]
    assert "Fetching" not in err  # no progress bar when stderr is not a terminal


def test_text_report_shows_credits_breakdowns_and_bars(org: FakeOpenRouter, capsys) -> None:
    code, out, _ = run(capsys, "report", "--by-key")
    assert code == 0
    for heading in ("Credits", "Totals", "Spend by model", "Spend by provider",
                    "Spend by date (UTC)", "Spend by API key", "BYOK"):
        assert heading in out
    assert "█" in out
    assert "key-07" in out and "Data as of" in out


def test_csv_one_line_per_row(org: FakeOpenRouter, capsys) -> None:
    org.activity_rows[0]["model"] = 'weird, "quoted" model'
    code, out, _ = run(capsys, "report", "--csv", "--no-credits")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(org.activity_rows)
    header = out.splitlines()[0].split(",")
    for col in ("date", "model", "provider", "usage", "byok_usage", "requests",
                "prompt_tokens", "completion_tokens", "reasoning_tokens"):
        assert col in header
    assert 'weird, "quoted" model' in {r["model"] for r in rows}
    assert org.requests_to("/credits") == []


def test_date_days_and_from_to_report_exactly_those_days(
    org: FakeOpenRouter, capsys, clock: Clock,
) -> None:
    yesterday = clock.yesterday
    code, out, _ = run(capsys, "report", "--json", "--date", str(yesterday))
    assert code == 0
    doc = json.loads(out)
    assert {r["date"] for r in doc["activity"]} == {str(yesterday)}
    assert org.requests_to("/activity")[-1].query.get("date") == str(yesterday)
    want = expected_totals([r for r in org.activity_rows if r["date"][:10] == str(yesterday)])
    assert close(doc["totals"]["cost"], want["cost"])

    code, out, _ = run(capsys, "report", "--json", "--days", "2", "--no-credits")
    doc = json.loads(out)
    assert doc["credits"] is None
    assert doc["period"]["from"] == str(yesterday - dt.timedelta(days=1))
    assert {r["date"] for r in doc["activity"]} == {
        str(yesterday), str(yesterday - dt.timedelta(days=1))}
    start = yesterday - dt.timedelta(days=2)
    code, out, _ = run(capsys, "report", "--json", "--from", str(start), "--to", str(start))
    assert {r["date"] for r in json.loads(out)["activity"]} == {str(start)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "--to", "2026-01-01"], "--to needs --from"),
        (["report", "--date", "yesterday"], "--date: expected a date as YYYY-MM-DD"),
        (["report", "--date", "2999-01-01"], "is not a completed UTC day yet"),
        (["report", "--days", "0"], "--days: expected a whole number"),
        (["report", "--from", "2026-02-02", "--to", "2026-02-01"], "is after --to"),
        (["--config", "missing.yaml", "report"], "cannot read config file"),
        (["send", "daily"], "no config file"),
        (["--config", "c.yaml", "send", "daily", "--to", "slack:#ops"],
         "--to slack:#ops: slack:#ops needs slack.token"),
        (["--config", "c.yaml", "send", "daily", "--to", "pager:me"],
         "--to pager:me: expected a destination"),
    ],
)
def test_usage_errors_exit_2_with_one_line(org, capsys, argv: list[str], message: str) -> None:
    Path("c.yaml").write_text("timezone: UTC\n")
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_argparse_usage_errors_exit_2_and_help_exits_0(org, capsys) -> None:
    assert run(capsys, "report", "--json", "--csv")[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "--help")[0] == 0
    assert run(capsys, "-v", "-q", "report")[0] == 2


def test_global_options_after_the_command(org, capsys) -> None:
    code, out, err = run(capsys, "report", "--json", "-q")
    assert code == 0 and err == "" and json.loads(out)["credits"]


def test_no_key_is_a_config_error(org, capsys, monkeypatch) -> None:
    monkeypatch.delenv("OPENROUTER_MANAGEMENT_KEY")
    code, _, err = run(capsys, "report")
    assert code == 2 and "OPENROUTER_MANAGEMENT_KEY" in err


def test_bad_key_and_non_management_key_exit_1(org: FakeOpenRouter, capsys) -> None:
    org.management = False
    code, _, err = run(capsys, "report")
    assert code == 1 and "management key" in err
    assert "https://openrouter.ai/settings/management-keys" in err
    org.management = True
    org.expected_key = "some-other-key-entirely"
    code, _, err = run(capsys, "report")
    assert code == 1 and "401" in err and "Traceback" not in err


def test_persistent_502_is_one_line_and_exit_1(org: FakeOpenRouter, capsys, tmp_path) -> None:
    org.fail_next("/credits", 502, n=100, body="<html><body>Bad gateway</body></html>")
    org.fail_next("/activity", 502, n=100, body="<html><body>Bad gateway</body></html>")
    (tmp_path / "c.yaml").write_text("openrouter:\n  max_attempts: 2\n")
    code, _, err = run(capsys, "--config", "c.yaml", "report")
    assert code == 1 and "502" in err
    assert "<html>" not in err and err.count("\n") == 1


def test_key_never_printed_even_verbose(org: FakeOpenRouter, capsys) -> None:
    org.fail_next("/credits", 500, n=1)
    code, out, err = run(capsys, "-v", "report", "--by-key")
    assert code == 0
    assert MANAGEMENT_KEY not in out + err
    org.expected_key = "x"
    code, out, err = run(capsys, "-v", "report")
    assert code == 1 and MANAGEMENT_KEY not in out + err


def test_sync_twice_stores_nothing_twice(org: FakeOpenRouter, capsys) -> None:
    code, first, err = run(capsys, "sync")
    assert code == 0, err
    code, second, _ = run(capsys, "sync")
    assert code == 0
    assert "0 new, 0 updated" in second and "credits unchanged" in second
    assert "new" in first and " 0 new" not in first


def test_old_ranges_come_from_history_and_say_what_is_missing(
    org: FakeOpenRouter, capsys, tmp_path: Path, clock: Clock
) -> None:
    yesterday = clock.yesterday
    start = yesterday - dt.timedelta(days=39)
    code, out, err = run(capsys, "report", "--from", str(start), "--json")
    assert code == 0
    doc = json.loads(out)
    assert len(doc["missing_days"]) == 10  # 40 days asked, the API has the last 30
    assert "no history for 10 day(s)" in err

    # history that covers the older days: a sync made 20 days ago
    from bot.models import Snapshot
    from bot.store import Store, connect
    from tests.rows import row

    old_day = str(yesterday - dt.timedelta(days=35))
    store = Store(connect(tmp_path / "state" / "openrouter-usage" / "history.db"))
    as_of = dt.datetime.combine(yesterday - dt.timedelta(days=19), dt.time(12), dt.UTC)
    store.save_snapshot(Snapshot(as_of=as_of, activity=[row(old_day, usage="7.25")]))
    store.conn.close()
    code, out, err = run(capsys, "report", "--from", str(start), "--json")
    doc = json.loads(out)
    assert len(doc["missing_days"]) == 0 and err == ""
    old_only = yesterday - dt.timedelta(days=35)
    asked = len(org.requests_to("/activity"))
    code, out, _ = run(capsys, "report", "--date", str(old_only), "--json")
    assert code == 0 and len(org.requests_to("/activity")) == asked  # history alone answers
    assert close(json.loads(out)["totals"]["cost"], D("7.25"))
    assert close(doc["totals"]["cost"], expected_totals(org.activity_rows)["cost"] + D("7.25"))
    assert any(r["date"] == old_day for r in doc["activity"])


def test_python_dash_m_and_no_traceback_in_subprocess(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "bot", "report"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("openrouter-usage: error: no OpenRouter key")
    assert "Traceback" not in proc.stderr


def test_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.cli import progress_bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress_bar("x", quiet=False) is None  # pytest's stderr is not a terminal
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert progress_bar("x", quiet=True) is None
    show = progress_bar("Fetching", quiet=False)
    assert show is not None
    show(1, 4)
    show(4, 4)
    assert "\rFetching [" in tty.getvalue() and "4/4\n" in tty.getvalue()
