"""SlackSender against the local fake Slack Web API and webhook (real HTTP on loopback)."""

from __future__ import annotations

import logging

import pytest

from bot.deliver.slack import SlackSender
from bot.errors import ConfigError, DeliveryError
from bot.models import SlackMessage
from tests.fake_slack import FakeSlack

BLOCKS = [
    {"type": "header", "text": {"type": "plain_text", "text": "OpenRouter spend"}},
    {"type": "section", "text": {"type": "mrkdwn", "text": "*$12.34* on 2024-05-01 (UTC)"}},
]
MSG = SlackMessage(text="OpenRouter spend: $12.34", blocks=BLOCKS)


def sender(fake: FakeSlack, **kwargs: object) -> SlackSender:
    options: dict = {
        "token": fake.token,
        "webhook_url": fake.webhook_url,
        "base_url": fake.base_url,
        "timeout": 5,
        "retry_backoff": 0.001,
        "sleep": lambda seconds: None,  # backoff is asserted through `waits`, never waited
    }
    options.update(kwargs)
    return SlackSender(**options)


def test_post_with_bot_token_records_text_and_blocks(fake_slack: FakeSlack) -> None:
    ts = sender(fake_slack).post("#ops", MSG)

    assert ts
    [post] = fake_slack.posts
    assert post["channel"] == "#ops"
    assert post["text"] == MSG.text
    assert post["blocks"] == BLOCKS
    assert post["unfurl_links"] is False and post["unfurl_media"] is False
    assert "thread_ts" not in post
    assert post["ts"] == ts
    assert fake_slack.calls_to("chat.postMessage")[0].has_auth


def test_post_by_channel_id_and_ts_increases(fake_slack: FakeSlack) -> None:
    s = sender(fake_slack)
    first = s.post("C0000OPS", MSG)
    second = s.post("C0000OPS", MSG)
    assert float(second) > float(first)
    assert [p["channel_id"] for p in fake_slack.posts] == ["C0000OPS", "C0000OPS"]


def test_thread_reply_passes_thread_ts_and_broadcast(fake_slack: FakeSlack) -> None:
    s = sender(fake_slack)
    parent = s.post("#alerts", MSG)
    s.post("#alerts", SlackMessage(text="still low"), thread_ts=parent)
    s.post("#alerts", SlackMessage(text="resolved"), thread_ts=parent, reply_broadcast=True)

    repeat, resolved = fake_slack.posts[1:]
    assert repeat["thread_ts"] == parent and "reply_broadcast" not in repeat
    assert resolved["thread_ts"] == parent and resolved["reply_broadcast"] is True
    assert "blocks" not in repeat


