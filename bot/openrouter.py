"""The only module that talks to OpenRouter: read-only GETs, retries, pagination, parsing."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, as_completed, wait
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any

import httpx

from bot import __version__
from bot.config import DEFAULT_BASE_URL
from bot.errors import ApiError, AuthError, ConfigError, NotManagementKey
from bot.models import ZERO, ActivityRow, ApiKey, Credits, Snapshot
from bot.text import one_line, redact

MANAGEMENT_KEYS_URL = "https://openrouter.ai/settings/management-keys"
USER_AGENT = f"openrouter-usage/{__version__}"

# /keys pages before we decide the server is looping
MAX_KEY_PAGES = 10_000
# exponential backoff: first retry after ~BACKOFF_BASE seconds, never more than BACKOFF_CAP
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
MAX_MESSAGE = 200

log = logging.getLogger(__name__)


# -- parsing -----------------------------------------------------------------------------------


def _money(value: Any, name: str) -> Decimal:
    """A money figure as an exact Decimal; null is 0. Accepts numbers and numeric strings."""
    if value is None:
        return ZERO
    if isinstance(value, bool):
        raise ApiError(f"{name} is not a number: {value!r}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))  # the shortest text that round-trips, not the binary value
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ApiError(f"{name} is not a number: {_short(repr(value))}") from None
    else:
        raise ApiError(f"{name} is not a number: {_short(repr(value))}")
    if not result.is_finite():
        raise ApiError(f"{name} is not a finite number: {value!r}")
    return result


def _optional_money(value: Any, name: str) -> Decimal | None:
    return None if value is None else _money(value, name)


def _count(value: Any, name: str) -> int:
    """A count (requests, tokens) as an int; null is 0; integral floats are accepted."""
    number = _money(value, name)
    if number != number.to_integral_value():
        raise ApiError(f"{name} is not a whole number: {value!r}")
    return int(number)


def _text(value: Any, default: str = "") -> str:
    if value is None:
        return default
    return value if isinstance(value, str) else str(value)


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


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
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        return day  # an odd time part; the day is what we need
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.UTC)
    return stamp.date()


def parse_credits(data: dict[str, Any]) -> Credits:
    """`/credits`'s `data` object as Credits."""
    if not isinstance(data, dict):
        raise ApiError(f"credits is not an object: {type(data).__name__}")
    return Credits(
        total_credits=_money(data.get("total_credits"), "total_credits"),
        total_usage=_money(data.get("total_usage"), "total_usage"),
    )


def parse_activity_row(raw: dict[str, Any], key_hash: str = "") -> ActivityRow:
    """One `/activity` row; raises ApiError when it is not an object or a field is unreadable."""
    if not isinstance(raw, dict):
        raise ApiError(f"activity row is not an object: {_short(repr(raw))}")
    model = _text(raw.get("model")) or "unknown"
    permaslug = _text(raw.get("model_permaslug")) or model
    provider = _text(raw.get("provider_name")) or "unknown"
    return ActivityRow(
        date=_parse_date(raw.get("date")),
        model=model,
        model_permaslug=permaslug,
        # the history store keys rows by (date, endpoint): never leave two endpoints both ""
        endpoint_id=_text(raw.get("endpoint_id")) or f"{permaslug}@{provider}",
        provider=provider,
        usage=_money(raw.get("usage"), "usage"),
        byok_usage=_money(raw.get("byok_usage_inference"), "byok_usage_inference"),
        requests=_count(raw.get("requests"), "requests"),
        prompt_tokens=_count(raw.get("prompt_tokens"), "prompt_tokens"),
        completion_tokens=_count(raw.get("completion_tokens"), "completion_tokens"),
        reasoning_tokens=_count(raw.get("reasoning_tokens"), "reasoning_tokens"),
        key_hash=key_hash,
    )


