"""Jinja rendering of digests, reports and alerts into Slack and e-mail messages (sends nothing).

Templates live in ``templates/`` (the package ``bot.templates``); a user folder given to
:class:`Renderer` overrides any bundled template of the same name.

Slack: ``slack/<name>.json.j2`` renders to a JSON document ``{"blocks": [...]}`` (by convention
every block after the first is written with a leading comma, so optional blocks need no
trailing-comma juggling) and ``slack/<name>.txt.j2`` to the short plain-text fallback shown in
notifications. JSON templates are not autoescaped: every dynamic string goes through ``tojson``,
and every untrusted string (model, provider and key names, anything from the API) through
``mrkdwn`` first. The blocks are then cut to Slack's limits by :func:`fit_slack_limits`.

Alerts: the words of every rule kind (title, figure, threshold, summary, what to do) are the
macros of ``_alert_words.j2``; :meth:`Renderer.alert_words` turns an observation into those
words as plain text, and the alert templates escape them for their channel like any name.

E-mail: ``email/<name>.html.j2`` (autoescaped; CSS written in a ``<style>`` block is inlined
with css_inline) and ``email/<name>.txt.j2`` (plain text).

Charts: with matplotlib installed (the ``charts`` extra) the e-mails carry a PNG chart by
Content-ID and ``slack.charts`` uploads one into the digest's thread; without it the e-mails
draw the bars with HTML tables (``chart_image`` is false in their context) and Slack keeps the
text chart of its message. The subject is the text of the
rendered HTML's ``<title>``, which templates set with ``{% block subject %}`` of
``email/_base.html.j2``; when that is empty, the ``subject`` variable passed to :meth:`email`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import html
import io
import json
import logging
import re
import traceback
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup

from bot.compute.aggregate import Group
from bot.compute.digest import DailyDigest, Line, Ranking, WeeklyReport
from bot.errors import ConfigError
from bot.models import MailMessage, SlackMessage
from bot.render import fmt
from bot.render.chart import chart_png, png_available
from bot.render.text import write_csv
from bot.text import strip_controls

if TYPE_CHECKING:
    from bot.compute.alert_rules import Observation

log = logging.getLogger(__name__)

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_FIELD_TEXT = 2000
MAX_FIELDS = 10
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_CONTEXT_TEXT = 3000
# Characters a ranked list may take in one Slack section before the rest becomes "and N more".
SLACK_LIST_BUDGET = 2600
ELLIPSIS = "…"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")
# Slack mrkdwn's formatting marks where they could open or close *bold*, _italic_, ~strike~
# (not between two letters or digits: `ci_runner` is left alone), and every backtick; Slack has
# no escape for them, so they become look-alikes that format nothing.
_FORMAT_MARK = re.compile(r"`|(?<![^\W_])[*_~]|[*_~](?![^\W_])")
_LOOKALIKE = {"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb"}
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def bundled_templates_dir() -> Path:
    """The folder of templates shipped with the package."""
    return Path(str(files("bot.templates")))


def mrkdwn_escape(text: str) -> str:
    """Escape Slack's control characters so `<!channel>`, `<@U1>` and `<url|label>` stay text,
    and turn formatting marks into look-alikes so `*bold*` or a backtick in a name formats
    nothing (∗ ˍ ∼ ˋ)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _FORMAT_MARK.sub(lambda m: _LOOKALIKE[m.group()], text)


def _finalize(value: Any) -> Any:
    """Every `{{ ... }}` of every template: text loses terminal control characters (an API
    name cannot recolour or clear the terminal that shows a digest or an e-mail's text)."""
    if isinstance(value, Markup):
        return Markup(strip_controls(str(value)))
    if isinstance(value, str):
        return strip_controls(value)
    return value


def one_line(text: Any) -> str:
    """The value as a single line: newlines and other control characters become spaces."""
    return _CONTROL.sub(" ", str(text))


def _mrkdwn(value: Any) -> str:
    """The `mrkdwn` filter: an untrusted string made safe to put inside Slack mrkdwn."""
    return mrkdwn_escape(one_line(value))


