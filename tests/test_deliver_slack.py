"""SlackSender against the local fake Slack Web API and webhook (real HTTP on loopback).

Waits between attempts go through an injected ``sleep`` that records and returns at once;
client timeouts in the fault tests are a fraction of a second.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import time

import pytest

from bot.deliver.slack import EVENT_TYPE, LookupUnavailable, SlackSender, Tag, retry_after
from bot.errors import ConfigError, DeliveryError, OutcomeUnknown
from bot.models import SlackMessage
from tests.fake_slack import FakeSlack

BLOCKS = [
    {"type": "header", "text": {"type": "plain_text", "text": "OpenRouter spend"}},
    {"type": "section", "text": {"type": "mrkdwn", "text": "*$12.34* on 2024-05-01 (UTC)"}},
]
MSG = SlackMessage(text="OpenRouter spend: $12.34", blocks=BLOCKS)
TAG = Tag("d41d8cd98f00b204", "daily", "2024-05-01")


class Sleeps(list[float]):
    """An injected sleep: records each wait and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def sender(fake: FakeSlack, **kwargs: object) -> SlackSender:
    options: dict = {
        "token": fake.token,
        "webhook_url": fake.webhook_url,
        "base_url": fake.base_url,
        "timeout": 5,
        "sleep": Sleeps(),
    }
    options.update(kwargs)
    return SlackSender(**options)


def since() -> dt.datetime:
    """When the delivery was first attempted: just now, by the clock the fake stamps with."""
    return dt.datetime.now(dt.UTC)


def wait_for(condition: object, seconds: float = 5.0) -> None:
    """Until a fake's server thread has done something (not a wait on the clock under test)."""
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:  # type: ignore[operator]
        time.sleep(0.005)


def test_post_with_bot_token_records_text_blocks_and_delivery_metadata(
    fake_slack: FakeSlack,
) -> None:
    ts = sender(fake_slack).post("#ops", MSG, tag=TAG)

    assert ts
    [post] = fake_slack.posts
    assert post["channel"] == "#ops"
    assert post["text"] == MSG.text
    assert post["blocks"] == BLOCKS
    assert post["unfurl_links"] is False and post["unfurl_media"] is False
    assert "thread_ts" not in post
    assert post["ts"] == ts
    assert post["metadata"] == {
        "event_type": EVENT_TYPE,
        "event_payload": {"delivery": TAG.key, "job": "daily", "period": "2024-05-01"},
    }
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


# --- what is retried, and what is not ----------------------------------------------------


