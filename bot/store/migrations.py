"""Numbered schema migrations, each a list of SQL statements (never split on `;`).

MIGRATIONS[n - 1] takes the schema from version n - 1 to n, on SQLite and PostgreSQL alike
(written for SQLite; `bot.store.backend` translates the types for PostgreSQL). Never edit one
that has shipped; append a new one. Money is TEXT (an exact Decimal), dates are ISO
`YYYY-MM-DD`, datetimes ISO UTC with microseconds (so text order is time order).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PerDialect:
    """A statement whose SQL differs between the backends (used as is, not translated).

    Plain strings are written for SQLite and translated for PostgreSQL by
    `bot.store.backend` (64-bit INTEGER, identity keys, no WITHOUT ROWID); reach for this
    only where that is not enough.
    """

    sqlite: str
    postgresql: str

    def for_dialect(self, dialect: str) -> str:
        return self.sqlite if dialect == "sqlite" else self.postgresql


MIGRATIONS: list[tuple[str | PerDialect, ...]] = [
    # 1: history — credits, activity (org-wide key_hash = '' and per key), coverage, keys, meta
    (
        """
        CREATE TABLE credits (
                id INTEGER PRIMARY KEY,
                first_seen TEXT NOT NULL,
                last_seen TEXT NOT NULL,
                total_credits TEXT NOT NULL,
                total_usage TEXT NOT NULL
            )
        """,
        """
        CREATE INDEX credits_first_seen ON credits (first_seen)
        """,
        """
        CREATE TABLE activity (
                key_hash TEXT NOT NULL,
                date TEXT NOT NULL,
                endpoint_id TEXT NOT NULL,
                model_permaslug TEXT NOT NULL,
                model TEXT NOT NULL,
                provider TEXT NOT NULL,
                usage TEXT NOT NULL,
                byok_usage TEXT NOT NULL,
                requests INTEGER NOT NULL,
                prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                reasoning_tokens INTEGER NOT NULL,
                first_seen TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (key_hash, date, endpoint_id, model_permaslug)
            ) WITHOUT ROWID
        """,
        """
        CREATE INDEX activity_date ON activity (date)
        """,
        """
        CREATE TABLE coverage (
                key_hash TEXT NOT NULL,
                date TEXT NOT NULL,
                synced_at TEXT NOT NULL,
                PRIMARY KEY (key_hash, date)
            ) WITHOUT ROWID
        """,
        """
        CREATE TABLE keys (
                hash TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                label TEXT NOT NULL,
                disabled INTEGER NOT NULL,
                "limit" TEXT,
                limit_remaining TEXT,
                limit_reset TEXT,
                usage TEXT NOT NULL,
                usage_daily TEXT NOT NULL,
                usage_weekly TEXT NOT NULL,
                usage_monthly TEXT NOT NULL,
                byok_usage TEXT NOT NULL,
                byok_usage_daily TEXT NOT NULL,
                byok_usage_weekly TEXT NOT NULL,
                byok_usage_monthly TEXT NOT NULL,
                created_at TEXT,
                expires_at TEXT,
                first_seen TEXT NOT NULL,
                last_seen TEXT NOT NULL
            )
        """,
        """
        CREATE TABLE key_snapshots (
                id INTEGER PRIMARY KEY,
                hash TEXT NOT NULL REFERENCES keys (hash),
                as_of TEXT NOT NULL,
                disabled INTEGER NOT NULL,
                "limit" TEXT,
                limit_remaining TEXT,
                usage TEXT NOT NULL,
                usage_daily TEXT NOT NULL,
                usage_weekly TEXT NOT NULL,
                usage_monthly TEXT NOT NULL,
                byok_usage TEXT NOT NULL,
                byok_usage_daily TEXT NOT NULL,
                byok_usage_weekly TEXT NOT NULL,
                byok_usage_monthly TEXT NOT NULL
            )
        """,
        """
        CREATE INDEX key_snapshots_hash ON key_snapshots (hash, as_of)
        """,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
        """,
    ),
    # 2: outbox — one row per (job, period, destination)
    (
        """
        CREATE TABLE deliveries (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                job TEXT NOT NULL,
                period TEXT NOT NULL,
                destination TEXT NOT NULL,
                payload TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'given_up')),
                attempts INTEGER NOT NULL DEFAULT 0,
                forced INTEGER NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL,
                last_attempt_at TEXT,
                sent_at TEXT,
                last_error TEXT NOT NULL DEFAULT '',
                ref TEXT NOT NULL DEFAULT '',
                updated_at TEXT NOT NULL,
                UNIQUE (job, period, destination)
            )
        """,
        """
        CREATE INDEX deliveries_status ON deliveries (status, created_at)
        """,
    ),
    # 3: alert state — one row per (rule, subject)
    (
        """
        CREATE TABLE alerts (
                rule_id TEXT NOT NULL,
                subject TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
                value TEXT NOT NULL,
                since TEXT NOT NULL,
                last_notified_at TEXT NOT NULL,
                threads TEXT NOT NULL DEFAULT '{}',
                updated_at TEXT NOT NULL,
                PRIMARY KEY (rule_id, subject)
            )
        """,
    ),
    # 4: leases — so two daemons on one database never both send
    (
        """
        CREATE TABLE leases (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                acquired_at TEXT NOT NULL,
                expires_at TEXT NOT NULL
            )
        """,
    ),
    # 5: workspaces, and per-key history as compact day figures. Each key's spend per UTC day
    # and model lives in key_usage, money as integer pico-dollars (1e-12 USD) so SQL sums are
    # exact; key and model identities are small integers. Per-key /activity rows move there;
    # key snapshots (written every sync, read by nothing) are dropped.
    (
        """
        CREATE TABLE workspaces (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                slug TEXT NOT NULL,
                first_seen TEXT NOT NULL,
                last_seen TEXT NOT NULL
            )
        """,
        """
        ALTER TABLE keys ADD COLUMN workspace_id TEXT NOT NULL DEFAULT ''
        """,
        """
        DROP TABLE key_snapshots
        """,
        """
        CREATE TABLE key_ids (
                id INTEGER PRIMARY KEY,
                hash TEXT NOT NULL UNIQUE
            )
        """,
        """
        CREATE TABLE model_ids (
                id INTEGER PRIMARY KEY,
                permaslug TEXT NOT NULL UNIQUE,
                model TEXT NOT NULL
            )
        """,
        """
        CREATE TABLE key_usage (
                date TEXT NOT NULL,
                key_id INTEGER NOT NULL,
                model_id INTEGER NOT NULL,
                usage INTEGER NOT NULL,
                byok_usage INTEGER NOT NULL,
                requests INTEGER NOT NULL,
                prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                reasoning_tokens INTEGER NOT NULL,
                source INTEGER NOT NULL,
                PRIMARY KEY (date, key_id, model_id)
            ) WITHOUT ROWID
        """,
        """
        INSERT INTO key_ids (hash)
            SELECT DISTINCT key_hash FROM activity WHERE key_hash != '' ORDER BY key_hash
        """,
        """
        INSERT INTO model_ids (permaslug, model)
            SELECT model_permaslug, MIN(model) FROM activity
            GROUP BY model_permaslug ORDER BY model_permaslug
        """,
        # one-time conversion of the old decimal text; new rows are converted exactly
        """
        INSERT INTO key_usage (date, key_id, model_id, usage, byok_usage, requests,
                prompt_tokens, completion_tokens, reasoning_tokens, source)
            SELECT a.date, k.id, m.id,
                SUM(CAST(ROUND(CAST(a.usage AS REAL) * 1000000000000) AS INTEGER)),
                SUM(CAST(ROUND(CAST(a.byok_usage AS REAL) * 1000000000000) AS INTEGER)),
                SUM(a.requests), SUM(a.prompt_tokens), SUM(a.completion_tokens),
                SUM(a.reasoning_tokens), 0
            FROM activity a
            JOIN key_ids k ON k.hash = a.key_hash
            JOIN model_ids m ON m.permaslug = a.model_permaslug
            WHERE a.key_hash != ''
            GROUP BY a.date, k.id, m.id
        """,
        """
        DELETE FROM activity WHERE key_hash != ''
        """,
    ),
    # 6: delivery claims held by a heartbeat, and attempts whose outcome is unknown
    (
        # when the first attempt began: a lost Slack post is looked for from then on
        "ALTER TABLE deliveries ADD COLUMN first_attempt_at TEXT",
        # who claimed the 'sending' row, and when it last said it is still at it
        "ALTER TABLE deliveries ADD COLUMN claimed_by TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE deliveries ADD COLUMN heartbeat_at TEXT",
        # 1 once an attempt may have delivered it: look (or keep the Message-ID) before
        # sending it again
        "ALTER TABLE deliveries ADD COLUMN maybe_sent INTEGER NOT NULL DEFAULT 0",
    ),
    # 7: each key's figures per calendar month, kept from key_usage, so a report a year back
    # sums a row per key and month; a month written since its sums were taken is stale and is
    # read from key_usage until they are taken again
    (
        """
        CREATE TABLE key_month (
                key_id INTEGER NOT NULL,
                month TEXT NOT NULL,
                usage INTEGER NOT NULL,
                byok_usage INTEGER NOT NULL,
                requests INTEGER NOT NULL,
                prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                reasoning_tokens INTEGER NOT NULL,
                PRIMARY KEY (month, key_id)
            )
        """,
        "CREATE TABLE key_month_stale (month TEXT PRIMARY KEY)",
        "INSERT INTO key_month_stale (month) SELECT DISTINCT substr(date, 1, 7) FROM key_usage",
    ),
    # 8: the interactive Slack bot — acknowledgements and snoozes per alert, who did what,
    # and who opened the App Home (to refresh it after each sync)
    (
        """
        CREATE TABLE alert_silences (
                rule_id TEXT NOT NULL,
                subject TEXT NOT NULL,
                acked_since TEXT,
                acked_by TEXT NOT NULL DEFAULT '',
                acked_at TEXT,
                snoozed_until TEXT,
                snoozed_by TEXT NOT NULL DEFAULT '',
                snoozed_at TEXT,
                PRIMARY KEY (rule_id, subject)
            )
        """,
        """
        CREATE TABLE slack_actions (
                at TEXT NOT NULL,
                user_id TEXT NOT NULL,
                action TEXT NOT NULL,
                rule_id TEXT NOT NULL,
                subject TEXT NOT NULL,
                channel TEXT NOT NULL,
                outcome TEXT NOT NULL
            )
        """,
        """
        CREATE INDEX slack_actions_at ON slack_actions (at)
        """,
        """
        CREATE TABLE slack_home_users (
                user_id TEXT PRIMARY KEY,
                opened_at TEXT NOT NULL
            )
        """,
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)