def _tojson(value: Any) -> str:
    """The `tojson` filter: a JSON literal (Decimals as strings), safe inside a JSON template."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _as_date(value: dt.date | str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def _day(value: dt.date | str) -> str:
    return fmt.day(_as_date(value))


def _short_day(value: dt.date | str) -> str:
    """`Tue 11-24`: a day in a chart line."""
    d = _as_date(value)
    return f"{d:%a %m-%d}"


def _bar(value: Decimal, peak: Decimal, width: int = 20) -> str:
    return fmt.bar(value, peak, width)


def _bar_percent(value: Decimal, peak: Decimal) -> int:
    """`{{ cost | bar_percent(peak) }}`: an HTML bar's width in percent (0 for nothing)."""
    return fmt.bar_length(value, peak, 100)


def _peak(series: list[Group]) -> Decimal:
    return max((g.figures.cost for g in series), default=Decimal(0))


def _month(value: dt.date) -> str:
    return f"{value:%B %Y}"


@dataclass(frozen=True)
class Shown:
    """The names that fit in a Slack section and how many were left out."""

    names: list[str]
    more: int = 0


def _fit_lines(value: Ranking | list[Line], budget: int = SLACK_LIST_BUDGET) -> Ranking:
    """A ranking cut to what fits in one Slack section; the rest is added to `more`."""
    ranking = value if isinstance(value, Ranking) else Ranking(list(value))
    used = 0
    kept: list[Line] = []
    for line in ranking.lines:
        used += len(_mrkdwn(line.name)) + 60  # name plus bullet, amounts, change and BYOK
        if used > budget:
            break
        kept.append(line)
    return Ranking(kept, ranking.more + len(ranking.lines) - len(kept))


def _fit_names(names: list[str], budget: int = SLACK_LIST_BUDGET) -> Shown:
    """Names (e.g. new models) cut to what fits in one Slack section."""
    used = 0
    kept: list[str] = []
    for name in names:
        used += len(_mrkdwn(name)) + 4
        if used > budget:
            break
        kept.append(name)
    return Shown(kept, len(names) - len(kept))


FILTERS: dict[str, Callable[..., Any]] = {
    "money": fmt.money,
    "signed_money": fmt.signed_money,
    "amount": fmt.amount,
    "tokens": fmt.tokens,
    "capitalize_first": fmt.first_upper,
    "duration": fmt.duration,
    "number_1": fmt.number_1,
    "change": fmt.change,
    "day": _day,
    "short_day": _short_day,
    "month": _month,
    "as_of": fmt.as_of,
    "days_label": fmt.days_label,
    "count": fmt.count,
    "percent": fmt.percent,
    "number": fmt.number,
    "bar": _bar,
    "bar_percent": _bar_percent,
    "peak": _peak,
    "trend": fmt.trend,
    "mrkdwn": _mrkdwn,
    "one_line": one_line,
    "tojson": _tojson,
    "fit": _fit_lines,
    "fit_names": _fit_names,
}


# --- Slack Block Kit limits -------------------------------------------------------------------


def _cut(text: str, limit: int) -> str:
    """`text` shortened to at most `limit` characters, ending with "…" when cut.

    Prefers a line boundary, never leaves half an HTML entity and closes an open code block.
    """
    if len(text) <= limit:
        return text
    room = limit - len(ELLIPSIS) - 4  # space for a closing "\n```"
    head = text[:room]
    newline = head.rfind("\n")
    if newline >= room // 2:
        head = head[: newline + 1]
    head = re.sub(r"&[a-zA-Z#0-9]*$", "", head)
    if head.count("```") % 2:
        return head + ELLIPSIS + "\n```"
    return head + ELLIPSIS


def _fit_text_object(obj: Any, limit: int) -> Any:
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return {**obj, "text": _cut(obj["text"], limit)}
    return obj


def _more_block(count: int) -> dict[str, Any]:
    noun = "part" if count == 1 else "parts"
    return {
        "type": "context",
        "elements": [
            {
                "type": "mrkdwn",
                "text": f"_and {count} more {noun} not shown (Slack message limit)_",
            }
        ],
    }


