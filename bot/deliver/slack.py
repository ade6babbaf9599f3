"""Posts rendered messages to Slack (bot token or incoming webhook), never blindly twice.

``chat.postMessage`` is not idempotent, so this module retries a post only when Slack
certainly did not process it: a 429 (after its ``Retry-After``, if that is short), or a
connection that failed before the request was sent. When the request may have reached Slack
(the connection dropped after sending, no answer in time, a 5xx from Slack or a gateway) the
outcome is unknown: the message is looked for in the channel by the delivery tag it carries
in its ``metadata`` and, if it is not there, :class:`OutcomeUnknown` says so; whoever sends
it again looks first (``check_first``). Reads (history, channel look-ups, ``auth.test``) are
retried freely. Every HTTP call has a total deadline, and no single wait is longer than
``retry_after_cap``. Incoming webhooks cannot be looked up: through them delivery is
at-least-once.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any, TypeVar
from urllib.error import HTTPError, URLError

from slack_sdk import WebClient, WebhookClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse

from bot.config import DEFAULT_SLACK_API
from bot.errors import ConfigError, DeliveryError, OutcomeUnknown
from bot.models import SlackMessage
from bot.text import one_line, redact

# the metadata event type that marks this program's messages, and finds them again
EVENT_TYPE = "openrouter_usage_delivery"
# the longest single wait on a 429's Retry-After; a longer one leaves the message for the
# next run, so no run holds its lease or claim for long
RETRY_AFTER_CAP = 60.0
# Slack's clock and ours may differ: history is searched from this long before the first
# attempt
LOOKUP_SKEW = dt.timedelta(minutes=5)
HISTORY_PAGE = 200
HISTORY_PAGES = 20
# answers that mean the history cannot be read with this token (as opposed to "not now")
_NO_LOOKUP = frozenset({
    "missing_scope", "not_in_channel", "channel_not_found", "not_allowed_token_type",
    "access_denied", "no_permission",
})

LOG = logging.getLogger(__name__)

# slack-sdk logs request URLs (a webhook URL is a secret) at INFO/DEBUG, and logs a failed
# request as ERROR. This module logs retries and failures itself, so the SDK's own logger
# is kept quiet.
_SDK_LOG = logging.getLogger(__name__ + ".sdk")
_SDK_LOG.setLevel(logging.CRITICAL)

# Channel IDs (C…, G… private, D… DM) as opposed to channel names, which are lowercase.
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{6,}")
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]*")

T = TypeVar("T")

_NetworkErrors = (SlackClientError, OSError, HTTPException)
_MAYBE_POSTED = "it may have been posted, so it is looked for before any re-send"
_MAYBE_HOOKED = ("it may have been posted; a webhook cannot be checked, so it is sent again "
                 "later (at-least-once)")


@dataclass(frozen=True)
class Tag:
    """A delivery's identity, carried in its Slack message's metadata to find it again."""

    key: str  # unique per delivery (a --force resend gets a new one)
    job: str = ""
    period: str = ""

    def metadata(self) -> dict[str, Any]:
        return {
            "event_type": EVENT_TYPE,
            "event_payload": {"delivery": self.key, "job": self.job, "period": self.period},
        }

    def matches(self, message: Any) -> bool:
        meta = message.get("metadata") if isinstance(message, dict) else None
        if not isinstance(meta, dict) or meta.get("event_type") != EVENT_TYPE:
            return False
        payload = meta.get("event_payload")
        return isinstance(payload, dict) and payload.get("delivery") == self.key


class LookupUnavailable(DeliveryError):
    """The channel's history cannot be searched with this token (scope, membership)."""


