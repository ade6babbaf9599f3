"""The project's error tree; every error the CLI reports is one of these.

    BotError                  base; str(err) is one readable line, never a secret
    ├── ConfigError           bad or missing configuration / usage (exit 2)
    ├── ApiError              OpenRouter answered badly or not at all (exit 1)
    │   ├── AuthError         401: the key is invalid
    │   └── NotManagementKey  403: the key is not a management key
    ├── DataError             local history cannot answer what was asked (exit 1)
    └── DeliveryError         Slack or e-mail delivery failed (exit 1)
        └── OutcomeUnknown    the request may have been delivered (no answer, 5xx after
                              sending): never blindly re-sent; looked up first where possible

Third-party errors are wrapped where they enter (``raise ApiError(...) from exc``).
"""

from __future__ import annotations


class BotError(Exception):
    """Base of every error this program reports; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(BotError):
    """Configuration or usage error; the message names the key path when there is one."""

    exit_code = 2


class ApiError(BotError):
    """OpenRouter failed: bad status, malformed body, timeouts after retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(ApiError):
    """OpenRouter rejected the key (401)."""


class NotManagementKey(ApiError):
    """The key works but is not a management key (403)."""


class DataError(BotError):
    """Local history does not cover what was asked for."""


class DeliveryError(BotError):
    """Posting to Slack or mailing failed."""


class OutcomeUnknown(DeliveryError):
    """The message may have been delivered: the connection dropped or timed out after the
    request was sent, or a server error came back. It must not be re-sent blindly."""