def parse_key(raw: dict[str, Any]) -> ApiKey:
    """One `/keys` item; null money is 0 except `limit`/`limit_remaining` (null = no limit)."""
    if not isinstance(raw, dict):
        raise ApiError(f"key is not an object: {_short(repr(raw))}")
    key_hash = raw.get("hash")
    if not isinstance(key_hash, str) or not key_hash:
        raise ApiError("key has no hash")
    return ApiKey(
        hash=key_hash,
        name=_text(raw.get("name")),
        label=_text(raw.get("label")),
        disabled=bool(raw.get("disabled")),
        limit=_optional_money(raw.get("limit"), "limit"),
        limit_remaining=_optional_money(raw.get("limit_remaining"), "limit_remaining"),
        limit_reset=_optional_text(raw.get("limit_reset")),
        usage=_money(raw.get("usage"), "usage"),
        usage_daily=_money(raw.get("usage_daily"), "usage_daily"),
        usage_weekly=_money(raw.get("usage_weekly"), "usage_weekly"),
        usage_monthly=_money(raw.get("usage_monthly"), "usage_monthly"),
        byok_usage=_money(raw.get("byok_usage"), "byok_usage"),
        byok_usage_daily=_money(raw.get("byok_usage_daily"), "byok_usage_daily"),
        byok_usage_weekly=_money(raw.get("byok_usage_weekly"), "byok_usage_weekly"),
        byok_usage_monthly=_money(raw.get("byok_usage_monthly"), "byok_usage_monthly"),
        created_at=_optional_text(raw.get("created_at")),
        expires_at=_optional_text(raw.get("expires_at")),
    )


