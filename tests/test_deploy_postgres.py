"""The PostgreSQL deployment files parse, run real commands and configure what they say:
two replicas and a disruption budget, CronJobs without a volume, a compose file (docker cannot
run here, so it is checked as YAML and against the config loader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bot.cli import build_parser
from bot.config import Config, load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "kubernetes"
URL = "postgresql://openrouter_usage:pw@db.internal:5432/openrouter_usage"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def load_embedded(text: str, env: dict[str, str], tmp_path: Path) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path, env)


def test_two_replica_deployment_with_a_disruption_budget(tmp_path: Path) -> None:
    by_kind = {d["kind"]: d for d in docs(K8S / "deployment.yaml")}
    deploy, pdb, config_map = by_kind["Deployment"], by_kind["PodDisruptionBudget"], \
        by_kind["ConfigMap"]
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = deploy["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert build_parser().parse_args(container["args"]).command == "run"
    assert container["envFrom"][0]["secretRef"]["name"] == "openrouter-usage"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])  # state is in the DB
    [config_volume] = [v for v in pod["volumes"] if "configMap" in v]
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    # the config the pods read: the database URL (and its password) from the Secret
    cfg = load_embedded(config_map["data"]["config.yaml"],
                        {"DATABASE_URL": URL, "SLACK_BOT_TOKEN": "xoxb-1"}, tmp_path)
    assert cfg.storage_url == URL
    assert cfg.alerts.rules and cfg.daily.to


def test_cronjobs_on_postgresql_need_no_volume() -> None:
    jobs = docs(K8S / "cronjobs-postgresql.yaml")
    assert {j["kind"] for j in jobs} == {"CronJob"}
    commands = set()
    for job in jobs:
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        args = build_parser().parse_args(container["args"])
        commands.add(" ".join([args.command, *([args.job] if args.command == "send" else [])]))
        assert container["envFrom"][0]["secretRef"]["name"] == "openrouter-usage"
        assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
        assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} == {
            "openrouter-usage-config-pg"}
    assert commands == {"sync", "alerts", "send daily", "send weekly"}


def test_compose_runs_two_daemons_on_its_postgresql(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    db, bot = compose["services"]["postgres"], compose["services"]["bot"]
    assert db["image"].startswith("postgres:") and "pg_isready" in db["healthcheck"]["test"][1]
    assert bot["deploy"]["replicas"] == 2
    assert bot["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert build_parser().parse_args(bot["command"]).command == "run"
    assert (DEPLOY / bot["build"]["context"] / bot["build"]["dockerfile"]).is_file()
    env = bot["environment"]
    url = env["DATABASE_URL"].replace("${POSTGRES_PASSWORD:-change-me}", "change-me")
    assert url.startswith("postgresql://") and "@postgres:5432/" in url
    [mount] = [v for v in bot["volumes"] if v.endswith(":/config/config.yaml:ro")]
    config = DEPLOY / mount.split(":", 1)[0]
    cfg = load_embedded(config.read_text(), {"DATABASE_URL": url}, tmp_path)
    assert cfg.storage_url == url and env["OPENROUTER_USAGE_CONFIG"] == "/config/config.yaml"


def test_image_can_reach_postgresql() -> None:
    assert "ARG EXTRAS=charts,postgres" in (DEPLOY / "Dockerfile").read_text()
