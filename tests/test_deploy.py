"""The deployment files name real commands and parse."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from bot.cli import build_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_kubernetes_cronjobs_run_real_commands() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "cronjobs.yaml").read_text()))
    jobs = [d for d in docs if d["kind"] == "CronJob"]
    assert {j["metadata"]["name"] for j in jobs} == {
        "openrouter-usage-sync", "openrouter-usage-alerts", "openrouter-usage-daily",
        "openrouter-usage-weekly"}
    for job in jobs:
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        build_parser().parse_args(container["args"])
        assert container["envFrom"][0]["secretRef"]["name"] == "openrouter-usage"
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_systemd_units_run_real_commands() -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert len(units) == 5
    for unit in units:
        [line] = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
        argv = shlex.split(line.removeprefix("ExecStart="))
        assert argv[0].endswith("/openrouter-usage")
        build_parser().parse_args(argv[1:])
        timer = unit.with_suffix(".timer")
        assert timer.exists() or unit.name == "openrouter-usage.service"


def test_dockerfile_runs_as_non_root_with_state_on_a_volume() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "USER bot" in text and 'VOLUME ["/state"]' in text
    assert 'ENTRYPOINT ["openrouter-usage"]' in text and 'CMD ["run"]' in text
