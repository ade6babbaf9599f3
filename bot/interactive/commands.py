"""The slash command: parse its text once into a Request, then build the answer from the
history database with the digests' compute and templates, as an ephemeral Block Kit message.

Unknown input gets the help; a name that matches several things lists them; nothing here
raises for what a person typed.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.compute import aggregate
from bot.compute.aggregate import DAY
from bot.compute.digest import DailyDigest, WeeklyReport, balance, build_weekly, today_so_far
from bot.interactive import answers
from bot.interactive.match import match
from bot.models import ActivityRow, ApiKey, SlackMessage, Workspace, key_labels

if TYPE_CHECKING:
    from bot.app import App
    from bot.render.messages import Renderer
    from bot.store import Store

log = logging.getLogger(__name__)

VERBS = ("today", "yesterday", "week", "month", "credits", "top", "key", "model", "workspace",
         "alerts", "help")
TOP_KINDS = ("models", "keys", "providers", "workspaces")
ALIASES = {"keys": "key", "models": "model", "workspaces": "workspace", "alert": "alerts",
           "balance": "credits", "credit": "credits", "?": "help", "daily": "yesterday",
           "weekly": "week", "monthly": "month", "providers": "top providers"}
TOP = 15  # lines in a ranking
_HASH = re.compile(r"[0-9a-f]{8,64}")

# (when the keys were read, the keys) from OpenRouter now, or None when that failed
LiveKeys = Callable[[], "tuple[dt.datetime, list[ApiKey]] | None"]


@dataclass(frozen=True)
class Request:
    """What someone asked: a verb from VERBS and its argument; `unknown` is text not
    understood (answered with the help)."""

    verb: str
    arg: str = ""
    unknown: str = ""


def parse(text: str) -> Request:
    """The slash command's text as a Request; verbs match by case and unique prefix."""
    words = " ".join(text.split())
    if not words:
        return Request("help")
    head, _, rest = words.partition(" ")
    word = ALIASES.get(head.casefold(), head.casefold())
    if " " in word:  # an alias for a verb with its argument
        word, _, rest = f"{word} {rest}".partition(" ")
        rest = rest.strip()
    verbs = [v for v in VERBS if v == word] or [v for v in VERBS if v.startswith(word)]
    if len(verbs) != 1:
        return Request("help", unknown=words)
    verb = verbs[0]
    if verb == "top":
        kind = rest.casefold() or "models"
        kinds = [k for k in TOP_KINDS if k.startswith(kind) or k == kind + "s"]
        if len(kinds) != 1:
            return Request("help", unknown=words)
        return Request("top", kinds[0])
    if verb in ("key", "model", "workspace"):
        if not rest:  # "key" alone: the keys there are
            return Request("top", verb + "s")
        return Request(verb, rest)
    if rest:
        return Request("help", unknown=words)
    return Request(verb)


