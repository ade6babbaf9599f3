"""Posts rendered messages to Slack: bot token (Web API) or incoming webhook, with retries."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from http.client import HTTPException
from typing import Any, TypeVar
from urllib.error import URLError

from slack_sdk import WebClient, WebhookClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.jitter import Jitter
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web import SlackResponse

from bot.config import DEFAULT_SLACK_API
from bot.errors import ConfigError, DeliveryError
from bot.models import SlackMessage
from bot.text import one_line, redact

LOG = logging.getLogger(__name__)

# slack-sdk logs request URLs (a webhook URL is a secret) at INFO/DEBUG, and logs a retried
# connection error as ERROR. This module logs retries and failures itself, so the SDK's own
# logger is kept quiet.
_SDK_LOG = logging.getLogger(__name__ + ".sdk")
_SDK_LOG.setLevel(logging.CRITICAL)

# Channel IDs (C…, G… private, D… DM) as opposed to channel names, which are lowercase.
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{6,}")
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]*")

T = TypeVar("T")

_NetworkErrors = (SlackClientError, OSError, HTTPException)


class _ProportionalJitter(Jitter):
    """Adds up to 100% of the interval (slack-sdk's default adds up to a whole second)."""

    def recalculate(self, duration: float) -> float:
        return duration + random.uniform(0, duration)


class _ServerErrorRetryHandler(ServerErrorRetryHandler):
    """Also retries the gateway errors a proxy in front of the API answers with."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code in (500, 502, 503, 504)


class _LoggedRetry(RetryHandler):
    """Wraps a retry handler to log each retry in this module's words (never the URL) and to
    wait through the injected ``sleep`` (slack-sdk's handlers call ``time.sleep`` themselves)."""

    def __init__(self, inner: RetryHandler, target: str, sleep: Callable[[float], None]) -> None:
        super().__init__(inner.max_retry_count, inner.interval_calculator)
        self._inner = inner
        self._target = target
        self._sleep = sleep

    def can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return self._inner.can_retry(state=state, request=request, response=response, error=error)

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        if self._target == "webhook":
            what = "Slack webhook"
        else:
            what = "Slack " + request.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if response is not None:
            why = f"HTTP {response.status_code}"
        else:
            why = type(error).__name__ if error is not None else "error"
        LOG.warning(
            "%s: %s, retrying (%d of %d)",
            what,
            why,
            state.current_attempt + 1,
            self.max_retry_count,
        )
        state.next_attempt_requested = True
        self._sleep(self._wait(state, response))
        state.increment_current_attempt()

    def _wait(self, state: RetryState, response: HttpResponse | None) -> float:
        """Seconds before the next attempt: Slack's ``Retry-After`` on a 429, else the backoff."""
        if response is not None and response.status_code == 429:
            for name, values in response.headers.items():
                if name.lower() == "retry-after" and values:
                    value = values[0] if isinstance(values, list) else values
                    try:
                        return float(value) + random.random()
                    except ValueError:
                        break
            return 1 + random.random()
        return self._inner.interval_calculator.calculate_sleep_duration(state.current_attempt)


def _api_reason(response: Any) -> str:
    """One short reason from a failed Web API response: Slack's error code and/or the status."""
    data = getattr(response, "data", None)
    data = data if isinstance(data, dict) else {}
    status = getattr(response, "status_code", 200)
    code = data.get("error")
    parts: list[str] = []
    if status != 200:
        parts.append(f"HTTP {status}")
    if isinstance(code, str) and _ERROR_CODE.fullmatch(code):
        parts.append(code)
        needed = data.get("needed")
        if code == "missing_scope" and isinstance(needed, str):
            parts.append(f"(needs {needed})")
    return " ".join(parts) or "unexpected answer"


def _header(response: SlackResponse, name: str) -> str:
    for key, value in (response.headers or {}).items():
        if key.lower() == name:
            return str(value[0] if isinstance(value, list) else value)
    return ""


class SlackSender:
    """Posts :class:`SlackMessage` values; every failure surfaces as one ``DeliveryError``."""

    def __init__(
        self,
        *,
        token: str | None = None,
        webhook_url: str | None = None,
        base_url: str = DEFAULT_SLACK_API,
        timeout: int = 30,
        max_retries: int = 3,
        charts: bool = False,
        retry_backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._token = token or None
        self._webhook_url = webhook_url or None
        if self._token is None and self._webhook_url is None:
            raise ConfigError("slack: set slack.token or slack.webhook_url")
        if self._webhook_url is not None and not self._webhook_url.lower().startswith(
            ("https://", "http://")
        ):
            raise ConfigError("slack.webhook_url: expected an https:// URL")
        if not base_url.endswith("/"):
            base_url += "/"
        self._timeout = timeout
        self._charts = charts
        self._max_retries = max_retries
        self._backoff = retry_backoff
        self._sleep = sleep
        self._web: WebClient | None = None
        self._hook: WebhookClient | None = None
        if self._token is not None:
            self._web = WebClient(
                token=self._token,
                base_url=base_url,
                timeout=timeout,
                logger=_SDK_LOG,
                retry_handlers=self._retry_handlers("api"),
            )
        if self._webhook_url is not None:
            self._hook = WebhookClient(
                self._webhook_url,
                timeout=timeout,
                logger=_SDK_LOG,
                retry_handlers=self._retry_handlers("webhook"),
            )

    def _retry_handlers(self, target: str) -> list[RetryHandler]:
        interval = BackoffRetryIntervalCalculator(
            backoff_factor=self._backoff, jitter=_ProportionalJitter()
        )
        handlers: list[RetryHandler] = [
            RateLimitErrorRetryHandler(max_retry_count=self._max_retries),
            _ServerErrorRetryHandler(
                max_retry_count=self._max_retries, interval_calculator=interval
            ),
            ConnectionErrorRetryHandler(
                max_retry_count=self._max_retries, interval_calculator=interval
            ),
        ]
        return [_LoggedRetry(handler, target, self._sleep) for handler in handlers]

    # -- posting ---------------------------------------------------------------------------

    def post(
        self,
        channel: str,
        msg: SlackMessage,
        *,
        thread_ts: str | None = None,
        reply_broadcast: bool = False,
    ) -> str:
        """Post ``msg`` to ``channel`` (a name, an ID or ``"webhook"``); return its ``ts``.

        A webhook post has no ``ts`` and returns ``""``; threads and charts need a bot token.
        """
        text = msg.text if msg.text.strip() else "OpenRouter usage"
        if channel == "webhook":
            self._post_webhook(text, msg, thread_ts)
            return ""
        web = self._web_client(channel)
        extra: dict[str, Any] = {}
        if thread_ts:
            extra["thread_ts"] = thread_ts
            if reply_broadcast:
                extra["reply_broadcast"] = True
        response = self._call(
            "chat.postMessage",
            channel,
            lambda: web.chat_postMessage(
                channel=channel,
                text=text,
                blocks=msg.blocks or None,
                unfurl_links=False,
                unfurl_media=False,
                **extra,
            ),
        )
        ts = str(response.get("ts") or "")
        if not ts:
            raise DeliveryError(f"Slack chat.postMessage to {channel} failed: no ts in the answer")
        channel_id = str(response.get("channel") or channel)
        LOG.debug("Slack message posted to %s (ts %s)", channel, ts)
        if self._charts and msg.chart_png:
            self._upload_chart(web, channel_id, thread_ts or ts, msg.chart_png, msg.chart_title)
        return ts

    def _post_webhook(self, text: str, msg: SlackMessage, thread_ts: str | None) -> None:
        if self._hook is None:
            raise ConfigError("slack.webhook_url: needed for the slack:webhook destination")
        if thread_ts:
            LOG.info("Slack webhook cannot post into a thread; posting a new message")
        if self._charts and msg.chart_png:
            LOG.info("Slack webhook cannot upload charts; sending the message without one")
        try:
            response = self._hook.send(
                text=text, blocks=msg.blocks or None, unfurl_links=False, unfurl_media=False
            )
        except _NetworkErrors as exc:
            raise DeliveryError(f"Slack webhook failed: {self._exc_reason(exc)}") from exc
        body = (response.body or "").strip()
        if response.status_code != 200 or _json_not_ok(body):
            detail = self._redact(body) if body else "(empty answer)"
            raise DeliveryError(f"Slack webhook failed: HTTP {response.status_code} {detail}")
        LOG.debug("Slack message posted through the webhook")

    def _upload_chart(
        self, web: WebClient, channel_id: str, thread_ts: str, png: bytes, title: str
    ) -> None:
        try:
            web.files_upload_v2(
                channel=channel_id,
                thread_ts=thread_ts,
                file=png,
                filename="chart.png",
                title=title or "chart",
            )
        except _NetworkErrors as exc:
            if isinstance(exc, SlackApiError):
                reason = _api_reason(exc.response)
            else:
                reason = self._exc_reason(exc)
            LOG.warning(
                "Slack chart upload to %s failed (the message itself was posted): %s",
                channel_id,
                reason,
            )
        else:
            LOG.debug("Slack chart uploaded to %s (thread %s)", channel_id, thread_ts)

    # -- checks ----------------------------------------------------------------------------

    def auth_test(self) -> str:
        """Who the bot token is: ``"team (T…) / user (U…)"``; ``DeliveryError`` on failure."""
        if self._web is None:
            return "incoming webhook only (no bot token to test)"
        web = self._web
        response = self._call("auth.test", "", web.auth_test)
        team = response.get("team") or "?"
        user = response.get("user") or "?"
        return f"{team} ({response.get('team_id', '?')}) / {user} ({response.get('user_id', '?')})"

    def can_post(self, channel: str) -> tuple[bool, str]:
        """Whether the bot can post to ``channel``, and why (for ``check``); never raises."""
        if channel == "webhook":
            if self._hook is None:
                return False, "slack.webhook_url is not set"
            return True, "incoming webhook configured (not tested: that would post a message)"
        if self._web is None:
            return False, "slack.token is not set (only a webhook is configured)"
        web = self._web
        try:
            scopes = {s.strip() for s in _header(web.auth_test(), "x-oauth-scopes").split(",")}
            info = self._find_channel(web, channel)
        except SlackApiError as exc:
            return False, _api_reason(exc.response)
        except _NetworkErrors as exc:
            return False, self._exc_reason(exc)
        if info is None:
            return False, f"channel_not_found: the bot sees no channel {channel}"
        name = "#" + str(info.get("name") or channel.lstrip("#"))
        if info.get("is_archived"):
            return False, f"is_archived: {name} is archived"
        if info.get("is_member"):
            return True, f"the bot is a member of {name}"
        if not info.get("is_private") and "chat:write.public" in scopes:
            return True, f"{name} is public and the bot has chat:write.public"
        return False, f"not_in_channel: invite the bot to {name} (/invite @your-bot)"

    def _find_channel(self, web: WebClient, channel: str) -> dict[str, Any] | None:
        ref = channel.lstrip("#")
        if _CHANNEL_ID.fullmatch(ref):
            try:
                found = web.conversations_info(channel=ref).get("channel")
            except SlackApiError as exc:
                if _api_reason(exc.response) == "channel_not_found":
                    return None
                raise
            return found if isinstance(found, dict) else None
        cursor: str | None = None
        while True:
            page = web.conversations_list(
                types="public_channel,private_channel", limit=200, cursor=cursor
            )
            for item in page.get("channels") or []:
                if isinstance(item, dict) and item.get("name") == ref:
                    return item
            meta = page.get("response_metadata") or {}
            cursor = meta.get("next_cursor") if isinstance(meta, dict) else None
            if not cursor:
                return None

    # -- helpers ---------------------------------------------------------------------------

    def _web_client(self, channel: str) -> WebClient:
        if self._web is None:
            raise ConfigError(
                f"slack.token: needed to post to {channel} (only slack.webhook_url is set)"
            )
        return self._web

    def _call(self, method: str, target: str, fn: Callable[[], T]) -> T:
        where = f"Slack {method} to {target}" if target else f"Slack {method}"
        try:
            return fn()
        except SlackApiError as exc:
            raise DeliveryError(f"{where} failed: {_api_reason(exc.response)}") from exc
        except _NetworkErrors as exc:
            raise DeliveryError(f"{where} failed: {self._exc_reason(exc)}") from exc

    def _exc_reason(self, exc: BaseException) -> str:
        """One line for a transport-level failure, with any secret taken out."""
        if isinstance(exc, URLError) and isinstance(exc.reason, BaseException):
            exc = exc.reason
        if isinstance(exc, TimeoutError):
            return f"timed out after {self._timeout}s"
        if isinstance(exc, URLError):
            text = str(exc.reason)
        elif isinstance(exc, OSError) and exc.strerror:
            text = exc.strerror
        else:
            text = str(exc) or type(exc).__name__
        return self._redact(text)

    def _redact(self, text: str) -> str:
        return one_line(redact(text, [self._token, self._webhook_url]), 200)


def _json_not_ok(body: str) -> bool:
    """A 200 answer that is JSON ``{"ok": false, ...}`` (workflow webhooks answer that way)."""
    if not body.startswith("{"):
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("ok") is False
