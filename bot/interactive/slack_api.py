"""The Slack Web API calls of the interactive bot: answers through `response_url`, message edits,
the App Home, channel and user-group members, and the app token's check.

Every call here is safe to repeat (an edit, a view, a read), so connection errors and rate
limits are retried; an answer posted to a `response_url` is not retried. Every failure is one
``DeliveryError`` line with no token in it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import partial
from http.client import HTTPException
from typing import Any, TypeVar

from slack_sdk import WebClient, WebhookClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

from bot.errors import DeliveryError
from bot.models import SlackMessage
from bot.text import one_line, redact

log = logging.getLogger(__name__)
# slack-sdk logs request details at DEBUG and retried errors at ERROR; this module says what
# matters itself
_SDK_LOG = logging.getLogger(__name__ + ".sdk")
_SDK_LOG.setLevel(logging.CRITICAL)

T = TypeVar("T")
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{6,}")
_NETWORK = (SlackClientError, OSError, HTTPException)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        data = exc.response.data if isinstance(exc.response.data, dict) else {}
        code = data.get("error")
        status = exc.response.status_code
        parts = [f"HTTP {status}"] if status != 200 else []
        if isinstance(code, str):
            parts.append(code)
        if code == "missing_scope" and isinstance(data.get("needed"), str):
            parts.append(f"(needs {data['needed']})")
        return " ".join(parts) or "unexpected answer"
    return one_line(redact(str(exc) or type(exc).__name__), 200)


class SlackApi:
    """Web API calls with the bot token; `apps.connections.open` with the app token."""

    def __init__(self, token: str, base_url: str, *, app_token: str | None = None,
                 timeout: int = 10) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._app_token = app_token
        self._timeout = timeout
        self.web = WebClient(token=token, base_url=self.base_url, timeout=timeout,
                             logger=_SDK_LOG, retry_handlers=self._retries())

    @staticmethod
    def _retries() -> list[Any]:
        return [RateLimitErrorRetryHandler(max_retry_count=2),
                ConnectionErrorRetryHandler(max_retry_count=2)]

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except _NETWORK as exc:
            raise DeliveryError(f"Slack {what} failed: {_reason(exc)}") from exc

    # --- the app token ---------------------------------------------------------------------

    def socket_client_web(self) -> WebClient:
        """A Web API client for the Socket Mode connection (it sends the app token itself)."""
        return WebClient(base_url=self.base_url, timeout=self._timeout, logger=_SDK_LOG,
                         retry_handlers=self._retries())

    def check_app_token(self) -> str:
        """Ask Slack for a Socket Mode URL with the app token (`apps.connections.open`)."""
        if not self._app_token:
            raise DeliveryError("no app token")
        web = self.socket_client_web()
        token = self._app_token
        answer = self._call("apps.connections.open",
                            lambda: web.apps_connections_open(app_token=token))
        if not str(answer.get("url") or "").startswith(("wss://", "ws://")):
            raise DeliveryError("Slack apps.connections.open failed: no WebSocket URL in the "
                                "answer")
        return "app token works: Socket Mode can connect"

    # --- answers, edits, views -------------------------------------------------------------

    def respond(self, response_url: str, msg: SlackMessage, *, replace_original: bool = False
                ) -> None:
        """Answer a slash command or a button press, visible only to the person who asked."""
        hook = WebhookClient(response_url, timeout=self._timeout, logger=_SDK_LOG)
        try:
            response = hook.send(text=msg.text or "OpenRouter usage", blocks=msg.blocks or None,
                                 response_type="ephemeral", replace_original=replace_original)
        except _NETWORK as exc:
            raise DeliveryError(f"Slack response_url failed: {_reason(exc)}") from exc
        if response.status_code != 200:
            raise DeliveryError(f"Slack response_url failed: HTTP {response.status_code}")

    def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> None:
        self._call("chat.update", lambda: self.web.chat_update(
            channel=channel, ts=ts, text=text, blocks=blocks))

    def publish_home(self, user: str, blocks: list[dict[str, Any]]) -> None:
        view = {"type": "home", "blocks": blocks}
        self._call("views.publish", lambda: self.web.views_publish(user_id=user, view=view))

    # --- who may act ----------------------------------------------------------------------

    def members(self, channel: str) -> set[str]:
        """The users in a channel (conversations.members, every page)."""
        users: set[str] = set()
        cursor: str | None = None
        while True:
            page = self._call("conversations.members", partial(
                self.web.conversations_members, channel=channel, limit=500, cursor=cursor))
            users.update(str(u) for u in page.get("members") or [])
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                return users

    def group_members(self, group: str) -> set[str]:
        """The users of a user group (usergroups.users.list)."""
        answer = self._call("usergroups.users.list",
                            lambda: self.web.usergroups_users_list(usergroup=group))
        return {str(u) for u in answer.get("users") or []}

    def channel_id(self, ref: str) -> str | None:
        """A channel's ID from `#name` or an ID (conversations.list, every page)."""
        ref = ref.lstrip("#")
        if _CHANNEL_ID.fullmatch(ref):
            return ref
        cursor: str | None = None
        while True:
            page = self._call("conversations.list", partial(
                self.web.conversations_list, types="public_channel,private_channel", limit=200,
                cursor=cursor))
            for item in page.get("channels") or []:
                if isinstance(item, dict) and item.get("name") == ref:
                    return str(item.get("id"))
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                return None