class Answerer:
    """Builds answers for one request at a time; `app` is this worker's own App (its own
    database connection)."""

    def __init__(self, app: App, renderer: Renderer, *, live_keys: LiveKeys | None = None
                 ) -> None:
        self.app = app
        self.renderer = renderer
        self.live_keys = live_keys
        self.command = app.config.slack.command

    @property
    def store(self) -> Store:
        return self.app.store()

    def answer(self, request: Request) -> SlackMessage:
        now = self.app.now()
        day = aggregate.latest_complete_day(now)
        verb = request.verb
        if verb == "help":
            return self.render("answer_help", unknown=request.unknown)
        if verb == "today":
            return self.today(now)
        if verb in ("yesterday", "week"):
            return self.digest(verb, day)
        if verb == "month":
            return self.month(day)
        if verb == "credits":
            return self.credits(day)
        if verb == "top":
            return self.top(request.arg, day)
        if verb == "key":
            return self.key(request.arg, day)
        if verb == "model":
            return self.model(request.arg, day)
        if verb == "workspace":
            return self.workspace(request.arg, day)
        if verb == "alerts":
            return self.alerts(now)
        raise AssertionError(f"unhandled verb {verb}")

    def render(self, name: str, /, **context: object) -> SlackMessage:
        return self.renderer.slack(name, command=self.command, **context)

    # --- reading history -------------------------------------------------------------------

    def rows(self, start: dt.date, end: dt.date) -> list[ActivityRow]:
        return self.store.activity(start, end, "")

    def key_rows(self, start: dt.date, end: dt.date, *, models: bool = False
                 ) -> dict[str, list[ActivityRow]]:
        """Each key's rows: per day, or per day and model with `models`."""
        found = (self.store.key_model_rows(start, end) if models
                 else self.store.activity(start, end, None))
        out: dict[str, list[ActivityRow]] = defaultdict(list)
        for row in found:
            out[row.key_hash].append(row)
        return dict(out)

    def workspace_names(self) -> dict[str, str]:
        return {w.id: w.display_name for w in self.store.workspaces()}

    def as_of(self) -> dt.datetime | None:
        return self.store.last_sync_at()

    # --- answers ---------------------------------------------------------------------------

    def today(self, now: dt.datetime) -> SlackMessage:
        store = self.store
        keys, read_at, live = store.keys(), self.as_of() or now, False
        fresh = self.live_keys() if self.live_keys else None
        if fresh is not None:
            read_at, keys = fresh
            live = True
        day = aggregate.latest_complete_day(now)
        latest = store.credits_at(None)
        t = answers.build_today(
            now=now, keys=keys, keys_as_of=read_at, live=live,
            names=key_labels(keys, self.workspace_names()), rows=self.rows(day - DAY * 6, day),
            credits=latest[1] if latest else None, top=TOP,
        )
        return self.render("answer_today", t=t)

    def digest(self, verb: str, day: dt.date) -> SlackMessage:
        """`yesterday` and `week`: the scheduled digest's own build and template."""
        from bot.jobs.send import build

        job = "daily" if verb == "yesterday" else "weekly"
        data = build(self.app, job, day, sync=False).data
        if isinstance(data, DailyDigest):
            msg = self.renderer.daily_slack(data)
        else:
            assert isinstance(data, WeeklyReport)
            msg = self.renderer.weekly_slack(data)
        note = self.render("answer_note", asked=verb)
        return SlackMessage(text=msg.text, blocks=msg.blocks + note.blocks)

    def month(self, day: dt.date) -> SlackMessage:
        _, prev_start, _, _ = answers.month_bounds(day)
        store = self.store
        m = answers.build_month(
            day, as_of=self.as_of() or self.app.now(), rows=self.rows(prev_start, day),
            key_rows=self.key_rows(prev_start, day), names=store.key_names(),
            top=TOP, missing=store.missing_days(prev_start, day, ""),
        )
        return self.render("answer_month", m=m)

    def credits(self, day: dt.date) -> SlackMessage:
        store = self.store
        latest = store.credits_at(None)
        bal = balance(latest[1] if latest else None, self.rows(day - DAY * 6, day), day, None)
        return self.render("answer_credits", bal=bal, today=today_so_far(store.keys()),
                           as_of=latest[0] if latest else None)

    def week_report(self, day: dt.date) -> WeeklyReport:
        return build_weekly(day, as_of=self.as_of() or self.app.now(),
                            rows=self.rows(day - DAY * 13, day),
                            key_rows=self.key_rows(day - DAY * 13, day),
                            key_names=self.store.key_names(), credits=None, top=TOP)

    def top(self, what: str, day: dt.date) -> SlackMessage:
        w = self.week_report(day)
        if what == "workspaces":
            ranking = self.workspace_ranking(day)
        else:
            ranking = {"models": w.models, "keys": w.keys, "providers": w.providers}[what]
        return self.render("answer_top", w=w, what=what, ranking=ranking)

    def key(self, query: str, day: dt.date) -> SlackMessage:
        keys = self.store.keys()
        if _HASH.fullmatch(query.casefold()):
            by_hash = [k for k in keys if k.hash.startswith(query.casefold())]
            if by_hash:
                return self._keys(by_hash, keys, day)
        found = match(query, keys, lambda k: k.display_name)
        if not found.found:
            return self.choices("key", query, found.ambiguous, found.suggestions,
                                sorted({k.display_name for k in keys})[:10])
        return self._keys(found.found, keys, day)

    def _keys(self, found: list[ApiKey], keys: list[ApiKey], day: dt.date) -> SlackMessage:
        labels = self.store.key_names()
        details = [
            answers.build_key(k, name=labels[k.hash], workspace=self.workspace_name(k),
                              rows=self.store.activity(day - DAY * 13, day, k.hash), day=day,
                              top=TOP)
            for k in sorted(found, key=lambda k: (k.disabled, labels[k.hash], k.hash))
        ]
        return self.render("answer_key", keys=details, as_of=self.as_of())

    def model(self, query: str, day: dt.date) -> SlackMessage:
        rows = self.rows(day - DAY * 29, day)
        names = sorted({r.model for r in rows})
        found = match(query, names, lambda n: n)
        if not found.found:
            return self.choices("model", query, found.ambiguous, found.suggestions,
                                [g.name for g in aggregate.by_model(rows)][:10])
        m = answers.build_model(found.found[0], rows=self.rows(day - DAY * 13, day),
                                key_rows=self.key_rows(day - DAY * 13, day, models=True),
                                names=self.store.key_names(), day=day, top=TOP)
        return self.render("answer_model", m=m, as_of=self.as_of())

    def workspace(self, query: str, day: dt.date) -> SlackMessage:
        workspaces = self.store.workspaces()
        found = match(query, workspaces, lambda w: w.display_name)
        if not found.found:
            return self.choices("workspace", query, found.ambiguous, found.suggestions,
                                [w.display_name for w in workspaces][:10])
        details = [self._workspace(ws, day) for ws in found.found]
        return self.render("answer_workspace", workspaces=details, as_of=self.as_of())

    def _workspace(self, ws: Workspace, day: dt.date) -> answers.WorkspaceDetail:
        members = {k.hash for k in self.store.keys() if k.workspace_id == ws.id}
        key_rows = {h: rs for h, rs in self.key_rows(day - DAY * 13, day, models=True).items()
                    if h in members}
        return answers.build_workspace(ws.display_name, ws.id, key_rows=key_rows,
                                       names=self.store.key_names(), key_count=len(members),
                                       day=day, top=TOP)

    def workspace_ranking(self, day: dt.date) -> answers.Ranking:
        workspace_of = {k.hash: k.workspace_id for k in self.store.keys()}
        return answers.workspace_ranking(self.key_rows(day - DAY * 13, day), workspace_of,
                                         self.workspace_names(), day, TOP)

    def workspace_name(self, key: ApiKey) -> str:
        return self.workspace_names().get(key.workspace_id, "")

    def choices(self, what: str, query: str, ambiguous: list[str], suggestions: list[str],
                known: list[str]) -> SlackMessage:
        return self.render("answer_choices", what=what, query=query, ambiguous=ambiguous,
                           suggestions=suggestions, known=known)

    def alerts(self, now: dt.datetime) -> SlackMessage:
        return self.render("answer_alerts", alerts=alert_lines(self.app, now), buttons=True)


def alert_lines(app: App, now: dt.datetime) -> list[answers.AlertLine]:
    """The firing alerts with what people did about them."""
    store = app.store()
    states = store.alert_all()
    kinds = {r.id: r.kind for r in app.config.alerts.rules}
    return answers.alert_lines(states, kinds, store.key_names(), store.silences(), now)