def test_rate_limit_honours_retry_after_and_posts_once(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    fake_slack.fail_next("chat.postMessage", 429, headers={"Retry-After": "7"})
    waits: list[float] = []

    with caplog.at_level(logging.WARNING, logger="bot.deliver.slack"):
        ts = sender(fake_slack, sleep=waits.append).post("#ops", MSG)

    assert ts
    assert len(waits) == 1 and 7 <= waits[0] < 8  # Retry-After, plus under a second of jitter
    assert [c.status for c in fake_slack.calls_to("chat.postMessage")] == [429, 200]
    assert len(fake_slack.posts) == 1
    assert "HTTP 429, retrying (1 of 3)" in caplog.text


@pytest.mark.parametrize("status", [500, 503, 502])
def test_server_error_then_success(fake_slack: FakeSlack, status: int) -> None:
    fake_slack.fail_next("chat.postMessage", status, n=2)

    assert sender(fake_slack).post("#ops", MSG)
    assert [c.status for c in fake_slack.calls_to("chat.postMessage")] == [status, status, 200]
    assert len(fake_slack.posts) == 1


def test_connection_drop_then_success(fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("chat.postMessage", "drop")

    assert sender(fake_slack).post("#ops", MSG)
    assert [c.status for c in fake_slack.calls_to("chat.postMessage")] == ["drop", 200]
    assert len(fake_slack.posts) == 1


def test_persistent_server_error_is_one_line_without_token(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    fake_slack.fail_next("chat.postMessage", 500, n=10)

    with caplog.at_level(logging.DEBUG), pytest.raises(DeliveryError) as info:
        sender(fake_slack, max_retries=2).post("#ops", MSG)

    text = str(info.value)
    assert text == "Slack chat.postMessage to #ops failed: HTTP 500"
    assert len(fake_slack.calls_to("chat.postMessage")) == 3
    assert fake_slack.token not in caplog.text
    assert fake_slack.posts == []


def test_timeout_is_delivery_error(fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("chat.postMessage", "slow", delay=1.5)
    with pytest.raises(DeliveryError) as info:
        sender(fake_slack, timeout=1, max_retries=0).post("#ops", MSG)
    assert str(info.value) == "Slack chat.postMessage to #ops failed: timed out after 1s"


def test_channel_not_found_names_the_channel(fake_slack: FakeSlack) -> None:
    with pytest.raises(DeliveryError) as info:
        sender(fake_slack).post("#nowhere", MSG)
    assert str(info.value) == "Slack chat.postMessage to #nowhere failed: channel_not_found"
    # an API error is an answer, not a transient failure: no retry
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


def test_invalid_token(fake_slack: FakeSlack) -> None:
    bad = "xoxb-wrong-secret-value"
    with pytest.raises(DeliveryError) as info:
        sender(fake_slack, token=bad).post("#ops", MSG)
    assert str(info.value) == "Slack chat.postMessage to #ops failed: invalid_auth"
    assert bad not in str(info.value)


def test_connection_refused_is_delivery_error(fake_slack: FakeSlack) -> None:
    s = sender(fake_slack, base_url="http://127.0.0.1:9/api/", max_retries=1)
    with pytest.raises(DeliveryError) as info:
        s.post("#ops", MSG)
    assert str(info.value).startswith("Slack chat.postMessage to #ops failed: ")
    assert "refused" in str(info.value).lower()
    assert fake_slack.token not in str(info.value)


def test_webhook_success(fake_slack: FakeSlack) -> None:
    assert sender(fake_slack).post("webhook", MSG) == ""

    [hook] = fake_slack.webhook_posts
    assert hook["text"] == MSG.text
    assert hook["blocks"] == BLOCKS
    assert fake_slack.posts == []
    assert not fake_slack.calls_to("webhook")[0].has_auth


def test_webhook_only_sender_posts_to_webhook(fake_slack: FakeSlack) -> None:
    s = SlackSender(webhook_url=fake_slack.webhook_url)
    s.post("webhook", MSG)
    assert len(fake_slack.webhook_posts) == 1
    with pytest.raises(ConfigError, match="slack.token"):
        s.post("#ops", MSG)


def test_webhook_failure_body_is_delivery_error(fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("webhook", 400, body="invalid_blocks")
    with pytest.raises(DeliveryError) as info:
        sender(fake_slack).post("webhook", MSG)
    assert str(info.value) == "Slack webhook failed: HTTP 400 invalid_blocks"
    assert "XXXXSECRET" not in str(info.value)


def test_webhook_wrong_url_does_not_leak_it(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    url = fake_slack.webhook_url.replace("XXXXSECRET", "OTHERSECRET")
    with caplog.at_level(logging.DEBUG), pytest.raises(DeliveryError) as info:
        sender(fake_slack, webhook_url=url).post("webhook", MSG)
    assert str(info.value) == "Slack webhook failed: HTTP 404 no_service"
    assert "OTHERSECRET" not in caplog.text


def test_webhook_retries_server_error(fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("webhook", 503)
    sender(fake_slack).post("webhook", MSG)
    assert [c.status for c in fake_slack.calls_to("webhook")] == [503, 200]
    assert len(fake_slack.webhook_posts) == 1


def test_webhook_not_configured() -> None:
    s = SlackSender(token="xoxb-x", base_url="http://127.0.0.1:9/api/")
    with pytest.raises(ConfigError, match="slack.webhook_url"):
        s.post("webhook", MSG)


def test_nothing_configured_is_config_error() -> None:
    with pytest.raises(ConfigError, match="slack.token or slack.webhook_url"):
        SlackSender(token="", webhook_url=None)


def test_chart_uploaded_into_thread_when_charts_on(fake_slack: FakeSlack) -> None:
    png = b"\x89PNG\r\n\x1a\nfake-chart"
    msg = SlackMessage(text="digest", blocks=BLOCKS, chart_png=png, chart_title="14-day spend")

    ts = sender(fake_slack, charts=True).post("#ops", msg)

    [upload] = fake_slack.uploads
    assert upload["data"] == png
    assert upload["filename"] == "chart.png"
    assert upload["title"] == "14-day spend"
    assert upload["channel"] == "C0000OPS"
    assert upload["thread_ts"] == ts


def test_chart_not_uploaded_when_charts_off(fake_slack: FakeSlack) -> None:
    msg = SlackMessage(text="digest", chart_png=b"\x89PNG", chart_title="c")
    sender(fake_slack).post("#ops", msg)
    assert fake_slack.uploads == []
    assert not fake_slack.calls_to("files.getUploadURLExternal")


def test_failed_chart_upload_is_a_warning_not_a_failure(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    fake_slack.scopes.remove("files:write")
    msg = SlackMessage(text="digest", chart_png=b"\x89PNG", chart_title="c")

    with caplog.at_level(logging.WARNING, logger="bot.deliver.slack"):
        ts = sender(fake_slack, charts=True).post("#ops", msg)

    assert ts and len(fake_slack.posts) == 1
    assert "chart upload to C0000OPS failed" in caplog.text
    assert "missing_scope (needs files:write)" in caplog.text


def test_auth_test(fake_slack: FakeSlack) -> None:
    assert sender(fake_slack).auth_test() == "Acme (T0001) / usage-bot (U0BOT)"


def test_auth_test_invalid_token(fake_slack: FakeSlack) -> None:
    with pytest.raises(DeliveryError, match=r"^Slack auth.test failed: invalid_auth$"):
        sender(fake_slack, token="xoxb-nope").auth_test()


def test_auth_test_webhook_only(fake_slack: FakeSlack) -> None:
    assert "webhook" in SlackSender(webhook_url=fake_slack.webhook_url).auth_test()


@pytest.mark.parametrize(
    ("channel", "ok", "reason"),
    [
        ("#ops", True, "the bot is a member of #ops"),
        ("C000ALERT", True, "the bot is a member of #alerts"),
        ("#general", False, "not_in_channel: invite the bot to #general"),
        ("#secret", False, "channel_not_found"),
        ("C00NOTHERE", False, "channel_not_found"),
        ("#old-ops", False, "is_archived: #old-ops is archived"),
        ("webhook", True, "incoming webhook configured"),
    ],
)
def test_can_post(fake_slack: FakeSlack, channel: str, ok: bool, reason: str) -> None:
    result, why = sender(fake_slack).can_post(channel)
    assert result is ok
    assert why.startswith(reason)


def test_can_post_public_channel_with_chat_write_public(fake_slack: FakeSlack) -> None:
    fake_slack.scopes.append("chat:write.public")
    assert sender(fake_slack).can_post("#general") == (
        True,
        "#general is public and the bot has chat:write.public",
    )


def test_can_post_reports_missing_scope(fake_slack: FakeSlack) -> None:
    fake_slack.scopes.remove("channels:read")
    assert sender(fake_slack).can_post("#ops") == (False, "missing_scope (needs channels:read)")


def test_can_post_reports_bad_token(fake_slack: FakeSlack) -> None:
    assert sender(fake_slack, token="xoxb-bad").can_post("#ops") == (False, "invalid_auth")