def _fit_block(block: dict[str, Any]) -> dict[str, Any]:
    kind = block.get("type")
    out = dict(block)
    if kind == "header":
        out["text"] = _fit_text_object(block.get("text"), MAX_HEADER_TEXT)
    elif kind == "section":
        if "text" in block:
            out["text"] = _fit_text_object(block["text"], MAX_SECTION_TEXT)
        if isinstance(block.get("fields"), list):
            fields = [_fit_text_object(f, MAX_FIELD_TEXT) for f in block["fields"]]
            if len(fields) > MAX_FIELDS:
                extra = len(fields) - MAX_FIELDS + 1
                fields = [
                    *fields[: MAX_FIELDS - 1],
                    {"type": "mrkdwn", "text": f"_and {extra} more_"},
                ]
            out["fields"] = fields
    elif kind == "context" and isinstance(block.get("elements"), list):
        elements = [_fit_text_object(e, MAX_CONTEXT_TEXT) for e in block["elements"]]
        if len(elements) > MAX_CONTEXT_ELEMENTS:
            extra = len(elements) - MAX_CONTEXT_ELEMENTS + 1
            elements = [
                *elements[: MAX_CONTEXT_ELEMENTS - 1],
                {"type": "mrkdwn", "text": f"_and {extra} more_"},
            ]
        out["elements"] = elements
    return out


