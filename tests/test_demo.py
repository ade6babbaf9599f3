"""`demo` (what `make demo` runs): the real pipelines on the bundled sample org."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest

from bot.cli import main
from tests.conftest import no_wait

NOW = dt.datetime(2026, 11, 25, 9, 30, tzinfo=dt.UTC)


def test_demo_prints_report_and_digest_and_writes_the_email(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(tmp_path)], now=lambda: NOW, sleep=no_wait) == 0
    out = capsys.readouterr().out
    assert "Spend by API key" in out and "eval-harness" in out  # the disabled key's spend
    assert "BYOK" in out
    assert "OpenRouter spend · Tue 2026-11-24 (UTC)" in out
    assert "x-ai/grok-4" in out.split("New models")[1]  # first used on the digest's day
    assert "Subject: OpenRouter weekly report 2026-11-18 to 2026-11-24" in out
    html = (tmp_path / "weekly-email.html").read_text()
    assert "data:image/png;base64," in html and "cid:" not in html
    assert "research &lt;notebooks&gt;" in html
    blocks = json.loads((tmp_path / "daily-slack.json").read_text())["blocks"]
    assert 0 < len(blocks) <= 50
    rows = list(csv.DictReader(io.StringIO(
        (tmp_path / "openrouter-usage-2026-11-18-to-2026-11-24.csv").read_text())))
    assert {r["date"] for r in rows} == {f"2026-11-{d}" for d in range(18, 25)}


def test_demo_is_deterministic_and_needs_no_key(tmp_path: Path, capsys, monkeypatch) -> None:
    for var in ("OPENROUTER_MANAGEMENT_KEY", "OPENROUTER_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "a"], sleep=no_wait) == 0
    first = capsys.readouterr().out
    assert main(["demo", "--out", "b"], sleep=no_wait) == 0
    second = capsys.readouterr().out
    strip = [line for line in first.splitlines() if "as of" not in line.lower()
             and "written to" not in line.lower()]
    assert strip == [line for line in second.splitlines() if "as of" not in line.lower()
                     and "written to" not in line.lower()]