def _short(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` on one line, cut to this module's length for quoted API text."""
    return one_line(text, limit)


def _loads(content: bytes) -> Any:
    return json.loads(content, parse_float=Decimal)


def _api_message(resp: httpx.Response) -> str:
    """The API's `{"error": {"message"}}` text, one line, or "" (never an HTML page)."""
    try:
        body = _loads(resp.content)
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return _short(message) if isinstance(message, str) else ""


# -- the client --------------------------------------------------------------------------------


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


class OpenRouterClient:
    """A read-only client of OpenRouter's management API (credits, activity, keys).

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
        if not self.base_url.lower().startswith(("http://", "https://")):
            raise ConfigError(
                "openrouter.base_url (or OPENROUTER_BASE_URL): expected an http(s) URL, got "
                f"{_short(repr(self.base_url), 80)}"
            )
        pool = self.concurrency + 2
        try:
            self._http = httpx.Client(
                base_url=self.base_url,
                headers={
                    "Authorization": f"Bearer {key}",
                    "User-Agent": USER_AGENT,
                    "Accept": "application/json",
                },
                timeout=httpx.Timeout(timeout),
                transport=transport,
                limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            )
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise ConfigError(
                "openrouter.base_url (or OPENROUTER_BASE_URL): not a usable URL: "
                f"{_short(repr(self.base_url), 80)}"
            ) from exc

    def __repr__(self) -> str:
        return f"OpenRouterClient({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenRouterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- endpoints -----------------------------------------------------------------------------

    def credits(self) -> Credits:
        data = self._get("/credits")
        if not isinstance(data, dict):
            raise self._malformed("/credits", f"data is {_kind(data)}, expected an object")
        return self._parsed("/credits", parse_credits, data)

    def activity(
        self, date: dt.date | None = None, api_key_hash: str | None = None
    ) -> list[ActivityRow]:
        """Activity rows (the last 30 completed UTC days, or one `date`), org-wide or one key's."""
        params: dict[str, str] = {}
        if date is not None:
            params["date"] = date.isoformat()
        if api_key_hash is not None:
            params["api_key_hash"] = api_key_hash
        data = self._get("/activity", params)
        if not isinstance(data, list):
            raise self._malformed("/activity", f"data is {_kind(data)}, expected a list")
        key_hash = api_key_hash or ""
        return [self._parsed("/activity", parse_activity_row, raw, key_hash) for raw in data]

    def keys(self) -> list[ApiKey]:
        """Every API key, disabled ones included, across all `/keys` pages."""
        found: dict[str, ApiKey] = {}
        offset = 0
        for _ in range(MAX_KEY_PAGES):
            data = self._get("/keys", {"include_disabled": "true", "offset": str(offset)})
            if not isinstance(data, list):
                raise self._malformed("/keys", f"data is {_kind(data)}, expected a list")
            if not data:
                return list(found.values())
            page = [self._parsed("/keys", parse_key, raw) for raw in data]
            if all(k.hash in found for k in page):
                raise ApiError(
                    f"OpenRouter /keys returned only keys already seen at offset {offset}; "
                    "stopping instead of paginating forever"
                )
            for api_key in page:
                found.setdefault(api_key.hash, api_key)
            offset += len(data)
        raise ApiError(f"OpenRouter /keys did not end after {MAX_KEY_PAGES} pages")

    def snapshot(
        self,
        *,
        now: dt.datetime,
        credits: bool = True,
        keys: bool = True,
        per_key: bool = False,
        activity: bool = True,
        date: dt.date | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Snapshot:
        """Credits, activity and keys fetched concurrently; with `per_key`, each key's activity.

        `per_key` needs the key list, so it fetches keys even when `keys` is False (they are
        returned either way). At most `concurrency` requests are in flight at once.
        """
        snap = Snapshot(as_of=now)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="openrouter") as pool:
            jobs: dict[str, Future[Any]] = {}
            if activity:
                jobs["activity"] = pool.submit(self.activity, date)
            if credits:
                jobs["credits"] = pool.submit(self.credits)
            if keys or per_key:
                jobs["keys"] = pool.submit(self.keys)
            _wait_all(list(jobs.values()))
            if "activity" in jobs:
                snap.activity = jobs["activity"].result()
            if "credits" in jobs:
                snap.credits = jobs["credits"].result()
            if "keys" in jobs:
                snap.keys = jobs["keys"].result()
            if per_key:
                snap.key_activity = self._per_key(pool, snap.keys, date, progress)
        return snap

    def _per_key(
        self,
        pool: ThreadPoolExecutor,
        keys: list[ApiKey],
        date: dt.date | None,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, list[ActivityRow]]:
        hashes = list(dict.fromkeys(k.hash for k in keys))
        futures = {pool.submit(self.activity, date, h): h for h in hashes}
        results: dict[str, list[ActivityRow]] = {}
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = future.result()
                if progress is not None:
                    progress(done, len(hashes))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return {h: results[h] for h in hashes}

    # -- HTTP ----------------------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET `path` with retries; returns the body's `data`. Raises ApiError (or a subclass)."""
        spent = 0.0  # request time plus the sleeps we asked for, so an injected sleep counts
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                return self._attempt(path, params)
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
                log.info(
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

    def _attempt(self, path: str, params: Mapping[str, str] | None) -> Any:
        """One GET. Returns `data`, raises _Retry for what may pass, ApiError for what won't."""
        started = time.monotonic()
        try:
            resp = self._http.get(path, params=params)
        except httpx.TimeoutException as exc:
            log.debug("GET %s -> timeout after %.0f ms", path, _ms(started))
            raise _Retry(f"timed out after {self.timeout:g}s ({type(exc).__name__})") from exc
        except httpx.UnsupportedProtocol as exc:
            raise ApiError(self._redact(f"OpenRouter {path}: bad base URL: {exc}")) from exc
        except httpx.TransportError as exc:
            log.debug("GET %s -> %s after %.0f ms", path, type(exc).__name__, _ms(started))
            detail = self._redact(_short(str(exc), 120)) or type(exc).__name__
            raise _Retry(f"connection failed: {detail}") from exc
        except httpx.HTTPError as exc:
            raise ApiError(self._redact(f"OpenRouter {path} failed: {_short(str(exc))}")) from exc
        log.debug("GET %s -> %d in %.0f ms", path, resp.status_code, _ms(started))
        status = resp.status_code
        if 200 <= status < 300:
            return self._data(path, resp)
        reason = f"{status} {resp.reason_phrase}".strip()
        message = self._redact(_api_message(resp))
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
        if status in (408, 429) or status >= 500:
            raise _Retry(described, status, _retry_after(resp))
        raise ApiError(f"OpenRouter {path} failed: {described}", status)

    def _data(self, path: str, resp: httpx.Response) -> Any:
        try:
            body = _loads(resp.content)
        except (ValueError, RecursionError) as exc:
            raise self._malformed(path, f"not JSON ({type(exc).__name__})") from exc
        if not isinstance(body, dict):
            raise self._malformed(path, f"body is {_kind(body)}, expected an object")
        if "data" not in body:
            error = body.get("error")
            if error:
                message = error.get("message") if isinstance(error, dict) else error
                raise ApiError(
                    self._redact(f"OpenRouter {path} returned an error: {_short(str(message))}")
                )
            raise self._malformed(path, "no 'data' field")
        return body["data"]

    def _parsed(self, path: str, parse: Callable[..., Any], *args: Any) -> Any:
        try:
            return parse(*args)
        except ApiError as exc:
            raise self._malformed(path, str(exc)) from exc

    def _malformed(self, path: str, detail: str) -> ApiError:
        return ApiError(self._redact(f"OpenRouter {path} returned a malformed body: {detail}"))

    def _redact(self, text: str) -> str:
        return redact(text, [self._key])


def _wait_all(futures: list[Future[Any]]) -> None:
    """Wait for all futures, or cancel the rest as soon as one fails (`.result()` re-raises)."""
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    if pending:
        for future in pending:
            future.cancel()
        for future in done:
            future.result()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number")


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
