"""Alerts to on-call tools through the outbox, against local fakes on real sockets: PagerDuty
(one trigger, one resolve, one dedup key), a signed webhook (firing / resolved JSON whose
signature the receiver checks) and Apprise; configuration errors name the option."""

from __future__ import annotations

import datetime as dt
import json
import ssl
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trustme

from bot.config import HookConfig, load_config
from bot.deadline import _ssl_context
from bot.deliver.pagerduty import PagerDutySender
from bot.deliver.webhook import WebhookSender
from bot.errors import ConfigError, DeliveryError
from bot.jobs.alerts import run_alerts
from bot.models import Destination, Status
from tests.alert_world import World, make_world
from tests.fake_pagerduty import ROUTING_KEY
from tests.fake_webhook import SECRET, FakeWebhook, _Handler, _Server
from tests.loopback import serving

D = Decimal
T0 = dt.datetime(2026, 11, 18, 10, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


def oncall_world(tmp: Path, fake_openrouter: Any, pd: Any, hook: Any) -> World:
    world = make_world(tmp, fake_openrouter, """
  repeat_every: 30m
  to: ["pagerduty:PD_ROUTING_KEY", "webhook:ops-bridge", "apprise:chat"]
  rules:
    - {kind: low_credits, name: credits, below_usd: 50}
""", extra_yaml=f"""pagerduty:
  events_url: {pd.url}
webhooks:
  ops-bridge:
    url: {hook.url}
    secret: ${{OPS_BRIDGE_SECRET}}
apprise:
  chat: ${{CHAT_APPRISE_URL}}
""", env={"PD_ROUTING_KEY": ROUTING_KEY, "OPS_BRIDGE_SECRET": SECRET,
          "CHAT_APPRISE_URL": hook.root.replace("http://", "json://") + "/plain/chat"})
    t = world.timeline
    t.spend(dt.date(2026, 11, 17), "prod", "openai/gpt-4o-mini", 10)
    return world


def set_remaining(world: World, remaining: str) -> None:
    world.timeline.credits = D(remaining) + D(10)  # $10 used on the 17th


def test_pagerduty_gets_one_trigger_and_one_resolve_with_the_same_dedup_key(
        fake_openrouter, fake_pagerduty, fake_webhook, tmp_path: Path) -> None:
    world = oncall_world(tmp_path, fake_openrouter, fake_pagerduty, fake_webhook)
    set_remaining(world, "20")
    fake_pagerduty.fail_next(503)  # a hiccup: retried at once, safely (same dedup_key)
    result = run_alerts(world.app(T0))
    [(event, outcomes)] = result.events
    assert event.action == "fire" and [o.status for o in outcomes] == [Status.SENT] * 3
    for i in range(1, 5):  # still low: nothing new (a repeat would come after 30 min)
        assert run_alerts(world.app(T0 + MINUTE * i)).events == []
    set_remaining(world, "500")
    [(event, outcomes)] = run_alerts(world.app(T0 + MINUTE * 5)).events
    assert event.action == "resolve" and all(o.ok for o in outcomes)
    assert run_alerts(world.app(T0 + MINUTE * 6)).events == []

    actions = [(e["event_action"], e["dedup_key"]) for e in fake_pagerduty.events]
    assert actions == [("trigger", "openrouter-usage/credits/account"),
                       ("resolve", "openrouter-usage/credits/account")]
    assert fake_pagerduty.incidents == {"openrouter-usage/credits/account": "resolved"}
    trigger = fake_pagerduty.events[0]["payload"]
    assert trigger["summary"] == "OpenRouter credits are low: $20.00 left"
    assert trigger["severity"] == "error" and trigger["source"] == "openrouter-usage"
    assert fake_pagerduty.events[0]["links"][0]["href"] == "https://openrouter.ai/settings/credits"

    # the webhook: firing then resolved, both signed, one delivery id each
    assert [b["status"] for b in fake_webhook.received] == ["firing", "resolved"]
    assert fake_webhook.refused == [] and len(set(fake_webhook.deliveries)) == 2
    firing = fake_webhook.received[0]["alert"]
    assert (firing["id"], firing["value"], firing["threshold"]) == (
        "openrouter-usage/credits/account", "20", "50")
    # Apprise posted its own JSON (title and text) to a plain receiver
    assert [p["title"] for p in fake_webhook.plain] == [
        "Alert: OpenRouter credits are low: $20.00 left", "Resolved: Low credits"]
    assert "Add credits at https://openrouter.ai/settings/credits" in \
        fake_webhook.plain[0]["message"]


def test_a_webhook_that_fails_is_retried_by_the_outbox_and_a_bad_secret_is_refused(
        fake_openrouter, fake_pagerduty, fake_webhook, tmp_path: Path) -> None:
    world = oncall_world(tmp_path, fake_openrouter, fake_pagerduty, fake_webhook)
    set_remaining(world, "20")
    fake_webhook.faults.add("post", 500)
    [(_, outcomes)] = run_alerts(world.app(T0)).events
    by_kind = {str(o.destination): o.status for o in outcomes}
    assert by_kind["webhook:ops-bridge"] is Status.FAILED
    assert fake_webhook.received == []
    # the next check, after the retry wait, sends it again: the receiver gets it once
    run_alerts(world.app(T0 + MINUTE * 2))
    assert [b["status"] for b in fake_webhook.received] == ["firing"]
    assert len(fake_pagerduty.events) == 1  # PagerDuty was not asked twice

    fake_webhook.secret = "a different secret"
    set_remaining(world, "500")
    [(_, outcomes)] = run_alerts(world.app(T0 + MINUTE * 3)).events
    hook = [o for o in outcomes if str(o.destination) == "webhook:ops-bridge"]
    assert hook[0].status is Status.FAILED and "HTTP 401" in hook[0].detail
    assert fake_webhook.refused == ["bad signature"]


def test_the_routing_key_never_shows() -> None:
    with pytest.raises(ValueError) as err:
        Destination.parse(f"pagerduty:{ROUTING_KEY.lower()}")
    assert ROUTING_KEY.lower() not in str(err.value) and "pagerduty:***" in str(err.value)
    assert str(Destination.parse("pagerduty:PD_KEY")) == "pagerduty:PD_KEY"


@pytest.mark.parametrize(("yaml_text", "env", "message"), [
    ('alerts: {to: ["pagerduty:PD_KEY"], rules: [{kind: runway, below_days: 3}]}', {},
     "alerts.to[0]: pagerduty:PD_KEY needs the environment variable PD_KEY"),
    ('alerts: {to: ["webhook:nowhere"], rules: [{kind: runway, below_days: 3}]}', {},
     "alerts.to[0]: webhook:nowhere needs webhooks.nowhere.url"),
    ('reports: {daily: {to: ["pagerduty:PD_KEY"]}}', {"PD_KEY": ROUTING_KEY},
     "reports.daily.to[0]: pagerduty destinations take alerts only"),
    ('apprise: {chat: "x"}\nalerts: {to: ["apprise:teams"], rules: [{kind: runway, '
     'below_days: 3}]}', {}, "alerts.to[0]: apprise:teams needs apprise.teams"),
    ("webhooks: {a: {secret: s}}", {}, "webhooks.a.url: required"),
])
def test_destination_config_errors_name_the_option(tmp_path: Path, yaml_text: str,
                                                   env: dict[str, str], message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env)
    assert str(err.value).startswith(message), str(err.value)
    assert ROUTING_KEY not in str(err.value)


def test_config_keeps_oncall_secrets_out_of_its_repr(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text('webhooks: {w: {url: "https://h.example/x?token=abc123", secret: s3cr3t}}\n'
                    'alerts: {to: ["pagerduty:PD_KEY", "webhook:w"], '
                    'rules: [{kind: runway, below_days: 3}]}')
    cfg = load_config(path, {"PD_KEY": ROUTING_KEY})
    text = repr(cfg)
    assert ROUTING_KEY not in text and "abc123" not in text and "s3cr3t" not in text
    assert cfg.oncall.pagerduty_keys == {"PD_KEY": ROUTING_KEY}
    assert set(cfg.oncall.secrets()) >= {ROUTING_KEY, "s3cr3t"}
    assert json.dumps(sorted(cfg.oncall.webhooks))  # names are not secret


def test_check_covers_each_oncall_destination_without_sending(
        fake_openrouter, fake_pagerduty, fake_webhook, tmp_path: Path) -> None:
    from bot.jobs.check import Verdict, checks

    world = oncall_world(tmp_path, fake_openrouter, fake_pagerduty, fake_webhook)
    results = {c.name: c.run() for c in checks(world.app(T0))}
    assert results["pagerduty:PD_ROUTING_KEY"].verdict is Verdict.SKIP
    assert "routing key from $PD_ROUTING_KEY is set" in results["pagerduty:PD_ROUTING_KEY"].detail
    assert "signed with HMAC-SHA256" in results["webhook:ops-bridge"].detail
    assert results["apprise:chat"].verdict is Verdict.OK
    assert fake_pagerduty.events == [] and fake_webhook.plain == []
    assert all(ROUTING_KEY not in r.detail for r in results.values())


@pytest.fixture
def tls_webhook(tmp_path: Path) -> Any:
    """The fake webhook receiver behind TLS, its certificate issued by a private CA (written to
    `tmp_path / "ca.pem"`): only a client trusting that CA can post to it."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    fake = FakeWebhook()
    server = _Server(_Handler, fake)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with serving(server):
        fake.root = server.root.replace("http://", "https://")
        fake.url = fake.root + "/hooks/openrouter"
        yield fake


def test_webhook_and_pagerduty_senders_share_one_verifying_context_that_honours_ssl_cert_file(
        tls_webhook: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sender = WebhookSender("ops-bridge", HookConfig(url=tls_webhook.url, secret=SECRET))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        sender.send({"status": "firing"}, "d-0")  # the private CA is not trusted by default
    assert tls_webhook.received == []

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    built = _ssl_context.cache_info().misses
    assert sender.send({"status": "firing", "n": 1}, "d-1") == "d-1"
    assert sender.send({"status": "resolved", "n": 2}, "d-2") == "d-2"
    pagerduty = PagerDutySender(tls_webhook.root + "/plain/pd", sleep=lambda _: None)
    with pytest.raises(DeliveryError, match="HTTP 200"):  # reached (and verified) the server
        pagerduty.send("routing-key", {"event_action": "trigger", "dedup_key": "k"})
    assert [doc["n"] for doc in tls_webhook.received] == [1, 2]
    assert [doc["dedup_key"] for doc in tls_webhook.plain] == ["k"]
    assert _ssl_context.cache_info().misses == built + 1  # the CA bundle was loaded once
