"""The only module that talks to OpenRouter: read-only requests, retries, pagination, parsing.

Bodies are decoded by msgspec straight into typed structs (money as exact ``Decimal`` from the
JSON text, counts as ints even when sent as strings), then into the models. The client checks
once per run that its key is a management key (``GET /key``) before it asks for any figure.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import queue
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Annotated, Any, Literal, TypeVar

import httpx
import msgspec

from bot import __version__
from bot.config import DEFAULT_BASE_URL
from bot.deadline import deadline, deadline_transport
from bot.errors import ApiError, AuthError, ConfigError, NotManagementKey
from bot.models import (
    ZERO,
    ActivityRow,
    ApiKey,
    Credits,
    Snapshot,
    SpendBucket,
    Workspace,
    placeholder_hash,
)
from bot.text import one_line, redact

MANAGEMENT_KEYS_URL = "https://openrouter.ai/settings/management-keys"
USER_AGENT = f"openrouter-usage/{__version__}"

# /keys and /workspaces pages before we decide the server is looping
MAX_KEY_PAGES = 10_000
WORKSPACE_PAGE = 100  # the largest page /workspaces serves
# exponential backoff: first retry after ~BACKOFF_BASE seconds, never more than BACKOFF_CAP
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
MAX_MESSAGE = 200
# no account spends a trillion dollars: a larger amount is a broken answer, not money
MAX_MONEY = Decimal(10) ** 12
MAX_COUNT = 10**15

# The analytics API: 64 queries a minute, 365 days back, `provider` only in windows of 31 days.
ANALYTICS_PER_MINUTE = 64
ANALYTICS_MAX_DAYS = 365
PROVIDER_WINDOW_DAYS = 31
ANALYTICS_LIMIT = 10_000  # the documented maximum; the server may raise it for time series
# rows we aim for in one answer: its body (~300 bytes a row) is held while its rows are decoded
# and stored a chunk at a time, so an answer costs ~0.4 KB a row at its peak
ANALYTICS_TARGET_ROWS = 24_000
# ...and at most, when answers of the target size would take more queries than the rate limit
# lets us send without waiting (a year of a 560-key org: ~1.7 million rows, ~45 answers)
ANALYTICS_MAX_ROWS = 48_000
ANALYTICS_RESERVE = 4  # queries a backfill leaves free for the rest of the sync (providers)
ANALYTICS_CHUNK = 2_000  # rows of an answer decoded and handed on at a time
ANALYTICS_FIRST_DAYS = 1  # the first window, which measures how many rows a day has
# before the first answer, a day is guessed to hold this many rows per key (models per key):
# a large org's first day is then asked in key sets, not in one answer too big to hold
ANALYTICS_GUESS_PER_KEY = 10
ANALYTICS_MAX_WINDOW = 366
# total_usage (= credits_usage + byok_usage) is not asked for: its two parts say it all, and
# each figure less makes a year of answers lighter; if an answer carries it, it is used where
# credits_usage is missing
ANALYTICS_METRICS = (
    "credits_usage", "byok_usage", "request_count", "tokens_prompt", "tokens_completion",
    "reasoning_tokens",
)

DAY = dt.timedelta(days=1)
log = logging.getLogger(__name__)
T = TypeVar("T")


# -- wire structs (what the API sends; unknown fields are ignored) -------------------------------


class _Envelope(msgspec.Struct):
    data: msgspec.Raw = msgspec.Raw(b"")  # empty when the body has no `data`
    error: Any = None
    total_count: int | None = None


# a count (requests, tokens) beyond this is a broken answer, and would not fit the history
_Count = Annotated[int, msgspec.Meta(ge=-MAX_COUNT, le=MAX_COUNT)]


class _RawRow(msgspec.Struct):
    date: Any = None
    model: str | None = None
    model_permaslug: str | None = None
    endpoint_id: str | None = None
    provider_name: str | None = None
    usage: Decimal | None = None
    byok_usage_inference: Decimal | None = None
    requests: _Count | None = None
    prompt_tokens: _Count | None = None
    completion_tokens: _Count | None = None
    reasoning_tokens: _Count | None = None
    workspace_id: str | None = None


class _RawKey(msgspec.Struct):
    hash: Any = None
    name: str | None = None
    label: str | None = None
    disabled: Any = None
    limit: Decimal | None = None
    limit_remaining: Decimal | None = None
    limit_reset: str | None = None
    usage: Decimal | None = None
    usage_daily: Decimal | None = None
    usage_weekly: Decimal | None = None
    usage_monthly: Decimal | None = None
    byok_usage: Decimal | None = None
    byok_usage_daily: Decimal | None = None
    byok_usage_weekly: Decimal | None = None
    byok_usage_monthly: Decimal | None = None
    created_at: str | None = None
    expires_at: str | None = None
    workspace_id: str | None = None


class _RawCredits(msgspec.Struct):
    total_credits: Decimal | None = None
    total_usage: Decimal | None = None


class _RawWorkspace(msgspec.Struct):
    id: Any = None
    name: str | None = None
    slug: str | None = None


class _RawCurrentKey(msgspec.Struct):
    is_management_key: bool | None = None
    is_provisioning_key: bool | None = None


class _RawAnalyticsRow(msgspec.Struct, gc=False):  # no cycles: strings, numbers, None
    date__day: Any = None
    created_at__day: Any = None
    # minute and hour buckets (the burn rate's recent spend and usual hours)
    date__minute: Any = None
    created_at__minute: Any = None
    date__hour: Any = None
    created_at__hour: Any = None
    api_key_id: str | None = None
    model: str | None = None
    provider: str | None = None
    total_usage: Decimal | None = None
    credits_usage: Decimal | None = None
    byok_usage: Decimal | None = None
    request_count: _Count | None = None
    tokens_prompt: _Count | None = None
    tokens_completion: _Count | None = None
    reasoning_tokens: _Count | None = None


class _RawAnalyticsMeta(msgspec.Struct):
    truncated: bool = False
    row_count: int | None = None


class _RawAnalytics(msgspec.Struct):
    # each row stays undecoded text in the body until its chunk is asked for (`_row_chunks`):
    # ~60 bytes a row over the body, not ~600 as decoded rows
    data: list[msgspec.Raw] = []
    metadata: _RawAnalyticsMeta = msgspec.field(default_factory=_RawAnalyticsMeta)
    warnings: list[str] = []


class _AnalyticsEnvelope(msgspec.Struct):
    """The analytics answer decoded in one pass (no copy of the body's `data`)."""

    data: _RawAnalytics | None = None
    error: Any = None


@functools.cache
def _decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(kind, strict=False)


# -- parsing -------------------------------------------------------------------------------------


def _short(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` on one line, cut to this module's length for quoted API text."""
    return one_line(text, limit)


def _finite(value: Decimal | None, name: str) -> Decimal:
    if value is None:
        return ZERO
    if not value.is_finite():
        raise ApiError(f"{name} is not a finite number: {value}")
    if abs(value) > MAX_MONEY:
        raise ApiError(f"{name} is out of range: {_short(str(value), 40)}")
    return value


def _optional_finite(value: Decimal | None, name: str) -> Decimal | None:
    return None if value is None else _finite(value, name)


@functools.lru_cache(maxsize=4096)
def _parse_date(value: Any) -> dt.date:
    """A UTC day from `YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS`, or any ISO form (T, fraction, Z)."""
    if not isinstance(value, str) or len(value.strip()) < 10:
        raise ApiError(f"date is not a date: {_short(repr(value))}")
    text = value.strip()
    try:
        day = dt.date.fromisoformat(text[:10])
    except ValueError:
        raise ApiError(f"date is not a date: {_short(repr(value))}") from None
    if len(text) == 10:
        return day
    if text[10] not in " T":
        raise ApiError(f"date is not a date: {_short(repr(value))}")
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return day  # an odd time part; the day is what we need
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.UTC)
    return stamp.date()


def _day(value: Any) -> dt.date:
    try:
        return _parse_date(value)
    except TypeError:  # unhashable: a list or an object
        raise ApiError(f"date is not a date: {_short(repr(value))}") from None


def _convert(raw: Any, kind: type[T], what: str) -> T:
    """A decoded JSON object (a dict) as the struct `kind`; a readable ApiError if it is not."""
    if not isinstance(raw, dict):
        raise ApiError(f"{what} is not an object: {_short(repr(raw))}")
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ApiError(_field_error(str(exc))) from None


def _field_error(message: str) -> str:
    """msgspec's "Expected `int`, got `float` - at `$.requests`" as "requests: expected int,
    got float", and any unreadable decimal as "usage is not a number"."""
    found = re.search(r" - at `\$(?:\[\d+\])?\.?([^`]*)`$", message)
    if not found:
        return _short(message.replace("`", ""))
    where = found.group(1) or "value"
    what = message[: found.start()].replace("`", "")
    if "decimal" in what:
        return _short(f"{where} is not a number ({what[:1].lower()}{what[1:]})")
    return _short(f"{where}: {what[:1].lower()}{what[1:]}")


def parse_credits(data: Any) -> Credits:
    """`/credits`'s `data` object as Credits."""
    raw = _convert(data, _RawCredits, "credits")
    return _credits(raw)


def _credits(raw: _RawCredits) -> Credits:
    return Credits(
        total_credits=_finite(raw.total_credits, "total_credits"),
        total_usage=_finite(raw.total_usage, "total_usage"),
    )


def parse_activity_row(raw: Any, key_hash: str = "") -> ActivityRow:
    """One `/activity` row; raises ApiError when it is not an object or a field is unreadable."""
    return _row(_convert(raw, _RawRow, "activity row"), key_hash)


def _row(r: _RawRow, key_hash: str) -> ActivityRow:
    model = r.model or "unknown"
    permaslug = r.model_permaslug or model
    provider = r.provider_name or "unknown"
    return ActivityRow(
        date=_day(r.date),
        model=model,
        model_permaslug=permaslug,
        # history keys rows by (date, endpoint): never leave two endpoints both ""
        endpoint_id=r.endpoint_id or f"{permaslug}@{provider}",
        provider=provider,
        usage=_finite(r.usage, "usage"),
        byok_usage=_finite(r.byok_usage_inference, "byok_usage_inference"),
        requests=r.requests or 0,
        prompt_tokens=r.prompt_tokens or 0,
        completion_tokens=r.completion_tokens or 0,
        reasoning_tokens=r.reasoning_tokens or 0,
        key_hash=key_hash,
    )


def parse_key(raw: Any) -> ApiKey:
    """One `/keys` item; null money is 0 except `limit`/`limit_remaining` (null = no limit)."""
    return _key(_convert(raw, _RawKey, "key"))


def _key(r: _RawKey, workspace_id: str = "") -> ApiKey:
    if not isinstance(r.hash, str) or not r.hash:
        raise ApiError("key has no hash")
    return ApiKey(
        hash=r.hash,
        name=r.name or "",
        label=r.label or "",
        disabled=bool(r.disabled),
        limit=_optional_finite(r.limit, "limit"),
        limit_remaining=_optional_finite(r.limit_remaining, "limit_remaining"),
        limit_reset=r.limit_reset,
        usage=_finite(r.usage, "usage"),
        usage_daily=_finite(r.usage_daily, "usage_daily"),
        usage_weekly=_finite(r.usage_weekly, "usage_weekly"),
        usage_monthly=_finite(r.usage_monthly, "usage_monthly"),
        byok_usage=_finite(r.byok_usage, "byok_usage"),
        byok_usage_daily=_finite(r.byok_usage_daily, "byok_usage_daily"),
        byok_usage_weekly=_finite(r.byok_usage_weekly, "byok_usage_weekly"),
        byok_usage_monthly=_finite(r.byok_usage_monthly, "byok_usage_monthly"),
        created_at=r.created_at,
        expires_at=r.expires_at,
        workspace_id=r.workspace_id or workspace_id,
    )


def _workspace(r: _RawWorkspace) -> Workspace:
    if not isinstance(r.id, str) or not r.id:
        raise ApiError("workspace has no id")
    return Workspace(id=r.id, name=r.name or "", slug=r.slug or "")


def _rows_of(raws: list[_RawRow], key_hash: str) -> list[ActivityRow]:
    return [_row(r, key_hash) for r in raws]


def _workspace_rows_of(raws: list[_RawRow]) -> list[tuple[str, ActivityRow]]:
    return [(r.workspace_id or "", _row(r, "")) for r in raws]


def _keys_of(raws: list[_RawKey], workspace_id: str) -> list[ApiKey]:
    return [_key(r, workspace_id) for r in raws]


def _workspaces_of(raws: list[_RawWorkspace]) -> list[Workspace]:
    return [_workspace(r) for r in raws]


def _row_day(r: _RawAnalyticsRow) -> dt.date:
    """The UTC day of a day-bucketed row (keyed `date__day` or `created_at__day`)."""
    return _day(r.date__day if r.date__day is not None else r.created_at__day)


def _analytics_row(r: _RawAnalyticsRow, key_hash: str, day: dt.date | None = None
                   ) -> ActivityRow:
    """One analytics row as an ActivityRow: `model` is the permaslug (the API's model id),
    `provider` and `endpoint_id` are "" unless the query grouped by provider; `day` when the
    row's bucket is not a day."""
    byok = _finite(r.byok_usage, "byok_usage")
    if r.credits_usage is not None or r.total_usage is None:  # null: an unused component
        usage = _finite(r.credits_usage, "credits_usage")
    else:  # total_usage = credits + BYOK inference
        usage = _finite(r.total_usage, "total_usage") - byok
    model = r.model or "unknown"
    provider = r.provider or ""
    return ActivityRow(
        date=day if day is not None else _row_day(r),
        model=model,
        model_permaslug=model,
        endpoint_id="",
        provider=provider,
        usage=usage,
        byok_usage=byok,
        requests=r.request_count or 0,
        prompt_tokens=r.tokens_prompt or 0,
        completion_tokens=r.tokens_completion or 0,
        reasoning_tokens=r.reasoning_tokens or 0,
        key_hash=key_hash,
    )


# -- results -------------------------------------------------------------------------------------


@dataclass
class Inventory:
    """Every workspace and every key in them (disabled keys included)."""

    workspaces: list[Workspace] = field(default_factory=list)
    keys: list[ApiKey] = field(default_factory=list)
    has_workspaces: bool = True  # False: the server has no /workspaces (plain /keys was used)


class AnalyticsUnavailable(Exception):
    """The analytics API answered 403 or 404: history comes from /activity alone."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- the client ----------------------------------------------------------------------------------


class _Retry(Exception):
    """One failed attempt that may be retried: why, the status, and the server's Retry-After."""

    def __init__(
        self, reason: str, status: int | None = None, after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.after = after


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent, or an HTTP date: fall back to our own backoff
    return seconds if seconds >= 0 else None


class _RateLimit:
    """At most `per_minute` calls in any 60 seconds of `clock`, waiting with `sleep`."""

    def __init__(
        self, per_minute: int, clock: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def _recent(self) -> float:
        """Forget calls older than a minute (lock held); returns now."""
        now = self._clock()
        while self._sent and self._sent[0] <= now - 60:
            self._sent.popleft()
        return now

    def wait(self) -> None:
        with self._lock:
            now = self._recent()
            if len(self._sent) >= self.per_minute:
                pause = self._sent[0] + 60 - now
                log.debug("analytics: %d queries in the last minute; waiting %.1fs",
                          len(self._sent), pause)
                self._sleep(pause)
                now = max(self._clock(), self._sent[0] + 60)
                self._sent.popleft()
            self._sent.append(now)

    def free(self) -> int:
        """How many calls may go now without waiting."""
        with self._lock:
            self._recent()
            return max(0, self.per_minute - len(self._sent))


class OpenRouterClient:
    """A read-only client of OpenRouter's management API (credits, activity, workspaces, keys,
    analytics).

    Thread-safe: `snapshot()` shares one `httpx.Client` between worker threads.
    """

    def __init__(
        self,
        key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        concurrency: int = 8,
        max_attempts: int = 5,
        retry_budget: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        analytics_per_minute: int = ANALYTICS_PER_MINUTE,
    ) -> None:
        self._key = key
        self.base_url = base_url.rstrip("/")
        self.concurrency = max(1, concurrency)
        self.max_attempts = max(1, max_attempts)
        self.retry_budget = max(0.0, retry_budget)
        self.timeout = timeout
        self._sleep = sleep
        self._random = random.Random()
        self._random_lock = threading.Lock()
        self._key_lock = threading.Lock()
        self._key_checked = False
        self._analytics_limit = _RateLimit(analytics_per_minute, clock, sleep)
        self._analytics_cut: int | None = None  # the fewest rows at which an answer was cut
        if not self.base_url.lower().startswith(("http://", "https://")):
            raise ConfigError(
                "openrouter.base_url (or OPENROUTER_BASE_URL): expected an http(s) URL, got "
                f"{_short(repr(self.base_url), 80)}"
            )
        try:
            httpx.URL(self.base_url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise ConfigError(
                "openrouter.base_url (or OPENROUTER_BASE_URL): not a usable URL: "
                f"{_short(repr(self.base_url), 80)}"
            ) from exc
        # Requests go straight to the transport: an httpx.Client around it adds cookie
        # handling, redirects and URL merging this API has no use for, ~22% of a request's
        # CPU with the local fake (bench/bench_http.py)
        pool = self.concurrency + 2
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        # `timeout` is each request's total deadline, not only each read's
        self._transport = transport if transport is not None else deadline_transport(limits)
        self._headers = httpx.Headers({
            "Authorization": f"Bearer {key}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
        })
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}

    def __repr__(self) -> str:
        return f"OpenRouterClient({self.base_url!r})"

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> OpenRouterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the key ---------------------------------------------------------------------------------

    def check_key(self) -> None:
        """Refuse a key that is not a management key, once per client, before any figure.

        `GET /key` says what the key is (`is_management_key`; the deprecated
        `is_provisioning_key` when that is absent). An inference key can get a 200 with all
        zeros from /credits: that must never be read as an empty balance. A server without
        `/key` (404), or an answer without either field, is let through.
        """
        with self._key_lock:
            if self._key_checked:
                return
            try:
                content = self._request("GET", "/key")
            except ApiError as exc:
                if exc.status != 404:
                    raise
                log.debug("OpenRouter has no /key (404); the key type is checked by each call")
                self._key_checked = True
                return
            info = self._decode("/key", content, _RawCurrentKey, "an object")
            management = info.is_management_key
            if management is None:
                management = info.is_provisioning_key
            if management is False:
                raise NotManagementKey(
                    "the OpenRouter key is not a management key (it cannot read credits, "
                    f"activity or keys); create one at {MANAGEMENT_KEYS_URL} and set "
                    "OPENROUTER_MANAGEMENT_KEY",
                    403,
                )
            if management is None:
                log.debug("OpenRouter /key does not say whether this is a management key")
            self._key_checked = True

    # -- endpoints -------------------------------------------------------------------------------

    def credits(self) -> Credits:
        content = self._request("GET", "/credits")
        return _credits(self._decode("/credits", content, _RawCredits, "an object"))

    def activity(
        self, date: dt.date | None = None, api_key_hash: str | None = None
    ) -> list[ActivityRow]:
        """Activity rows (the last 30 completed UTC days, or one `date`), org-wide or one key's."""
        params: dict[str, str] = {}
        if date is not None:
            params["date"] = date.isoformat()
        if api_key_hash is not None:
            params["api_key_hash"] = api_key_hash
        raws = self._rows("/activity", params)
        key_hash = api_key_hash or ""
        return self._parsed("/activity", _rows_of, raws, key_hash)

    def workspace_activity(self, date: dt.date | None = None) -> list[tuple[str, ActivityRow]]:
        """Activity split per workspace (`group_by=workspace`): (workspace id, row) pairs."""
        params = {"group_by": "workspace"}
        if date is not None:
            params["date"] = date.isoformat()
        raws = self._rows("/activity", params)
        return self._parsed("/activity", _workspace_rows_of, raws)

    def _rows(self, path: str, params: Mapping[str, str]) -> list[_RawRow]:
        content = self._request("GET", path, params=params)
        return self._decode(path, content, list[_RawRow], "a list", slow=parse_activity_row)

    def workspaces(self) -> list[Workspace] | None:
        """Every workspace (pages of 100 until `total_count`); None when the server has no
        `/workspaces` (404), where plain `/keys` lists every key."""
        found: dict[str, Workspace] = {}
        offset = 0
        for _ in range(MAX_KEY_PAGES):
            params = {"offset": str(offset), "limit": str(WORKSPACE_PAGE)}
            try:
                content = self._request("GET", "/workspaces", params=params)
            except ApiError as exc:
                if exc.status == 404 and offset == 0:
                    log.debug("OpenRouter has no /workspaces (404): using the keys /keys lists")
                    return None
                raise
            envelope = self._envelope("/workspaces", content)
            raws = self._decode_data("/workspaces", envelope.data, list[_RawWorkspace], "a list")
            page = self._parsed("/workspaces", _workspaces_of, raws)
            if page and all(w.id in found for w in page):
                raise ApiError(
                    f"OpenRouter /workspaces returned only workspaces already seen at offset "
                    f"{offset}; stopping instead of paginating forever"
                )
            for workspace in page:
                found.setdefault(workspace.id, workspace)
            total = envelope.total_count
            if not page or (total is not None and len(found) >= total):
                return list(found.values())
            offset += len(page)
        raise ApiError(f"OpenRouter /workspaces did not end after {MAX_KEY_PAGES} pages")

    def _key_pages(self, workspace_id: str | None) -> Iterator[list[ApiKey]]:
        """Pages of one workspace's keys (None: what plain /keys lists), disabled included."""
        seen: set[str] = set()
        offset = 0
        for _ in range(MAX_KEY_PAGES):
            params = {"include_disabled": "true", "offset": str(offset)}
            if workspace_id is not None:
                params["workspace_id"] = workspace_id
            content = self._request("GET", "/keys", params=params)
            raws = self._decode("/keys", content, list[_RawKey], "a list", slow=parse_key)
            if not raws:
                return
            page = self._parsed("/keys", _keys_of, raws, workspace_id or "")
            if all(k.hash in seen for k in page):
                raise ApiError(
                    f"OpenRouter /keys returned only keys already seen at offset {offset}; "
                    "stopping instead of paginating forever"
                )
            fresh = [k for k in page if k.hash not in seen]
            seen.update(k.hash for k in fresh)
            yield fresh
            offset += len(raws)
        raise ApiError(f"OpenRouter /keys did not end after {MAX_KEY_PAGES} pages")

    def _inventory_pages(self, inventory: Inventory) -> Iterator[list[ApiKey]]:
        """Fill `inventory` workspace by workspace, yielding each new page of keys."""
        workspaces = self.workspaces()
        inventory.has_workspaces = workspaces is not None
        inventory.workspaces = workspaces or []
        scopes: Sequence[str | None] = [w.id for w in workspaces] if workspaces else [None]
        seen: set[str] = set()
        for scope in scopes:
            for page in self._key_pages(scope):
                fresh = [k for k in page if k.hash not in seen]
                seen.update(k.hash for k in fresh)
                inventory.keys.extend(fresh)
                if fresh:
                    yield fresh

    def inventory(self) -> Inventory:
        """Every workspace and every key in each (`/keys` alone lists only the default
        workspace's keys)."""
        inventory = Inventory()
        for _ in self._inventory_pages(inventory):
            pass
        return inventory

    def keys(self) -> list[ApiKey]:
        """Every API key in every workspace, disabled ones included."""
        return self.inventory().keys

    def snapshot(
        self,
        *,
        now: dt.datetime,
        credits: bool = True,
        keys: bool = True,
        per_key: bool = False,
        activity: bool = True,
        date: dt.date | None = None,
        by_workspace: bool = False,
        progress: Callable[[int, int], None] | None = None,
        on_key_rows: Callable[[ApiKey, list[ActivityRow]], None] | None = None,
    ) -> Snapshot:
        """Credits, activity and keys fetched concurrently; with `per_key`, each key's activity.

        Per-key requests start as each page of keys arrives. With `on_key_rows`, each key's
        rows are handed to it (in this thread) as they arrive and not kept, so memory stays
        flat whatever the number of keys; otherwise they land in `key_activity`. `per_key`
        needs the key list, so it lists keys even when `keys` is False. At most
        `concurrency` requests are in flight at once.
        """
        self.check_key()
        snap = Snapshot(as_of=now)
        inventory = Inventory()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="openrouter") as pool:
            jobs: dict[str, Future[Any]] = {}
            if activity:
                jobs["activity"] = pool.submit(self.activity, date)
            if by_workspace:
                jobs["by_workspace"] = pool.submit(self.workspace_activity, date)
            if credits:
                jobs["credits"] = pool.submit(self.credits)
            try:
                if per_key:
                    kept: dict[str, list[ActivityRow]] = {}

                    def keep(key: ApiKey, rows: list[ActivityRow]) -> None:
                        kept[key.hash] = rows

                    self._fan_out(pool, inventory, date, progress, on_key_rows or keep)
                    snap.key_activity = {k.hash: kept[k.hash] for k in inventory.keys
                                         if k.hash in kept}
                elif keys:
                    jobs["inventory"] = pool.submit(self.inventory)
                _wait_all(list(jobs.values()))
            except BaseException:
                for future in jobs.values():
                    future.cancel()
                raise
            if "activity" in jobs:
                snap.activity = jobs["activity"].result()
            if "by_workspace" in jobs:
                snap.workspace_activity = jobs["by_workspace"].result()
            if "credits" in jobs:
                snap.credits = jobs["credits"].result()
            if "inventory" in jobs:
                inventory = jobs["inventory"].result()
        snap.keys = inventory.keys
        snap.workspaces = inventory.workspaces
        return snap

    def _fan_out(
        self,
        pool: ThreadPoolExecutor,
        inventory: Inventory,
        date: dt.date | None,
        progress: Callable[[int, int], None] | None,
        sink: Callable[[ApiKey, list[ActivityRow]], None],
    ) -> None:
        """List the keys in a worker and fetch each key's activity as its page arrives;
        hand results to `sink` here, in completion order. The first failure stops it all."""
        done_listing = object()
        # bounded: workers wait while this thread stores, so parsed rows never pile up
        results: queue.Queue[Any] = queue.Queue(maxsize=self.concurrency)
        stop = threading.Event()
        futures: list[Future[None]] = []

        def put(item: Any) -> None:
            while not stop.is_set():  # once stopped, nobody reads: never block on a full queue
                try:
                    results.put(item, timeout=0.05)
                    return
                except queue.Full:
                    continue

        def fetch(key: ApiKey) -> None:
            if stop.is_set():
                return
            try:
                put((key, self.activity(date, key.hash)))
            except BaseException as exc:
                put(exc)

        def lister() -> None:
            try:
                for page in self._inventory_pages(inventory):
                    if stop.is_set():
                        return
                    futures.extend(pool.submit(fetch, key) for key in page)
                put(done_listing)
            except BaseException as exc:
                put(exc)

        futures.append(pool.submit(lister))
        listed = False
        received = 0
        try:
            while not (listed and received == len(inventory.keys)):
                item = results.get()
                if item is done_listing:
                    listed = True
                    continue
                if isinstance(item, BaseException):
                    raise item
                received += 1
                sink(*item)
                if progress is not None:
                    progress(received, len(inventory.keys))
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise

    # -- analytics -------------------------------------------------------------------------------

    def analytics_available(self) -> str | None:
        """None when the analytics API answers; otherwise why not (for `check`)."""
        self.check_key()
        try:
            self._request("GET", "/analytics/meta")
        except (NotManagementKey, ApiError) as exc:
            if isinstance(exc, NotManagementKey) or exc.status in (404, 405):
                return f"{exc.status}"
            raise
        return None

    def analytics_query(self, body: Mapping[str, Any]) -> _RawAnalytics:
        """One `POST /analytics/query` (read-only), kept under 64 a minute. A 408 is raised at
        once (status 408) so the caller can narrow the query; 403/404/405 raise
        AnalyticsUnavailable. The rows stay undecoded until `_row_chunks` reads them."""
        self.check_key()
        try:
            content = self._request(
                "POST", "/analytics/query", body=body, retry_408=False,
                before=self._analytics_limit.wait,
            )
        except NotManagementKey as exc:
            raise AnalyticsUnavailable(f"403 {exc}") from exc
        except ApiError as exc:
            if exc.status in (404, 405):  # 405: a proxy or fake that allows only GET
                raise AnalyticsUnavailable(f"{exc.status} {exc}") from exc
            raise
        try:  # one pass over the envelope; the rows are kept as slices of the body
            envelope = _decoder(_AnalyticsEnvelope).decode(content)
        except msgspec.DecodeError:  # say precisely what is wrong, the slow way
            self._decode("/analytics/query", content, _RawAnalytics, "an object")
            raise
        finally:
            del content
        if envelope.data is None:
            raise self._malformed("/analytics/query", "no 'data' field")
        answer = envelope.data
        for warning in answer.warnings:
            log.debug("analytics warning: %s", _short(str(warning)))
        return answer

    def _row_chunks(
        self, answer: _RawAnalytics, size: int = 0
    ) -> Iterator[list[_RawAnalyticsRow]]:
        """The answer's rows, decoded ANALYTICS_CHUNK (or `size`) at a time: what one chunk
        holds is freed before the next is decoded."""
        size = size or ANALYTICS_CHUNK
        raws = answer.data
        for i in range(0, len(raws), size):
            text = b"[" + b",".join(raws[i : i + size]) + b"]"
            try:
                rows = _decoder(list[_RawAnalyticsRow]).decode(text)
            except msgspec.DecodeError as exc:
                raise self._malformed("/analytics/query", _field_error(str(exc))) from exc
            del text
            yield rows

    def _all_rows(self, answer: _RawAnalytics) -> list[_RawAnalyticsRow]:
        return [r for chunk in self._row_chunks(answer) for r in chunk]

    def key_model_days(
        self,
        start: dt.date,
        end: dt.date,
        keys: Sequence[ApiKey],
        on_rows: Callable[[dt.date, dt.date, list[ActivityRow]], None],
        progress: Callable[[int, int], None] | None = None,
        *,
        on_window: Callable[[dt.date, dt.date], None] | None = None,
    ) -> int:
        """Spend per UTC day by key x model from `start` to `end`, newest window of days
        first; returns the number of queries made. A window's rows are handed to
        `on_rows(first, last, rows)` a chunk at a time (memory stays flat however large an
        answer is); `on_window(first, last)` follows once all of them have been.

        The API labels keys by name, so names are mapped back to hashes through `keys`. Keys
        that share a name are asked for by hash filter (one key per name per query), so no two
        keys are merged; what a shared name's total holds beyond them, and any name no key
        has (a deleted key), is kept under a placeholder identity. Rows carry the model's
        permaslug in `model` and `model_permaslug`; `provider` is "".
        """
        by_label: dict[str, list[str]] = {}
        for k in keys:
            by_label.setdefault(_analytics_label(k), []).append(k.hash)
        unique = {label: hashes[0] for label, hashes in by_label.items() if len(hashes) == 1}
        shared = {label: hashes for label, hashes in by_label.items() if len(hashes) > 1}
        all_hashes = [k.hash for k in keys]
        queries = 0
        # keys that share a name, by hash filter: one key of each shared name per round
        attributed: dict[tuple[dt.date, str, str], list[Any]] = {}
        by_day: dict[dt.date, list[ActivityRow]] = {}
        rounds = max((len(h) for h in shared.values()), default=0)
        for i in range(rounds):
            picked = {label: hashes[i] for label, hashes in shared.items() if len(hashes) > i}
            queries += self._windows(
                start, end, ["api_key_id", "model"], list(picked.values()), None,
                functools.partial(_attribute, picked, by_day, attributed),
            )
        total_days = (end - start).days + 1
        done_days = 0
        held: dict[tuple[dt.date, str, str], list[Any]] = {}

        def take(first: dt.date, last: dt.date, rows: list[_RawAnalyticsRow]) -> None:
            out: list[ActivityRow] = []
            for i, r in enumerate(rows):
                rows[i] = None  # type: ignore[call-overload]  # freed as converted
                label = r.api_key_id or ""
                if label in unique:
                    out.append(_analytics_row(r, unique[label]))
                elif label in shared:
                    row = _analytics_row(r, "")
                    _add(held.setdefault((row.date, label, row.model), _zero()), row)
                else:
                    out.append(_analytics_row(r, placeholder_hash(label)))
            if out:
                on_rows(first, last, out)

        def close(first: dt.date, last: dt.date) -> None:
            nonlocal done_days
            out: list[ActivityRow] = []
            for (day, label, model), sums in held.items():
                rest = _minus(sums, attributed.get((day, label, model), _zero()))
                if rest[0] or rest[1] or rest[2]:
                    out.append(_figures_row(day, model, placeholder_hash(label), rest))
            held.clear()
            day = first
            while day <= last:
                out.extend(by_day.pop(day, ()))
                day += DAY
            if out:
                on_rows(first, last, out)
            if on_window is not None:
                on_window(first, last)
            done_days += (last - first).days + 1
            if progress is not None:
                progress(done_days, total_days)

        return queries + self._windows(
            start, end, ["api_key_id", "model"], None, all_hashes, take, close
        )

    def key_model_spend(
        self,
        start: dt.datetime,
        end: dt.datetime,
        keys: Sequence[ApiKey],
        granularity: Literal["minute", "hour"],
    ) -> list[SpendBucket]:
        """Spend by key x model per minute (the API allows windows up to 3 h) or hour from
        `start` to `end`. Names map back to hashes as in :meth:`key_model_days`: keys that
        share a name are asked for by hash filter, and what no listed key explains (a deleted
        key, spend without a key) keeps a placeholder identity. An answer cut short (truncated,
        or a 408) is asked again in halves of its time range."""
        by_label: dict[str, list[str]] = {}
        for k in keys:
            by_label.setdefault(_analytics_label(k), []).append(k.hash)
        unique = {label: hashes[0] for label, hashes in by_label.items() if len(hashes) == 1}
        shared = {label: hashes for label, hashes in by_label.items() if len(hashes) > 1}
        out: list[SpendBucket] = []
        attributed: dict[tuple[dt.datetime, str, str], Decimal] = {}
        for i in range(max((len(h) for h in shared.values()), default=0)):
            hash_of = {label: hashes[i] for label, hashes in shared.items() if len(hashes) > i}
            for r in self._timed(start, end, granularity, list(hash_of.values())):
                label = r.api_key_id or ""
                if label in hash_of:
                    bucket = _bucket(r, granularity, hash_of[label])
                    out.append(bucket)
                    slot = (bucket.at, label, bucket.model)
                    attributed[slot] = attributed.get(slot, ZERO) + bucket.cost
        for r in self._timed(start, end, granularity, None):
            label = r.api_key_id or ""
            if label in unique:
                out.append(_bucket(r, granularity, unique[label]))
            elif label in shared:
                b = _bucket(r, granularity, placeholder_hash(label))
                rest = b.cost - attributed.get((b.at, label, b.model), ZERO)
                if rest:
                    out.append(SpendBucket(b.at, b.key_hash, b.model, rest))
            else:
                out.append(_bucket(r, granularity, placeholder_hash(label)))
        return out

    def _timed(
        self, start: dt.datetime, end: dt.datetime, granularity: Literal["minute", "hour"],
        only: list[str] | None,
    ) -> list[_RawAnalyticsRow]:
        """Whole answers for `start`..`end` by key and model per `granularity`, halving the
        time range while an answer is truncated or times out."""
        step = dt.timedelta(minutes=1) if granularity == "minute" else dt.timedelta(hours=1)
        body = {
            "metrics": list(ANALYTICS_METRICS),
            "dimensions": ["api_key_id", "model"],
            "granularity": granularity,
            "time_range": {"start": _iso(start), "end": _iso(end)},
            "filters": ([{"field": "api_key_id", "operator": "in", "value": only}]
                        if only is not None else []),
            "limit": ANALYTICS_LIMIT,
        }
        try:
            answer = self.analytics_query(body)
            cut = answer.metadata.truncated
        except ApiError as exc:
            if exc.status != 408:
                raise
            cut = True
        if not cut:
            return [r for r in self._all_rows(answer)
                    if start <= _bucket_at(r, granularity) < end]
        if end - start <= step:
            raise ApiError(f"OpenRouter analytics answer for {_iso(start)} by {granularity} was "
                           "cut short even for one bucket")
        middle = start + (end - start) // 2
        middle -= dt.timedelta(seconds=middle.second, microseconds=middle.microsecond)
        if granularity == "hour":
            middle = middle.replace(minute=0)
        if not start < middle < end:
            middle = start + step
        log.debug("analytics answer for %s..%s by %s cut short; halving it", start, end,
                  granularity)
        return (self._timed(start, middle, granularity, only)
                + self._timed(middle, end, granularity, only))

    def model_provider_days(
        self,
        start: dt.date,
        end: dt.date,
        on_window: Callable[[dt.date, dt.date, list[ActivityRow]], None],
    ) -> int:
        """Spend per UTC day by model x provider, in windows of at most 31 days (the API's
        limit for `provider`), newest first; returns the number of queries made."""
        rows: list[ActivityRow] = []

        def take(first: dt.date, last: dt.date, chunk: list[_RawAnalyticsRow]) -> None:
            rows.extend(_analytics_row(r, "") for r in chunk)

        def close(first: dt.date, last: dt.date) -> None:
            on_window(first, last, rows[:])
            rows.clear()

        return self._windows(start, end, ["model", "provider"], None, None, take, close,
                             max_days=PROVIDER_WINDOW_DAYS)

    def _windows(
        self,
        start: dt.date,
        end: dt.date,
        dimensions: list[str],
        only: list[str] | None,
        all_hashes: list[str] | None,
        sink: _Sink,
        done: Callable[[dt.date, dt.date], None] | None = None,
        *,
        max_days: int = ANALYTICS_MAX_WINDOW,
    ) -> int:
        """Whole answers for `start`..`end`, newest window first, their rows handed to `sink`
        a chunk at a time and `done` called after each window; returns the queries made.

        Each window is sized by the density seen so far to hold about ANALYTICS_TARGET_ROWS
        rows, or more (up to ANALYTICS_MAX_ROWS) when the rest at that size would need more
        queries than the rate limit lets go without waiting. A truncated answer or a 408 is
        never used: its window is split and asked again (a single day by key set), and later
        windows stay well below the row count at which the server cut. A few keys asked for
        by hash (`only`: keys that share a name) have small answers: they go in as few
        queries as an answer may hold."""
        target = ANALYTICS_TARGET_ROWS if only is None else ANALYTICS_MAX_ROWS
        ceiling = ANALYTICS_MAX_ROWS
        if self._analytics_cut is not None:  # this server cuts answers: stay well below
            ceiling = min(ceiling, max(1, self._analytics_cut * 3 // 4))
            target = min(target, ceiling)
        span = min(ANALYTICS_FIRST_DAYS, max_days)
        density: float | None = None  # rows a day, once a window has said
        parts = 1  # key sets a day is asked in, when one day holds more than the target
        if "api_key_id" in dimensions and only is None and all_hashes:
            parts = max(1, -(-len(all_hashes) * ANALYTICS_GUESS_PER_KEY // target))
        total = 0
        seen = 0
        plan: tuple[int, int] | None = None  # (queries planned for the rest, total then)

        def count(first: dt.date, last: dt.date, rows: list[_RawAnalyticsRow]) -> None:
            nonlocal seen
            seen += len(rows)
            sink(first, last, rows)

        last = end
        while last >= start:
            first = max(start, last - DAY * (span - 1))
            seen = 0
            if parts > 1 and only is None and all_hashes:
                size = -(-len(all_hashes) // parts)
                queries, cap = 0, None
                for i in range(0, len(all_hashes), size):
                    n, c = self._exact(first, last, dimensions, all_hashes[i : i + size],
                                       all_hashes, count)
                    queries += n
                    cap = c if cap is None or (c is not None and c < cap) else cap
                queries += self._rest(first, dimensions, all_hashes, count, last)
            else:
                try:
                    queries, cap = self._exact(first, last, dimensions, only, all_hashes,
                                               count, resize=True)
                except _Cut as cut:  # nothing of it was used: ask again, sized by the cut
                    total += 1
                    target = ceiling = min(ceiling, max(1, cut.rows * 3 // 4))
                    days = (last - first).days + 1
                    guess = round(target / density) if density else days // 2
                    span = max(1, min(days - 1, guess) if guess < days else days // 2)
                    continue
            total += queries
            if cap is not None:  # the server cut answers at `cap` rows: stay well below it
                target = min(target, max(1, cap * 3 // 4))
                ceiling = min(ceiling, target)
            if done is not None:
                done(first, last)
            days = (last - first).days + 1
            density = max(seen / days, 1.0)
            rows = target
            left = (first - start).days
            if left > 0:  # what the rest needs to fit 3/4 of the rate limit's free queries
                # (the last quarter is room for a retry, a 408 or an answer cut short), planned
                # once, when the first window has measured the density
                if plan is None:
                    free = self._analytics_limit.free() - ANALYTICS_RESERVE
                    plan = (max(1, free * 3 // 4), total)
                queries_left = max(1, plan[0] - (total - plan[1]))
                rows = min(ceiling, max(target, -(-int(density * left) // queries_left)))
            span = int(max(1, min(max_days, round(rows / density))))
            if "api_key_id" in dimensions:  # a day over the ceiling comes in key sets
                parts = -(-int(density) // rows) if density > min(rows * 1.25, ceiling) else 1
            last = first - DAY
        return total

    def _exact(
        self,
        first: dt.date,
        last: dt.date,
        dimensions: list[str],
        only: list[str] | None,
        all_hashes: list[str] | None,
        sink: _Sink,
        *,
        resize: bool = False,
    ) -> tuple[int, int | None]:
        """Rows of `first`..`last` with no truncated part, handed to `sink`; returns the
        queries made and the smallest row count at which an answer was cut (None: none).
        With `resize`, a truncated answer of several days raises _Cut (the caller asks a
        window sized by the cut) instead of being split in halves here."""
        filters: list[dict[str, Any]] = []
        if only is not None:
            filters.append({"field": "api_key_id", "operator": "in", "value": only})
        body = {
            "metrics": list(ANALYTICS_METRICS),
            "dimensions": dimensions,
            "granularity": "day",
            "time_range": {
                "start": f"{first.isoformat()}T00:00:00Z",
                "end": f"{(last + DAY).isoformat()}T00:00:00Z",
            },
            "filters": filters,
            "limit": ANALYTICS_LIMIT,
        }
        try:
            answer = self.analytics_query(body)
        except ApiError as exc:
            if exc.status != 408:
                raise
            log.debug("analytics query for %s..%s timed out (408); narrowing it", first, last)
            return self._split(first, last, dimensions, only, all_hashes, sink, None, exc)
        if answer.metadata.truncated:
            cut = len(answer.data)
            del answer  # its body is not held while the parts are asked for
            self._analytics_cut = min(cut, self._analytics_cut or cut)
            log.debug("analytics answer for %s..%s truncated at %d rows; asking again in parts",
                      first, last, cut)
            if resize and first < last:
                raise _Cut(cut)
            return self._split(first, last, dimensions, only, all_hashes, sink, cut, None)
        self._hand_on(answer, first, last, sink)
        return 1, None

    def _hand_on(
        self, answer: _RawAnalytics, first: dt.date, last: dt.date, sink: _Sink
    ) -> None:
        """The answer's rows of `first`..`last` to `sink`, a chunk at a time (an inclusive end
        may bring the next midnight)."""
        for chunk in self._row_chunks(answer):
            rows = []
            for r in chunk:
                if first <= _row_day(r) <= last:
                    rows.append(r)
            del chunk
            sink(first, last, rows)

    def _split(
        self,
        first: dt.date,
        last: dt.date,
        dimensions: list[str],
        only: list[str] | None,
        all_hashes: list[str] | None,
        sink: _Sink,
        cut: int | None,
        timeout: ApiError | None,
    ) -> tuple[int, int | None]:
        queries = 1
        caps = [cut] if cut is not None else []
        if first < last:
            middle = first + DAY * ((last - first).days // 2)
            parts: list[tuple[dt.date, dt.date, list[str] | None]] = [
                (middle + DAY, last, only), (first, middle, only)
            ]
        elif "api_key_id" in dimensions and (only is None or len(only) > 1):
            if only is not None:
                half = len(only) // 2
                parts = [(first, last, only[:half]), (first, last, only[half:])]
            else:
                hashes = all_hashes or []
                half = len(hashes) // 2
                parts = [(first, last, hashes[:half]), (first, last, hashes[half:])]
                # keys we do not know (deleted ones) are in neither half
                queries += self._rest(first, dimensions, hashes, sink)
        else:
            what = "timed out" if timeout is not None else "was truncated"
            raise ApiError(
                f"OpenRouter analytics answer for {first} {what} even for a single day and key; "
                "history for that day is incomplete"
            ) from timeout
        for p_first, p_last, p_only in parts:
            if p_only == []:
                continue
            n, c = self._exact(p_first, p_last, dimensions, p_only, all_hashes, sink)
            queries += n
            caps.extend([c] if c is not None else [])
        return queries, min(caps) if caps else None

    def _rest(
        self,
        day: dt.date,
        dimensions: list[str],
        hashes: list[str],
        sink: _Sink,
        last: dt.date | None = None,
    ) -> int:
        """Rows of keys not in `hashes` (deleted keys, spend without a key), `day`..`last`."""
        last = last or day
        body = {
            "metrics": list(ANALYTICS_METRICS),
            "dimensions": dimensions,
            "granularity": "day",
            "time_range": {
                "start": f"{day.isoformat()}T00:00:00Z",
                "end": f"{(last + DAY).isoformat()}T00:00:00Z",
            },
            "filters": [{"field": "api_key_id", "operator": "not_in", "value": hashes}],
            "limit": ANALYTICS_LIMIT,
        }
        answer = self.analytics_query(body)
        if answer.metadata.truncated:
            raise ApiError(
                f"OpenRouter analytics answer for {day} (keys not in the key list) was truncated; "
                "history for that day is incomplete"
            )
        self._hand_on(answer, day, last, sink)
        return 1

    # -- HTTP ------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        retry_408: bool = True,
        before: Callable[[], None] | None = None,
    ) -> bytes | bytearray:
        """One request with retries; returns the body. Raises ApiError (or a subclass)."""
        if path != "/key":
            self.check_key()
        spent = 0.0  # request time plus the sleeps we asked for, so an injected sleep counts
        attempt = 0
        while True:
            attempt += 1
            if before is not None:
                before()
            started = time.monotonic()
            try:
                with deadline(self.timeout):  # in all, not per read: a trickle cannot hold us
                    return self._attempt(method, path, params, body, retry_408)
            except _Retry as failure:
                spent += time.monotonic() - started
                remaining = self.retry_budget - spent
                if attempt >= self.max_attempts or remaining <= 0:
                    tries = f"{attempt} attempt" + ("s" if attempt != 1 else "")
                    raise ApiError(
                        self._redact(f"OpenRouter {path} failed after {tries}: {failure.reason}"),
                        failure.status,
                    ) from failure.__cause__
                delay = min(self._backoff(attempt, failure.after), remaining)
                log.debug(  # the chatter of a retry: only with -v; the failure is one line
                    "OpenRouter %s: %s; retrying in %.1fs (attempt %d of %d)",
                    path, failure.reason, delay, attempt + 1, self.max_attempts,
                )
                self._sleep(delay)
                spent += delay

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        with self._random_lock:
            jitter = self._random.uniform(0.5, 1.0)
        return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)) * jitter

    def _attempt(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
        retry_408: bool,
    ) -> bytes | bytearray:
        """One request. Returns the body of a 2xx, raises _Retry for what may pass, ApiError
        for what won't."""
        started = time.monotonic()
        try:
            request = httpx.Request(method, self.base_url + path, params=params, json=body,
                                    headers=self._headers, extensions=self._extensions)
            resp = self._transport.handle_request(request)
            try:  # a POST (analytics) answer may be large: read into one buffer
                content: bytes | bytearray = resp.read() if body is None else _read_body(resp)
            finally:
                resp.close()
        except httpx.TimeoutException as exc:
            log.debug("%s %s -> timeout after %.0f ms", method, path, _ms(started))
            raise _Retry(f"timed out: no complete answer within {self.timeout:g}s "
                         f"({type(exc).__name__})") from exc
        except httpx.UnsupportedProtocol as exc:
            raise ApiError(self._redact(f"OpenRouter {path}: bad base URL: {exc}")) from exc
        except httpx.LocalProtocolError as exc:  # this request cannot be sent: no retry helps
            detail = self._redact(_short(str(exc), 120)) or type(exc).__name__
            raise ApiError(f"OpenRouter {path}: the request could not be sent: {detail}") from exc
        except httpx.TransportError as exc:
            log.debug("%s %s -> %s after %.0f ms", method, path, type(exc).__name__, _ms(started))
            detail = self._redact(_short(str(exc), 120)) or type(exc).__name__
            raise _Retry(f"connection failed: {detail}") from exc
        except httpx.HTTPError as exc:
            raise ApiError(self._redact(f"OpenRouter {path} failed: {_short(str(exc))}")) from exc
        log.debug("%s %s -> %d in %.0f ms", method, path, resp.status_code, _ms(started))
        status = resp.status_code
        if 200 <= status < 300:
            return content
        reason = f"{status} {resp.reason_phrase}".strip()
        message = self._redact(_api_message(bytes(content)))
        described = f"{reason}: {message}" if message else reason
        if status == 401:
            raise AuthError(
                f"OpenRouter rejected the key (401{': ' + message if message else ''}): "
                "check OPENROUTER_MANAGEMENT_KEY",
                status,
            )
        if status == 403:
            raise NotManagementKey(
                f"OpenRouter refused {path} (403{': ' + message if message else ''}): this needs "
                f"a management key; create one at {MANAGEMENT_KEYS_URL} and set "
                "OPENROUTER_MANAGEMENT_KEY",
                status,
            )
        if (status == 408 and retry_408) or status == 429 or status >= 500:
            raise _Retry(described, status, _retry_after(resp))
        raise ApiError(f"OpenRouter {path} failed: {described}", status)

    # -- decoding --------------------------------------------------------------------------------

    def _envelope(self, path: str, content: bytes | bytearray) -> _Envelope:
        """The body's outer object; ApiError when it is not JSON, not an object, has no `data`."""
        try:
            envelope = _decoder(_Envelope).decode(content)
        except msgspec.ValidationError as exc:  # JSON, but not an object with `data`
            if _kind_of(content) != "an object":
                raise self._malformed(
                    path, f"body is {_kind_of(content)}, expected an object"
                ) from exc
            raise self._malformed(path, _field_error(str(exc))) from exc
        except msgspec.DecodeError as exc:
            raise self._malformed(path, f"not JSON ({type(exc).__name__})") from exc
        if not envelope.data:
            error = envelope.error
            if error:
                message = error.get("message") if isinstance(error, dict) else error
                raise ApiError(
                    self._redact(f"OpenRouter {path} returned an error: {_short(str(message))}")
                )
            raise self._malformed(path, "no 'data' field")
        return envelope

    def _decode(
        self,
        path: str,
        content: bytes | bytearray,
        kind: Any,
        expected: str,
        slow: Callable[[Any], Any] | None = None,
    ) -> Any:
        return self._decode_data(path, self._envelope(path, content).data, kind, expected, slow)

    def _decode_data(
        self,
        path: str,
        data: msgspec.Raw,
        kind: Any,
        expected: str,
        slow: Callable[[Any], Any] | None = None,
    ) -> Any:
        """`data` decoded as `kind`. When it does not fit, says why in the API's terms: the
        wrong shape, or (through the per-item parser `slow`) the first unreadable item."""
        raw = bytes(data)
        try:
            return _decoder(kind).decode(raw)
        except msgspec.ValidationError as exc:
            found = _kind_of(raw)
            if found != expected:
                raise self._malformed(path, f"data is {found}, expected {expected}") from exc
            if slow is not None:
                items = json.loads(raw, parse_float=Decimal)
                for item in items:
                    self._parsed(path, slow, item)
            raise self._malformed(path, _field_error(str(exc))) from exc

    def _parsed(self, path: str, parse: Callable[..., T], *args: Any) -> T:
        try:
            return parse(*args)
        except ApiError as exc:
            raise self._malformed(path, str(exc)) from exc

    def _malformed(self, path: str, detail: str) -> ApiError:
        return ApiError(self._redact(f"OpenRouter {path} returned a malformed body: {detail}"))

    def _redact(self, text: str) -> str:
        return redact(text, [self._key])


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bucket_at(r: _RawAnalyticsRow, granularity: str) -> dt.datetime:
    """The start of a minute or hour bucket (keyed `date__<g>` or `created_at__<g>`), UTC."""
    value = getattr(r, f"date__{granularity}")
    if value is None:
        value = getattr(r, f"created_at__{granularity}")
    try:
        when = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(f"analytics bucket is not a date-time: {_short(repr(value))}") from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _bucket(r: _RawAnalyticsRow, granularity: str, key_hash: str) -> SpendBucket:
    at = _bucket_at(r, granularity)
    row = _analytics_row(r, key_hash, at.date())
    return SpendBucket(at, key_hash, row.model, row.cost)


def _analytics_label(key: ApiKey) -> str:
    """How the analytics API names a key: its name, else its label."""
    return key.name or key.label


class _Cut(Exception):
    """An answer of several days was truncated at `rows` rows; nothing of it was used."""

    def __init__(self, rows: int) -> None:
        super().__init__(rows)
        self.rows = rows


# where a window's rows go, a chunk at a time: (first day, last day, rows)
_Sink = Callable[[dt.date, dt.date, list[_RawAnalyticsRow]], None]


def _attribute(
    hash_of: dict[str, str],
    by_day: dict[dt.date, list[ActivityRow]],
    attributed: dict[tuple[dt.date, str, str], list[Any]],
    first: dt.date,
    last: dt.date,
    rows: list[_RawAnalyticsRow],
) -> None:
    """Rows of keys asked for by hash filter (`hash_of`: label -> hash), kept by day and
    summed by (day, label, model) so a shared name's total can be told apart."""
    for r in rows:
        label = r.api_key_id or ""
        if label not in hash_of:
            continue
        row = _analytics_row(r, hash_of[label])
        by_day.setdefault(row.date, []).append(row)
        _add(attributed.setdefault((row.date, label, row.model), _zero()), row)


def _zero() -> list[Any]:
    return [ZERO, ZERO, 0, 0, 0, 0]


def _add(sums: list[Any], row: ActivityRow) -> None:
    sums[0] += row.usage
    sums[1] += row.byok_usage
    sums[2] += row.requests
    sums[3] += row.prompt_tokens
    sums[4] += row.completion_tokens
    sums[5] += row.reasoning_tokens


def _minus(a: list[Any], b: list[Any]) -> list[Any]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _figures_row(day: dt.date, model: str, key_hash: str, sums: list[Any]) -> ActivityRow:
    return ActivityRow(
        date=day, model=model, model_permaslug=model, endpoint_id="", provider="",
        usage=sums[0], byok_usage=sums[1], requests=sums[2], prompt_tokens=sums[3],
        completion_tokens=sums[4], reasoning_tokens=sums[5], key_hash=key_hash,
    )


def _api_message(content: bytes) -> str:
    """The API's `{"error": {"message"}}` text, one line, or "" (never an HTML page)."""
    try:
        body = json.loads(content)
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return _short(message) if isinstance(message, str) else ""


def _wait_all(futures: list[Future[Any]]) -> None:
    """Wait for all futures, or cancel the rest as soon as one fails (`.result()` re-raises)."""
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    if pending:
        for future in pending:
            future.cancel()
        for future in done:
            future.result()


def _read_body(resp: httpx.Response) -> bytearray:
    """A streamed response's body, grown in place as it arrives (decompressed if it came
    compressed): a large body is never held twice, as the pieces read and their join."""
    body = bytearray()
    for piece in resp.iter_bytes():
        body += piece
    return body


def _kind_of(raw: bytes | bytearray) -> str:
    first = bytes(raw.lstrip()[:1])
    names = {b"{": "an object", b"[": "a list", b'"': "a string", b"t": "a boolean",
             b"f": "a boolean", b"n": "null"}
    return names.get(first, "a number")


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