class _Refused(Exception):
    """An HTTP answer that is not a success: its status, headers, Slack error code, reason."""

    def __init__(self, status: int, headers: Any, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers
        self.code = code
        self.reason = reason


class _Answered(DeliveryError):
    """Slack answered the request with an error (so it certainly did not act on it)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class _DeadlineExceeded(Exception):
    pass


def _header(headers: Any, name: str) -> str:
    """One header's value from a dict (values str or list) or an ``HTTPMessage``."""
    if not headers:
        return ""
    for key, value in headers.items():
        if key.lower() == name:
            if isinstance(value, list):
                return str(value[0]) if value else ""
            return str(value)
    return ""


def retry_after(headers: Any, default: float = 1.0) -> float:
    """Seconds to wait from a 429's ``Retry-After``: an integer, a decimal or an HTTP date
    (counted from the answer's own ``Date``). Anything unreadable waits ``default``; an
    infinite value is returned as such (too long to wait)."""
    value = _header(headers, "retry-after").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        when = _http_date(value)
        sent = _http_date(_header(headers, "date"))
        if when is None or sent is None:
            return default
        seconds = (when - sent).total_seconds()
    if math.isnan(seconds):
        return default
    return max(0.0, seconds)


def _http_date(text: str) -> dt.datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


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


def _api_code(response: Any) -> str:
    data = getattr(response, "data", None)
    code = data.get("error") if isinstance(data, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""


def _unsent(exc: BaseException) -> bool:
    """Whether a transport error certainly happened before the request was sent.

    urllib wraps in ``URLError`` exactly the errors raised while connecting and sending
    (refused, DNS, TLS handshake, connect timeout); errors while waiting for the answer
    (reset, timeout, a closed connection) come through unwrapped: the request may have
    arrived.
    """
    return isinstance(exc, URLError) and not isinstance(exc, HTTPError)


class SlackSender:
    """Posts :class:`SlackMessage` values; every failure surfaces as one ``DeliveryError``
    (``OutcomeUnknown`` when the message may have been posted)."""

    def __init__(
        self,
        *,
        token: str | None = None,
        webhook_url: str | None = None,
        base_url: str = DEFAULT_SLACK_API,
        timeout: float = 30,
        deadline: float = 60,
        max_retries: int = 3,
        charts: bool = False,
        retry_backoff: float = 0.5,
        retry_after_cap: float = RETRY_AFTER_CAP,
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
        self._deadline = deadline
        self._charts = charts
        self._max_retries = max_retries
        self._backoff = retry_backoff
        self._retry_after_cap = retry_after_cap
        self._sleep = sleep  # every wait between attempts (tests pass one that returns)
        self._channel_ids: dict[str, str] = {}
        self._web: WebClient | None = None
        self._hook: WebhookClient | None = None
        # No slack-sdk retry handlers: which failures are safe to retry is decided here.
        if self._token is not None:
            self._web = WebClient(
                token=self._token,
                base_url=base_url,
                timeout=timeout,  # type: ignore[arg-type]  # urllib takes a float
                logger=_SDK_LOG,
                retry_handlers=[],
            )
        if self._webhook_url is not None:
            self._hook = WebhookClient(
                self._webhook_url,
                timeout=timeout,  # type: ignore[arg-type]
                logger=_SDK_LOG,
                retry_handlers=[],
            )

    # -- posting ---------------------------------------------------------------------------

    def post(
        self,
        channel: str,
        msg: SlackMessage,
        *,
        thread_ts: str | None = None,
        reply_broadcast: bool = False,
        tag: Tag | None = None,
        since: dt.datetime | None = None,
        check_first: bool = False,
    ) -> str:
        """Post ``msg`` to ``channel`` (a name, an ID or ``"webhook"``); return its ``ts``.

        ``tag`` goes into the message's metadata. ``since`` is when the delivery was first
        attempted: the channel's history from then on is where it is looked for, first when
        ``check_first`` (an earlier attempt may have posted it: a message found is not posted
        again), and after an unknown outcome. A webhook post has no ``ts`` and returns ``""``;
        so does a post Slack accepted without saying its ``ts``. Threads and charts need a
        bot token.
        """
        text = msg.text if msg.text.strip() else "OpenRouter usage"
        if channel == "webhook":
            self._post_webhook(text, msg, thread_ts)
            return ""
        web = self._web_client(channel)
        if check_first and tag is not None and since is not None:
            found = self._look_before_posting(channel, tag, since, thread_ts)
            if found is not None:
                return found
        extra: dict[str, Any] = {}
        if thread_ts:
            extra["thread_ts"] = thread_ts
            if reply_broadcast:
                extra["reply_broadcast"] = True
        if tag is not None:
            extra["metadata"] = tag.metadata()
        try:
            response = self._request(
                f"Slack chat.postMessage to {channel}",
                self._api(lambda: web.chat_postMessage(
                    channel=channel, text=text, blocks=msg.blocks or None, unfurl_links=False,
                    unfurl_media=False, **extra,
                )),
                safe=False,
            )
        except OutcomeUnknown as exc:
            found = self._look_after_unknown(channel, tag, since, thread_ts, str(exc))
            if found is None:
                raise
            return found
        ts = str(response.get("ts") or "")
        if not ts:
            found = self._look_after_unknown(channel, tag, since, thread_ts, "no ts")
            LOG.warning("Slack accepted the message to %s without saying its ts; recorded as "
                        "sent%s", channel, f" (found it: ts {found})" if found else "")
            return found or ""
        channel_id = str(response.get("channel") or channel)
        if _CHANNEL_ID.fullmatch(channel_id):
            self._channel_ids[channel.lstrip("#")] = channel_id
        LOG.debug("Slack message posted to %s (ts %s)", channel, ts)
        if self._charts and msg.chart_png:
            self._upload_chart(web, channel_id, thread_ts or ts, msg.chart_png, msg.chart_title)
        return ts

    def _look_before_posting(
        self, channel: str, tag: Tag, since: dt.datetime, thread_ts: str | None
    ) -> str | None:
        try:
            found = self.find(channel, tag, since, thread_ts=thread_ts)
        except LookupUnavailable as exc:
            LOG.warning("Slack: cannot look in %s for an earlier attempt (%s); posting again "
                        "(at-least-once)", channel, exc)
            return None
        if found is not None:
            LOG.info("Slack message to %s was already posted (ts %s): not posted again",
                     channel, found or "unknown")
        return found

    def _look_after_unknown(
        self, channel: str, tag: Tag | None, since: dt.datetime | None, thread_ts: str | None,
        why: str,
    ) -> str | None:
        """After an unclear answer: the message's ts if it is in the channel, else None."""
        if tag is None or since is None:
            return None
        try:
            found = self.find(channel, tag, since, thread_ts=thread_ts)
        except DeliveryError as exc:
            LOG.info("Slack: could not look in %s after %s: %s", channel, why, exc)
            return None
        if found is not None:
            LOG.info("Slack message to %s found in the channel after %s (ts %s)", channel, why,
                     found or "unknown")
        return found

    def find(
        self, channel: str, tag: Tag, since: dt.datetime, *, thread_ts: str | None = None
    ) -> str | None:
        """The ``ts`` of the message carrying ``tag`` in ``channel`` (or the thread), posted
        since ``since`` (less a margin for clock skew); None if there is none.

        ``LookupUnavailable`` when the token cannot read that history (needs
        ``channels:history`` / ``groups:history``, and ``channels:read`` / ``groups:read`` for
        a channel given by name); ``DeliveryError`` when it cannot be read right now.
        """
        web = self._web_client(channel)
        try:
            channel_id = self._channel_id(web, channel)
            oldest = f"{(since - LOOKUP_SKEW).timestamp():.6f}"
            cursor: str | None = None
            for _ in range(HISTORY_PAGES):
                page = self._history_page(web, channel_id, oldest, cursor, thread_ts)
                for message in page.get("messages") or []:
                    if tag.matches(message):
                        return str(message.get("ts") or "")
                meta = page.get("response_metadata") or {}
                cursor = meta.get("next_cursor") if isinstance(meta, dict) else None
                if not cursor:
                    return None
        except _Answered as exc:
            if exc.code in _NO_LOOKUP:
                raise LookupUnavailable(str(exc)) from exc
            raise
        raise LookupUnavailable(
            f"more than {HISTORY_PAGES * HISTORY_PAGE} messages in {channel} since the first "
            "attempt: too many to search"
        )

    def _history_page(
        self, web: WebClient, channel_id: str, oldest: str, cursor: str | None,
        thread_ts: str | None,
    ) -> SlackResponse:
        if thread_ts:
            return self._request(
                f"Slack conversations.replies in {channel_id}",
                self._api(lambda: web.conversations_replies(
                    channel=channel_id, ts=thread_ts, oldest=oldest, include_all_metadata=True,
                    limit=HISTORY_PAGE, cursor=cursor,
                )),
                safe=True,
            )
        return self._request(
            f"Slack conversations.history in {channel_id}",
            self._api(lambda: web.conversations_history(
                channel=channel_id, oldest=oldest, include_all_metadata=True,
                limit=HISTORY_PAGE, cursor=cursor,
            )),
            safe=True,
        )

    def _channel_id(self, web: WebClient, channel: str) -> str:
        ref = channel.lstrip("#")
        if _CHANNEL_ID.fullmatch(ref):
            return ref
        if ref not in self._channel_ids:
            info = self._find_channel(web, channel)
            if info is None or not info.get("id"):
                raise LookupUnavailable(f"channel_not_found: the bot sees no channel {channel}")
            self._channel_ids[ref] = str(info["id"])
        return self._channel_ids[ref]

    def _post_webhook(self, text: str, msg: SlackMessage, thread_ts: str | None) -> None:
        if self._hook is None:
            raise ConfigError("slack.webhook_url: needed for the slack:webhook destination")
        if thread_ts:
            LOG.info("Slack webhook cannot post into a thread; posting a new message")
        if self._charts and msg.chart_png:
            LOG.info("Slack webhook cannot upload charts; sending the message without one")
        hook = self._hook

        def send() -> None:
            response = hook.send(
                text=text, blocks=msg.blocks or None, unfurl_links=False, unfurl_media=False
            )
            body = (response.body or "").strip()
            if response.status_code != 200 or _json_not_ok(body):
                detail = self._redact(body) if body else "(empty answer)"
                raise _Refused(response.status_code, response.headers, "",
                               f"HTTP {response.status_code} {detail}")

        self._request("Slack webhook", send, safe=False, unknown=_MAYBE_HOOKED)
        LOG.debug("Slack message posted through the webhook")

    def _upload_chart(
        self, web: WebClient, channel_id: str, thread_ts: str, png: bytes, title: str
    ) -> None:
        try:
            self._bounded(lambda: web.files_upload_v2(
                channel=channel_id,
                thread_ts=thread_ts,
                file=png,
                filename="chart.png",
                title=title or "chart",
            ))
        except (*_NetworkErrors, _DeadlineExceeded) as exc:
            if isinstance(exc, SlackApiError):
                reason = _api_reason(exc.response)
            elif isinstance(exc, _DeadlineExceeded):
                reason = f"no answer within {self._deadline:g}s"
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
        response = self._request("Slack auth.test", self._api(web.auth_test), safe=True)
        team = response.get("team") or "?"
        user = response.get("user") or "?"
        return f"{team} ({response.get('team_id', '?')}) / {user} ({response.get('user_id', '?')})"

    def can_post(self, channel: str) -> tuple[bool, str]:
        """Whether the bot can post to ``channel``, and why (for ``check``); never raises.

        The reason also says when a lost answer could not be checked in the channel's history
        (no ``channels:history`` / ``groups:history``): delivery there is at-least-once.
        """
        if channel == "webhook":
            if self._hook is None:
                return False, "slack.webhook_url is not set"
            return True, ("incoming webhook configured (not tested: that would post; a webhook "
                          "cannot be checked for lost answers, so delivery is at-least-once)")
        if self._web is None:
            return False, "slack.token is not set (only a webhook is configured)"
        web = self._web
        try:
            auth = self._request("Slack auth.test", self._api(web.auth_test), safe=True)
            scopes = {s.strip() for s in _header(auth.headers, "x-oauth-scopes").split(",")}
            info = self._find_channel(web, channel)
        except DeliveryError as exc:
            return False, str(exc).split(" failed: ", 1)[-1]
        if info is None:
            return False, f"channel_not_found: the bot sees no channel {channel}"
        name = "#" + str(info.get("name") or channel.lstrip("#"))
        if info.get("is_archived"):
            return False, f"is_archived: {name} is archived"
        history = "groups:history" if info.get("is_private") else "channels:history"
        note = "" if history in scopes else (
            f"; without {history} a post whose answer is lost cannot be checked, so delivery "
            "is at-least-once")
        if info.get("is_member"):
            return True, f"the bot is a member of {name}{note}"
        if not info.get("is_private") and "chat:write.public" in scopes:
            return True, f"{name} is public and the bot has chat:write.public{note}"
        return False, f"not_in_channel: invite the bot to {name} (/invite @your-bot)"

    def _find_channel(self, web: WebClient, channel: str) -> dict[str, Any] | None:
        ref = channel.lstrip("#")
        if _CHANNEL_ID.fullmatch(ref):
            try:
                found = self._request(
                    "Slack conversations.info", self._api(lambda: web.conversations_info(
                        channel=ref)), safe=True,
                ).get("channel")
            except _Answered as exc:
                if exc.code == "channel_not_found":
                    return None
                raise
            return found if isinstance(found, dict) else None
        cursor: str | None = None
        while True:
            page = self._request(
                "Slack conversations.list", self._api(functools.partial(
                    web.conversations_list, types="public_channel,private_channel", limit=200,
                    cursor=cursor)),
                safe=True,
            )
            for item in page.get("channels") or []:
                if isinstance(item, dict) and item.get("name") == ref:
                    return item
            meta = page.get("response_metadata") or {}
            cursor = meta.get("next_cursor") if isinstance(meta, dict) else None
            if not cursor:
                return None

    # -- requests --------------------------------------------------------------------------

    def _web_client(self, channel: str) -> WebClient:
        if self._web is None:
            raise ConfigError(
                f"slack.token: needed to post to {channel} (only slack.webhook_url is set)"
            )
        return self._web

    @staticmethod
    def _api(fn: Callable[[], SlackResponse]) -> Callable[[], SlackResponse]:
        """A Web API call whose error answers come out as ``_Refused``."""

        def call() -> SlackResponse:
            try:
                return fn()
            except SlackApiError as exc:
                response = exc.response
                raise _Refused(getattr(response, "status_code", 200),
                               getattr(response, "headers", None), _api_code(response),
                               _api_reason(response)) from exc

        return call

    def _request(
        self, what: str, fn: Callable[[], T], *, safe: bool, unknown: str = _MAYBE_POSTED
    ) -> T:
        """Run one HTTP call with its deadline, retrying only what is safe to retry.

        ``safe``: the call may be repeated (a read). Otherwise it is repeated only when it
        certainly did not reach Slack (429, connection refused); when it may have,
        ``OutcomeUnknown`` (with ``unknown`` as the explanation).
        """
        attempt = 0
        while True:
            try:
                return self._bounded(fn)
            except _Refused as exc:
                reason = exc.reason
                if exc.status == 429:
                    wait = retry_after(exc.headers)
                    if wait > self._retry_after_cap:
                        raise DeliveryError(
                            f"{what} failed: rate limited for {wait:g}s, longer than this run "
                            f"waits ({self._retry_after_cap:g}s); left for the next run"
                        ) from exc
                elif exc.status >= 500:
                    if not safe:
                        raise OutcomeUnknown(f"{what}: {reason}; {unknown}") from exc
                    wait = self._backoff_delay(attempt)
                else:
                    raise _Answered(f"{what} failed: {reason}", exc.code) from exc
            except _DeadlineExceeded as exc:
                reason = f"no answer within {self._deadline:g}s"
                if not safe:
                    raise OutcomeUnknown(f"{what}: {reason}; {unknown}") from exc
                wait = self._backoff_delay(attempt)
            except _NetworkErrors as exc:
                reason = self._exc_reason(exc)
                if not safe and not _unsent(exc):
                    raise OutcomeUnknown(f"{what}: {reason}; {unknown}") from exc
                wait = self._backoff_delay(attempt)
            if attempt >= self._max_retries:
                raise DeliveryError(f"{what} failed: {reason}")
            attempt += 1
            LOG.warning("%s: %s, retrying (%d of %d)", what, reason, attempt, self._max_retries)
            self._sleep(wait)

    def _backoff_delay(self, attempt: int) -> float:
        """backoff x 2^attempt, plus up to as much again of jitter."""
        base = self._backoff * 2**attempt
        return base + random.uniform(0, base)

    def _bounded(self, fn: Callable[[], T]) -> T:
        """``fn()`` with a total deadline (the SDK's timeout is per socket read).

        The call runs in a helper thread; past the deadline it is abandoned (its socket
        times out on its own) and ``_DeadlineExceeded`` is raised.
        """
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = exc

        worker = threading.Thread(target=run, name="slack-call", daemon=True)
        worker.start()
        worker.join(self._deadline)
        if worker.is_alive():
            raise _DeadlineExceeded
        if "error" in box:
            raise box["error"]
        value: T = box["value"]
        return value

    def _exc_reason(self, exc: BaseException) -> str:
        """One line for a transport-level failure, with any secret taken out."""
        if isinstance(exc, URLError) and isinstance(exc.reason, BaseException):
            exc = exc.reason
        if isinstance(exc, TimeoutError):
            return f"timed out after {self._timeout:g}s"
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

