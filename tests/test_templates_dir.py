"""`templates_dir` from the config, through the CLI: it overrides bundled templates by name, and
a template that fails (or a folder that is not there) is one line naming it, exit 2."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bot.cli import main
from tests.conftest import no_wait
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, sample_org

NOW = dt.datetime(2026, 11, 25, 9, 30, tzinfo=dt.UTC)
CUSTOM = ('{"blocks": [{"type": "section", "text": {"type": "mrkdwn", '
          '"text": {{ ("Custom digest: " ~ (d.spend.cost | money)) | tojson }}}}]}\n')


@pytest.fixture()
def setup(fake_openrouter: FakeOpenRouter, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose templates_dir is `tmp_path/tpl` (empty); returns that folder."""
    org = sample_org(last_day=NOW.date() - dt.timedelta(days=1), days=14)
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    folder = tmp_path / "tpl"
    (folder / "slack").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text(
        f"storage: {{path: {tmp_path / 'history.db'}}}\n"
        f"templates_dir: {folder}\n"
        "reports:\n  daily: {to: [stdout]}\n")
    monkeypatch.setenv("OPENROUTER_MANAGEMENT_KEY", MANAGEMENT_KEY)
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake_openrouter.base_url)
    monkeypatch.chdir(tmp_path)
    return folder


def send_daily(capsys: pytest.CaptureFixture[str], folder: Path) -> tuple[int, str, str]:
    config = folder.parent / "config.yaml"
    code = main(["--config", str(config), "send", "daily", "--dry-run"],
                now=lambda: NOW, sleep=no_wait)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_template_in_templates_dir_replaces_the_bundled_one(setup: Path, capsys) -> None:
    (setup / "slack" / "daily.json.j2").write_text(CUSTOM)
    code, out, err = send_daily(capsys, setup)
    assert code == 0, err
    assert "Custom digest: $" in out
    assert "Top models" not in out  # the bundled daily.json.j2 was not used


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("{{ d.nope }}\n", ":1: 'bot.compute.digest.DailyDigest object' has no attribute 'nope'"),
        ("{% if d.empty %}\nno end\n", ":2: Unexpected end of template"),
        ("{{ d.spend.cost | no_such_filter }}\n", ":1: No filter named 'no_such_filter'"),
    ],
    ids=["undefined", "syntax", "unknown-filter"],
)
def test_a_broken_template_is_one_line_naming_the_file_exit_2(
    setup: Path, capsys, text: str, detail: str
) -> None:
    broken = setup / "slack" / "daily.json.j2"
    broken.write_text(text)
    code, out, err = send_daily(capsys, setup)
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith(f"openrouter-usage: error: template {broken}{detail}")
    assert "Traceback" not in err and "internal error" not in err


def test_a_templates_dir_that_is_not_there_is_a_config_error(setup: Path, capsys) -> None:
    setup.rename(setup.with_name("elsewhere"))
    code, _, err = send_daily(capsys, setup)
    assert code == 2
    assert err.strip() == f"openrouter-usage: error: templates_dir: {setup} is not a folder"