def test_rate_limit_waits_retry_after_through_the_injected_sleep_and_posts_once(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    fake_slack.fail_next("chat.postMessage", 429, headers={"Retry-After": "7"})
    sleeps = Sleeps()

    with caplog.at_level(logging.WARNING, logger="bot.deliver.slack"):
        ts = sender(fake_slack, sleep=sleeps).post("#ops", MSG)

    assert ts
    assert sleeps == [7.0]
    assert [c.status for c in fake_slack.calls_to("chat.postMessage")] == [429, 200]
    assert len(fake_slack.posts) == 1
    assert "HTTP 429 ratelimited, retrying (1 of 3)" in caplog.text


@pytest.mark.parametrize(("value", "waited"), [("1.5", 1.5), ("0", 0.0), ("soon", 1.0),
                                                ("-3", 0.0), ("nan", 1.0)])
def test_non_integer_retry_after_is_waited_not_a_crash(
    fake_slack: FakeSlack, value: str, waited: float
) -> None:
    fake_slack.fail_next("chat.postMessage", 429, headers={"Retry-After": value})
    sleeps = Sleeps()

    assert sender(fake_slack, sleep=sleeps).post("#ops", MSG)

    assert sleeps == [waited] and len(fake_slack.posts) == 1


def test_retry_after_as_an_http_date_counts_from_the_answers_date(
    fake_slack: FakeSlack,
) -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    fake_slack.fail_next("chat.postMessage", 429, headers={"Retry-After": later})
    sleeps = Sleeps()

    assert sender(fake_slack, sleep=sleeps).post("#ops", MSG)

    [waited] = sleeps
    assert 28 <= waited <= 32 and len(fake_slack.posts) == 1


def test_retry_after_reads_seconds_and_dates_and_defaults_to_one_second() -> None:
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    assert retry_after({"Retry-After": "Wed, 21 Oct 2026 07:28:10 GMT", "Date": date}) == 10
    assert retry_after({"retry-after": ["2"]}) == 2
    assert retry_after({"Retry-After": date}) == 1.0  # a date, but no Date to count from
    assert retry_after({}) == 1.0
    assert retry_after({"Retry-After": "inf"}) == float("inf")


def test_a_retry_after_longer_than_the_cap_leaves_the_post_for_the_next_run(
    fake_slack: FakeSlack,
) -> None:
    fake_slack.fail_next("chat.postMessage", 429, headers={"Retry-After": "700"})
    sleeps = Sleeps()

    with pytest.raises(DeliveryError) as info:
        sender(fake_slack, sleep=sleeps).post("#ops", MSG)

    assert not isinstance(info.value, OutcomeUnknown)  # Slack did not take it
    assert str(info.value) == ("Slack chat.postMessage to #ops failed: rate limited for 700s, "
                               "longer than this run waits (60s); left for the next run")
    assert sleeps == [] and fake_slack.posts == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_server_error_on_the_post_is_not_retried(fake_slack: FakeSlack, status: int) -> None:
    fake_slack.fail_next("chat.postMessage", status, n=5)

    with pytest.raises(OutcomeUnknown) as info:
        sender(fake_slack).post("#ops", MSG, tag=TAG, since=since())

    assert str(info.value).startswith(f"Slack chat.postMessage to #ops: HTTP {status}")
    assert "looked for before any re-send" in str(info.value)
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    assert fake_slack.calls_to("conversations.history")  # it looked, and found nothing
    assert fake_slack.posts == []


@pytest.mark.parametrize("status", [500, 502])
def test_a_server_error_after_slack_stored_the_post_is_resolved_by_the_lookup(
    fake_slack: FakeSlack, status: int
) -> None:
    fake_slack.fail_after_store("chat.postMessage", status)

    ts = sender(fake_slack).post("#ops", MSG, tag=TAG, since=since())

    [post] = fake_slack.posts
    assert ts == post["ts"]
    assert [c.status for c in fake_slack.calls_to("chat.postMessage")] == [f"stored+{status}"]


def test_a_connection_dropped_after_slack_stored_the_post_posts_nothing_twice(
    fake_slack: FakeSlack,
) -> None:
    fake_slack.fail_after_store("chat.postMessage", "drop")

    ts = sender(fake_slack).post("#ops", MSG, tag=TAG, since=since())

    [post] = fake_slack.posts
    assert ts == post["ts"]
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


def test_a_connection_dropped_before_slack_processed_it_is_an_unknown_outcome(
    fake_slack: FakeSlack,
) -> None:
    fake_slack.fail_next("chat.postMessage", "drop")
    with pytest.raises(OutcomeUnknown):
        sender(fake_slack).post("#ops", MSG, tag=TAG, since=since())
    assert len(fake_slack.calls_to("chat.postMessage")) == 1 and fake_slack.posts == []


def test_an_answer_later_than_the_timeout_after_storing_is_found_not_reposted(
    fake_slack: FakeSlack,
) -> None:
    fake_slack.fail_after_store("chat.postMessage", "hold")

    ts = sender(fake_slack, timeout=0.2).post("#ops", MSG, tag=TAG, since=since())

    [post] = fake_slack.posts
    assert ts == post["ts"] and len(fake_slack.calls_to("chat.postMessage")) == 1


def test_a_post_that_lands_after_the_lookup_is_found_by_the_next_attempt(
    fake_slack: FakeSlack,
) -> None:
    fake_slack.fail_next("chat.postMessage", "hold")  # Slack takes it only later
    s = sender(fake_slack, timeout=0.2)
    first = since()
    with pytest.raises(OutcomeUnknown, match="timed out after 0.2s"):
        s.post("#ops", MSG, tag=TAG, since=first)
    assert fake_slack.posts == []
    fake_slack.release()
    wait_for(lambda: fake_slack.posts)

    ts = s.post("#ops", MSG, tag=TAG, since=first, check_first=True)

    [post] = fake_slack.posts
    assert ts == post["ts"] and len(fake_slack.calls_to("chat.postMessage")) == 1


def test_the_total_deadline_ends_a_trickling_answer(fake_slack: FakeSlack) -> None:
    fake_slack.fail_after_store("chat.postMessage", "trickle", delay=0.05)
    started = time.monotonic()

    ts = sender(fake_slack, timeout=2, deadline=0.3).post("#ops", MSG, tag=TAG, since=since())

    assert time.monotonic() - started < 1.5  # the per-read timeout (2 s) never fired
    [post] = fake_slack.posts
    assert ts == post["ts"]


def test_a_trickling_answer_without_a_tag_is_an_unknown_outcome(fake_slack: FakeSlack) -> None:
    fake_slack.fail_after_store("chat.postMessage", "trickle", delay=0.05)
    with pytest.raises(OutcomeUnknown, match="no answer within 0.3s"):
        sender(fake_slack, timeout=2, deadline=0.3).post("#ops", MSG)


def test_ok_without_ts_is_sent_and_the_ts_is_looked_up(fake_slack: FakeSlack) -> None:
    fake_slack.fail_after_store("chat.postMessage", "no_ts", n=2)
    s = sender(fake_slack)

    ts = s.post("#ops", MSG, tag=TAG, since=since())
    untagged = s.post("#ops", MSG)

    first, second = fake_slack.posts
    assert ts == first["ts"]
    assert untagged == ""  # accepted: sent, with no ts to thread under
    assert len(fake_slack.calls_to("chat.postMessage")) == 2


def test_reads_are_retried_and_a_persistent_failure_is_one_line_without_token(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    fake_slack.fail_next("auth.test", 500, n=10)
    sleeps = Sleeps()

    with caplog.at_level(logging.DEBUG), pytest.raises(DeliveryError) as info:
        sender(fake_slack, max_retries=2, sleep=sleeps).auth_test()

    assert str(info.value) == "Slack auth.test failed: HTTP 500"
    assert len(fake_slack.calls_to("auth.test")) == 3 and len(sleeps) == 2
    assert fake_slack.token not in caplog.text


def test_channel_not_found_names_the_channel(fake_slack: FakeSlack) -> None:
    with pytest.raises(DeliveryError) as info:
        sender(fake_slack).post("#nowhere", MSG)
    assert str(info.value) == "Slack chat.postMessage to #nowhere failed: channel_not_found"
    assert not isinstance(info.value, OutcomeUnknown)
    # an API error is an answer, not a transient failure: no retry
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


def test_an_invalid_token_is_one_error_line_without_the_token(fake_slack: FakeSlack) -> None:
    bad = "xoxb-wrong-secret-value"
    with pytest.raises(DeliveryError) as info:
        sender(fake_slack, token=bad).post("#ops", MSG)
    assert str(info.value) == "Slack chat.postMessage to #ops failed: invalid_auth"
    assert bad not in str(info.value)


def test_connection_refused_is_retried_as_it_never_reached_slack(fake_slack: FakeSlack) -> None:
    sleeps = Sleeps()
    s = sender(fake_slack, base_url="http://127.0.0.1:9/api/", max_retries=2, sleep=sleeps)
    with pytest.raises(DeliveryError) as info:
        s.post("#ops", MSG)
    assert not isinstance(info.value, OutcomeUnknown)
    assert str(info.value).startswith("Slack chat.postMessage to #ops failed: ")
    assert "refused" in str(info.value).lower()
    assert len(sleeps) == 2
    assert fake_slack.token not in str(info.value)


# --- looking a delivery up ----------------------------------------------------------------


def test_check_first_finds_an_earlier_post_and_does_not_post_again(
    fake_slack: FakeSlack,
) -> None:
    s = sender(fake_slack)
    first = since()
    ts = s.post("#ops", MSG, tag=TAG, since=first)
    again = s.post("#ops", MSG, tag=TAG, since=first, check_first=True)
    other = s.post("#ops", MSG, tag=Tag("another-delivery"), since=first, check_first=True)

    assert again == ts
    assert other != ts and len(fake_slack.posts) == 2
    [lookup, *_] = fake_slack.calls_to("conversations.history")
    assert lookup.params["channel"] == "C0000OPS"  # looked up by ID from the channel name
    assert str(lookup.params["include_all_metadata"]).lower() in ("1", "true")
    assert float(lookup.params["oldest"]) <= first.timestamp() - 299


def test_lookup_pages_through_a_busy_channel(fake_slack: FakeSlack) -> None:
    s = sender(fake_slack)
    first = since()
    ts = s.post("#ops", MSG, tag=TAG, since=first)
    for i in range(450):
        fake_slack.api_chat_postMessage({"channel": "C0000OPS", "text": f"chatter {i}"})

    assert s.find("#ops", TAG, first) == ts
    assert len(fake_slack.calls_to("conversations.history")) == 3


def test_a_thread_reply_is_looked_up_among_the_replies(fake_slack: FakeSlack) -> None:
    s = sender(fake_slack)
    first = since()
    parent = s.post("#alerts", MSG)
    fake_slack.fail_after_store("chat.postMessage", "drop")

    ts = s.post("#alerts", SlackMessage(text="still low"), thread_ts=parent, tag=TAG,
                since=first)

    assert ts == fake_slack.posts[1]["ts"] and len(fake_slack.posts) == 2
    assert fake_slack.calls_to("conversations.replies")


def test_without_history_scopes_an_unknown_outcome_stays_unknown_and_check_first_reposts(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    fake_slack.scopes.remove("channels:history")
    s = sender(fake_slack)
    first = since()
    with pytest.raises(LookupUnavailable, match=r"missing_scope \(needs channels:history\)"):
        s.find("#ops", TAG, first)
    fake_slack.fail_after_store("chat.postMessage", "drop")
    with pytest.raises(OutcomeUnknown):
        s.post("#ops", MSG, tag=TAG, since=first)

    with caplog.at_level(logging.WARNING, logger="bot.deliver.slack"):
        s.post("#ops", MSG, tag=TAG, since=first, check_first=True)

    assert len(fake_slack.posts) == 2  # at-least-once, and said so
    assert "posting again (at-least-once)" in caplog.text


def test_a_lookup_that_fails_for_now_posts_nothing(fake_slack: FakeSlack) -> None:
    s = sender(fake_slack, max_retries=1)
    fake_slack.fail_next("conversations.history", 503, n=5)
    with pytest.raises(DeliveryError, match="conversations.history"):
        s.post("#ops", MSG, tag=TAG, since=since(), check_first=True)
    assert fake_slack.posts == []


# --- webhooks -----------------------------------------------------------------------------


def test_webhook_posts_text_and_blocks_without_the_bot_token(fake_slack: FakeSlack) -> None:
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


def test_webhook_rate_limit_is_retried(fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("webhook", 429, headers={"Retry-After": "2"})
    sleeps = Sleeps()
    sender(fake_slack, sleep=sleeps).post("webhook", MSG)
    assert [c.status for c in fake_slack.calls_to("webhook")] == [429, 200]
    assert sleeps == [2.0] and len(fake_slack.webhook_posts) == 1


@pytest.mark.parametrize("fault", ["drop", 502])
def test_webhook_unknown_outcome_is_not_retried_and_says_at_least_once(
    fake_slack: FakeSlack, fault: str | int
) -> None:
    fake_slack.fail_after_store("webhook", fault)
    with pytest.raises(OutcomeUnknown, match="webhook cannot be checked"):
        sender(fake_slack).post("webhook", MSG)
    assert len(fake_slack.calls_to("webhook")) == 1 and len(fake_slack.webhook_posts) == 1


def test_webhook_without_webhook_url_is_a_config_error() -> None:
    s = SlackSender(token="xoxb-x", base_url="http://127.0.0.1:9/api/")
    with pytest.raises(ConfigError, match="slack.webhook_url"):
        s.post("webhook", MSG)


def test_nothing_configured_is_config_error() -> None:
    with pytest.raises(ConfigError, match="slack.token or slack.webhook_url"):
        SlackSender(token="", webhook_url=None)


# --- charts -------------------------------------------------------------------------------


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


# --- checks -------------------------------------------------------------------------------


def test_auth_test_names_the_team_and_the_bot(fake_slack: FakeSlack) -> None:
    assert sender(fake_slack).auth_test() == "Acme (T0001) / usage-bot (U0BOT)"


def test_auth_test_with_an_invalid_token_fails_in_one_line(fake_slack: FakeSlack) -> None:
    with pytest.raises(DeliveryError, match=r"^Slack auth.test failed: invalid_auth$"):
        sender(fake_slack, token="xoxb-nope").auth_test()


def test_auth_test_with_only_a_webhook_says_so(fake_slack: FakeSlack) -> None:
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
def test_can_post_says_whether_the_bot_can_post_there_and_why(
    fake_slack: FakeSlack, channel: str, ok: bool, reason: str,
) -> None:
    result, why = sender(fake_slack).can_post(channel)
    assert result is ok
    assert why.startswith(reason)


def test_can_post_says_delivery_is_at_least_once_without_history_scope(
    fake_slack: FakeSlack,
) -> None:
    assert "at-least-once" not in sender(fake_slack).can_post("#ops")[1]
    fake_slack.scopes.remove("channels:history")
    ok, why = sender(fake_slack).can_post("#ops")
    assert ok and why == ("the bot is a member of #ops; without channels:history a post whose "
                          "answer is lost cannot be checked, so delivery is at-least-once")
    assert "at-least-once" in sender(fake_slack).can_post("webhook")[1]


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