def fit_slack_limits(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Blocks cut to Slack's limits: at most 50 blocks, 3000 characters a section text, 2000 a
    field (10 fields), 150 a header, 10 context elements.

    Over-long texts end with "…"; surplus blocks are dropped and replaced by a final "and N more"
    context block (a trailing context block, the as-of line, is kept after it).
    """
    fitted = [_fit_block(b) for b in blocks]
    if len(fitted) <= MAX_BLOCKS:
        return fitted
    tail = [fitted[-1]] if fitted[-1].get("type") == "context" else []
    keep = MAX_BLOCKS - 1 - len(tail)
    dropped = len(fitted) - keep - len(tail)
    return [*fitted[:keep], _more_block(dropped), *tail]


# --- the renderer -----------------------------------------------------------------------------


def _csv_bytes(report: WeeklyReport) -> bytes:
    buf = io.StringIO()
    write_csv(report.rows, buf)
    return buf.getvalue().encode("utf-8")


def _inline_css(document: str) -> str:
    import css_inline

    return str(css_inline.inline(document, keep_at_rules=True, load_remote_stylesheets=False))


@dataclass(frozen=True)
class AlertWords:
    """One alert observation in words (plain text: each template escapes it for its channel)."""

    kind: str  # the kind of alert, e.g. "Low credits" (nothing untrusted in it)
    title: str  # what it is about, e.g. "Key limit: prod"
    subject: str  # the subject as people call it: "credits", a key's name, a model
    value: str  # the figure now
    threshold: str  # what it is held against ("" when the subject went away)
    summary: str  # one line: what crossed
    advice: str  # what to do
    link: str  # where to act (a trusted OpenRouter URL), or ""
    note: str  # why it cleared when not by its value, or ""
    why: str = ""  # top contributors and volume vs price, one fact a line; "" when unknown


ALERT_WORDS = "_alert_words.j2"

# What a template can raise while it loads or renders: Jinja's own errors, and a filter or an
# operation given the wrong kind of value (`{{ "x" | money }}`, `{{ 1 / 0 }}`).
_TEMPLATE_ERRORS = (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError)


def _template_error(name: str, exc: Exception) -> ConfigError:
    """A template that failed, as one line naming its file (and line, when known)."""
    where, line = name, None
    if isinstance(exc, jinja2.TemplateSyntaxError):
        where, line = exc.filename or exc.name or name, exc.lineno
    else:  # Jinja rewrites tracebacks so that template frames carry the template's file
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            filename = frame.f_code.co_filename
            if filename.endswith(".j2"):
                where, line = filename, lineno
    message = exc.message if isinstance(exc, jinja2.TemplateError) else str(exc)
    detail = one_line(message or type(exc).__name__)
    return ConfigError(f"template {where}{f':{line}' if line else ''}: {detail}")


class _CompiledTemplates(jinja2.FileSystemBytecodeCache):
    """Compiled templates kept between runs, so that a CLI run or a daemon's start compiles
    only the templates that changed: Jinja keys each by its file and checks its source, and
    keeps them in a folder of the temp directory private to this user. Jinja does not check
    the options the code was compiled with, so the file names carry a fingerprint of this
    module (where the options are set) and of Jinja's version. A cache that cannot be read
    or written is passed over: the template is compiled as if there were none."""

    def __init__(self) -> None:
        fingerprint = hashlib.sha256(Path(__file__).read_bytes()
                                     + jinja2.__version__.encode()).hexdigest()[:16]
        super().__init__(pattern=f"openrouter-usage-{fingerprint}-%s.cache")

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except OSError:
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    try:
        return _CompiledTemplates()
    except (OSError, RuntimeError):  # no temp folder, or one another user owns
        return None


@functools.lru_cache(maxsize=8)
def _environment(templates_dir: str | None) -> jinja2.Environment:
    """The Jinja environment for `templates_dir` (before the bundled templates), one per
    process: it keeps compiled templates, and reloads a template whose file changed."""
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        loaders.append(jinja2.FileSystemLoader(templates_dir))
    loaders.append(jinja2.FileSystemLoader(str(bundled_templates_dir())))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(["html", "html.j2"], default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        finalize=_finalize,
        bytecode_cache=_bytecode_cache(),
    )
    env.filters.update(FILTERS)
    env.globals["alert_words"] = functools.partial(_alert_words, env)
    return env


def _template(env: jinja2.Environment, name: str) -> jinja2.Template:
    """Template `name`; one that cannot be loaded is a ConfigError naming it."""
    try:
        return env.get_template(name)
    except _TEMPLATE_ERRORS as exc:
        raise _template_error(name, exc) from exc


def _alert_words(env: jinja2.Environment, obs: Observation) -> AlertWords:
    """The words of one alert observation, from the macros of `_alert_words.j2`."""
    template = _template(env, ALERT_WORDS)
    try:
        macros = template.module
        # called from Python, the macros return plain str (never Markup): callers escape
        # them. A macro with a default (added later) may be missing from a user's copy.
        return AlertWords(**{f.name: str(getattr(macros, f.name)(obs)).strip()
                             for f in fields(AlertWords)
                             if f.default is MISSING or hasattr(macros, f.name)})
    except (*_TEMPLATE_ERRORS, AttributeError) as exc:  # AttributeError: a macro is missing
        raise _template_error(template.filename or ALERT_WORDS, exc) from exc


class Renderer:
    """Renders digests, reports and alerts from Jinja templates into message values."""

    def __init__(
        self, templates_dir: Path | None = None, *, png_charts: bool | None = None
    ) -> None:
        """`png_charts`: draw PNG charts (None: when matplotlib is installed)."""
        self._png_charts = png_charts
        if templates_dir is not None and not templates_dir.is_dir():
            raise ConfigError(f"templates_dir: {templates_dir} is not a folder")
        self.env = _environment(str(templates_dir) if templates_dir is not None else None)

    # generic

    def _template(self, name: str) -> jinja2.Template:
        return _template(self.env, name)

    def _render(self, name: str, context: dict[str, Any]) -> str:
        """Template `name` rendered; any failure is a ConfigError naming the template file."""
        template = self._template(name)
        try:
            return template.render(**context)
        except _TEMPLATE_ERRORS as exc:
            raise _template_error(template.filename or name, exc) from exc

    def slack(self, name: str, /, **context: Any) -> SlackMessage:
        """`slack/<name>.json.j2` as blocks (cut to Slack's limits) + `slack/<name>.txt.j2`."""
        raw = self._render(f"slack/{name}.json.j2", context)
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            where = self._template(f"slack/{name}.json.j2").filename
            raise ConfigError(f"template {where}: did not render valid JSON: {exc}") from exc
        blocks = doc["blocks"] if isinstance(doc, dict) else doc
        text = self._render(f"slack/{name}.txt.j2", context).strip()
        return SlackMessage(text=text, blocks=fit_slack_limits(blocks))

    def email(self, name: str, /, **context: Any) -> MailMessage:
        """`email/<name>.html.j2` (CSS inlined) + `email/<name>.txt.j2`; subject from <title>."""
        document = self._render(f"email/{name}.html.j2", context)
        match = _TITLE.search(document)
        subject = " ".join(html.unescape(match.group(1)).split()) if match else ""
        if not subject:
            subject = one_line(context.get("subject", "")).strip()
        if not subject:
            where = self._template(f"email/{name}.html.j2").filename
            raise ConfigError(f"template {where}: sets no <title> and no subject was given")
        text = self._render(f"email/{name}.txt.j2", context).strip() + "\n"
        return MailMessage(subject=subject, text=text, html=_inline_css(document))

    def alert_words(self, obs: Observation) -> AlertWords:
        """The words of one alert observation, from the macros of `_alert_words.j2`."""
        return _alert_words(self.env, obs)

    # digests and reports

    @property
    def png_charts(self) -> bool:
        """Whether charts are drawn as PNG (matplotlib, checked on first use)."""
        if self._png_charts is None:
            self._png_charts = png_available()
        return self._png_charts

    def _png(self, series: list[Group], title: str, highlight_from: dt.date) -> bytes | None:
        return chart_png(series, title=title, highlight_from=highlight_from) \
            if self.png_charts else None

    def _slack_chart(
        self, msg: SlackMessage, series: list[Group], title: str, highlight_from: dt.date
    ) -> SlackMessage:
        if not self.png_charts:
            log.warning("slack.charts is on but matplotlib is not installed "
                        "(pip install 'openrouter-usage[charts]'); the message keeps its "
                        "text chart")
            return msg
        msg.chart_title = title
        msg.chart_png = chart_png(series, title=title, highlight_from=highlight_from)
        return msg

    def daily_slack(self, d: DailyDigest, *, charts: bool = False) -> SlackMessage:
        """The digest's blocks; with `charts`, also a PNG for its thread (needs matplotlib)."""
        msg = self.slack("daily", d=d)
        if not charts:
            return msg
        title = f"OpenRouter daily spend, 14 days to {fmt.day(d.day)} (UTC)"
        return self._slack_chart(msg, d.chart, title, d.day)

    def weekly_slack(self, w: WeeklyReport, *, charts: bool = False) -> SlackMessage:
        msg = self.slack("weekly", w=w)
        if not charts:
            return msg
        title = f"OpenRouter daily spend (UTC), week {w.start} to {w.end} highlighted"
        return self._slack_chart(msg, w.chart, title, w.start)

    def daily_email(self, d: DailyDigest) -> MailMessage:
        """The digest e-mail; its chart is a PNG by Content-ID, else HTML-table bars."""
        png = self._png(d.chart, f"Last 14 UTC days, {fmt.day(d.day)} highlighted", d.day)
        msg = self.email("daily", d=d, chart_image=png is not None)
        if png is not None:
            msg.inline_images["chart"] = png
        return msg

    def weekly_email(self, w: WeeklyReport) -> MailMessage:
        """The weekly e-mail with the week's CSV; the chart as in :meth:`daily_email`."""
        png = self._png(
            w.chart, f"Last 14 UTC days, this week ({w.start} to {w.end}) highlighted", w.start
        )
        msg = self.email("weekly", w=w, chart_image=png is not None)
        if png is not None:
            msg.inline_images["chart"] = png
        msg.attachments.append(
            (f"openrouter-usage-{w.start}-to-{w.end}.csv", "text/csv", _csv_bytes(w))
        )
        return msg


def terminal_text(msg: SlackMessage) -> SlackMessage:
    """The terminal form of a Slack message (the `stdout` destination): text only."""
    return SlackMessage(text=blocks_to_text(msg.blocks) if msg.blocks else msg.text)


def blocks_to_text(blocks: list[dict[str, Any]]) -> str:
    """A terminal rendering of Block Kit blocks (for `demo` and reading dry runs)."""
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            title = block["text"]["text"]
            lines += [title, "=" * len(title)]
        elif kind == "section":
            if "text" in block:
                lines.append(html.unescape(block["text"]["text"]))
            for item in block.get("fields", []):
                lines.append(html.unescape(item["text"]).replace("\n", ": ", 1))
            lines.append("")
        elif kind == "context":
            lines.append(" ".join(html.unescape(e.get("text", "")) for e in block["elements"]))
        elif kind == "divider":
            lines.append("-" * 40)
    return "\n".join(lines).rstrip() + "\n"
