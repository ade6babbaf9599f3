"""What the daemon runs when `slack.app_token` is set: the Socket Mode listener and the
handlers behind it (slash command, alert buttons, App Home).

Each envelope is handled on a worker thread with its own App (so its own database
connection); the daemon's jobs keep theirs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from bot.errors import BotError
from bot.interactive.actions import Gate, Press, edited_blocks, parse_press, perform, record
from bot.interactive.commands import Answerer, parse
from bot.interactive.home import home_blocks
from bot.interactive.slack_api import SlackApi
from bot.interactive.socket import Envelope, SocketListener
from bot.models import ApiKey

if TYPE_CHECKING:
    from bot.app import App

log = logging.getLogger(__name__)

KEYS_FRESH = dt.timedelta(minutes=5)  # today-so-far older than this is read from /keys again
_USER = re.compile(r"[UW][A-Z0-9]{2,}")


class Interactive:
    """The interactive bot for one daemon: start it, stop it, refresh the App Home."""

    def __init__(self, app: App, *, ping_interval: float = 10.0, workers: int = 4) -> None:
        from bot.render.messages import Renderer

        slack = app.config.slack
        if not (slack.app_token and slack.token):
            raise BotError("the interactive bot needs slack.app_token and slack.token")
        self.app = app
        self.api = SlackApi(slack.token, slack.base_url, app_token=slack.app_token)
        self.renderer = Renderer(app.config.templates_dir)
        self.gate = Gate(self.api, app.config, app.now)
        self.listener = SocketListener(slack.app_token, self.api.socket_client_web(),
                                       self.handle, workers=workers, ping_interval=ping_interval)
        self._keys: tuple[dt.datetime, list[ApiKey]] | None = None
        self._keys_lock = threading.Lock()

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.listener.start()

    def ensure_started(self) -> None:
        """Connect unless connected (the daemon calls this every minute until it works)."""
        if not self.listener.started:
            self.listener.start()

    def stop(self) -> None:
        self.listener.stop()

    @contextmanager
    def worker_app(self) -> Iterator[App]:
        """An App for one worker thread: the same config and clock, its own database
        connection (SQLite connections stay on the thread that opened them)."""
        app = dataclasses.replace(self.app, _store=None)
        try:
            yield app
        finally:
            app.close()

    # --- envelopes ---------------------------------------------------------------------------

    def handle(self, envelope: Envelope) -> None:
        if envelope.type == "slash_commands":
            self.on_command(envelope.payload)
        elif envelope.type == "interactive":
            self.on_interaction(envelope.payload)
        elif envelope.type == "events_api":
            self.on_event(envelope.payload)

    def on_command(self, payload: dict[str, Any]) -> None:
        request = parse(str(payload.get("text") or ""))
        log.info("Slack: %s asked %s %s", str(payload.get("user_id") or "?")[:16],
                 self.app.config.slack.command, request.verb)
        with self.worker_app() as app:
            try:
                msg = Answerer(app, self.renderer, live_keys=self.live_keys).answer(request)
            except BotError as exc:
                log.warning("Slack: could not answer %s: %s", request.verb, exc)
                msg = self.renderer.slack("answer_error", reason=str(exc),
                                          command=app.config.slack.command)
        self.api.respond(str(payload.get("response_url") or ""), msg)

    def live_keys(self) -> tuple[dt.datetime, list[ApiKey]] | None:
        """The keys as OpenRouter has them now (for today so far), read at most every few
        minutes; None when OpenRouter cannot be reached (the last sync's keys are used)."""
        now = self.app.now()
        with self._keys_lock:
            if self._keys is not None and now - self._keys[0] < KEYS_FRESH:
                return self._keys
        try:
            with self.app.client(max_attempts=2) as client:
                keys = client.keys()
        except BotError as exc:
            log.warning("Slack: today so far from the last sync (OpenRouter: %s)", exc)
            return None
        with self._keys_lock:
            self._keys = (now, keys)
        return self._keys

    def on_interaction(self, payload: dict[str, Any]) -> None:
        press = parse_press(payload)
        if press is None:  # a link button, or something this bot did not send
            return
        with self.worker_app() as app:
            now = app.now()
            store = app.store()
            why = self.gate.check(press)
            if why:
                record(store, press, now, "refused: " + why)
                self.reply(app, press, "refused", why)
                return
            outcome = perform(store, app.config, press, now)
            record(store, press, now, outcome)
            if outcome != "done":
                self.reply(app, press, outcome)
                return
            self.show(app, press)
            self.refresh_homes(app)

    def reply(self, app: App, press: Press, outcome: str, why: str = "") -> None:
        """Tell the person who pressed (only them) why nothing happened."""
        msg = self.renderer.slack("action_reply", outcome=outcome, why=why, action=press.verb)
        if press.response_url:
            self.api.respond(press.response_url, msg)
        elif press.where == "home":
            self.publish_home(app, press.user, notice=msg.blocks[0]["text"]["text"])

    def show(self, app: App, press: Press) -> None:
        """Make the pressed message say what was done: the alert message is edited for
        everyone; an ephemeral answer is redrawn (the App Home is refreshed by the caller)."""
        if press.where == "message" and press.channel and press.message_ts:
            store = app.store()
            sil = store.silences().get((press.rule_id, press.subject))
            state = next((s for s in store.alert_all()
                          if (s.rule_id, s.subject) == (press.rule_id, press.subject)), None)
            firing = state is not None and state.status == "firing"
            acked = sil is not None and state is not None and sil.acked_since == state.since
            snoozed = sil is not None and sil.snoozed_until is not None \
                and app.now() < sil.snoozed_until
            update = self.renderer.slack(
                "alert_update", rule_id=press.rule_id, subject=press.subject, firing=firing,
                acked_by=sil.acked_by if sil and acked else "",
                acked_at=sil.acked_at if sil and acked else None,
                snoozed_by=sil.snoozed_by if sil and snoozed else "",
                snoozed_until=sil.snoozed_until if sil and snoozed else None)
            self.api.update(press.channel, press.message_ts, press.text or update.text,
                            edited_blocks(press.blocks, update.blocks))
        elif press.where == "ephemeral" and press.response_url:
            answer = Answerer(app, self.renderer).alerts(app.now())
            self.api.respond(press.response_url, answer, replace_original=True)

    def on_event(self, payload: dict[str, Any]) -> None:
        event = payload.get("event") or {}
        user = str(event.get("user") or "")
        if event.get("type") != "app_home_opened" or event.get("tab", "home") != "home":
            return
        if not _USER.fullmatch(user):
            return
        with self.worker_app() as app:
            app.store().home_user_add(user, app.now())
            self.publish_home(app, user)

    # --- the App Home ------------------------------------------------------------------------

    def publish_home(self, app: App, user: str, notice: str = "") -> None:
        self.api.publish_home(user, home_blocks(app, self.renderer, notice))

    def refresh_homes(self, app: App) -> int:
        """Publish the App Home again for everyone who opened it; returns how many."""
        users = app.store().home_users()
        if not users:
            return 0
        blocks = home_blocks(app, self.renderer)
        for user in users:
            try:
                self.api.publish_home(user, blocks)
            except BotError as exc:
                log.warning("Slack: App Home for %s not refreshed: %s", user, exc)
        return len(users)

    def after_sync(self) -> str:
        """Called by the daemon after each sync; never raises (the sync itself went well)."""
        try:
            with self.worker_app() as app:
                n = self.refresh_homes(app)
        except BotError as exc:
            log.warning("Slack: App Home not refreshed: %s", exc)
            return "(App Home not refreshed)"
        return f"(App Home refreshed for {n} user(s))" if n else ""
