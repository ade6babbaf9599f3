"""Builds MIME from a rendered MailMessage (pure) and sends it over SMTP with verified TLS.

A failure before the DATA command means the server did not take the message (a plain
``DeliveryError``); a timeout or lost connection in or after DATA means it may have
(``OutcomeUnknown``): SMTP cannot be asked, so the caller sends it again later, never in the
same run, under the same Message-ID so mail clients fold a copy. The whole session, from
connect to QUIT, has a deadline (``SmtpSettings.deadline``), not only a per-read timeout.
"""

from __future__ import annotations

import datetime as dt
import email.message
import email.policy
import email.utils
import logging
import smtplib
import socket
import ssl
import threading
from typing import Any

from bot.config import EmailConfig
from bot.errors import ConfigError, DeliveryError, OutcomeUnknown
from bot.models import MailMessage
from bot.text import one_line, redact

LOG = logging.getLogger(__name__)

_IMAGE_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF8", "gif"),
)


def build_mime(
    msg: MailMessage,
    *,
    sender: str,
    recipients: list[str],
    now: dt.datetime,
    message_id: str | None = None,
) -> email.message.EmailMessage:
    """The complete message, without sending anything.

    Structure: ``multipart/mixed`` (only with attachments) holding ``multipart/alternative``
    (text, then HTML; the HTML inside ``multipart/related`` with its inline images).
    """
    if not recipients:
        raise ValueError("build_mime needs at least one recipient")
    mime = email.message.EmailMessage(policy=email.policy.SMTP)
    mime["From"] = sender
    mime["To"] = ", ".join(recipients)
    mime["Subject"] = " ".join(msg.subject.split())
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    mime["Date"] = email.utils.format_datetime(now)
    mime["Message-ID"] = _message_id(message_id, sender)
    mime["Auto-Submitted"] = "auto-generated"

    mime.set_content(msg.text)
    mime.add_alternative(msg.html, subtype="html")
    if msg.inline_images:
        html_part = list(mime.iter_parts())[1]
        for cid, data in msg.inline_images.items():
            subtype = _image_subtype(data)
            html_part.add_related(
                data,
                maintype="image",
                subtype=subtype,
                cid=f"<{cid.strip('<>')}>",
                disposition="inline",
                filename=f"{cid.strip('<>')}.{subtype}",
            )
    for filename, mime_type, payload in msg.attachments:
        maintype, _, subtype = mime_type.partition("/")
        mime.add_attachment(
            payload,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=filename,
        )
    return mime


def _message_id(message_id: str | None, sender: str) -> str:
    if message_id:
        return message_id if message_id.startswith("<") else f"<{message_id}>"
    address = email.utils.parseaddr(sender)[1]
    domain = address.rpartition("@")[2] or None
    return email.utils.make_msgid(domain=domain)


def _image_subtype(data: bytes) -> str:
    for magic, subtype in _IMAGE_TYPES:
        if data.startswith(magic):
            return subtype
    return "png"


class SmtpSender:
    """Sends MIME messages; every failure is one ``DeliveryError`` line without the password."""

    def __init__(self, settings: EmailConfig, *, deadline: float | None = None) -> None:
        """``deadline``: seconds the whole session (connect to QUIT) may take; default three
        times ``settings.timeout``."""
        if not settings.host:
            raise ConfigError("email.host: required to send e-mail")
        self._s = settings
        self._host = settings.host or ""
        self._where = f"{self._host}:{settings.effective_port}"
        self._deadline = deadline if deadline is not None else 3 * settings.timeout
        self._warned_clear = False

    def send(self, mime: email.message.EmailMessage, recipients: list[str]) -> str:
        """Send ``mime`` to ``recipients`` (the envelope); return its Message-ID.

        ``OutcomeUnknown`` when the connection failed or timed out in or after DATA (the
        server may have taken the message); ``DeliveryError`` for every other failure.
        """
        if not recipients:
            raise DeliveryError(f"SMTP {self._where} failed: no recipients")
        message_id = str(mime.get("Message-ID", ""))
        watchdog = _Watchdog(self._deadline)
        smtp: _Tracked | None = None
        try:
            with watchdog:
                smtp = self._open(watchdog)
                try:
                    refused = smtp.send_message(mime, to_addrs=recipients)
                finally:
                    _close(smtp)
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            reason = self._reason(exc)
            if watchdog.fired:
                reason = f"no end to the session within {self._deadline:g}s"
            if smtp is not None and smtp.in_data and not isinstance(
                exc, smtplib.SMTPResponseException
            ):
                raise OutcomeUnknown(
                    f"SMTP {self._where}: {reason} during DATA; the server may have taken "
                    f"{message_id}, so it is sent again later under the same Message-ID"
                ) from exc
            raise DeliveryError(f"SMTP {self._where} failed: {reason}") from exc
        if refused:
            raise DeliveryError(
                f"SMTP {self._where} refused {_refused(refused)} "
                f"(accepted for the other {len(recipients) - len(refused)} recipient(s))"
            )
        LOG.debug(
            "E-mail %s sent through %s to %d recipient(s)", message_id, self._where, len(recipients)
        )
        return message_id

    def check(self) -> str:
        """Connect, secure, log in, NOOP and quit; return what worked as one line."""
        watchdog = _Watchdog(self._deadline)
        try:
            with watchdog:
                smtp = self._open(watchdog)
                try:
                    code, reply = smtp.noop()
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, reply)
                    tls = smtp.sock.version() if isinstance(smtp.sock, ssl.SSLSocket) else None
                finally:
                    _close(smtp)
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            reason = self._reason(exc)
            if watchdog.fired:
                reason = f"no end to the session within {self._deadline:g}s"
            raise DeliveryError(f"SMTP {self._where} failed: {reason}") from exc
        how = {"starttls": "STARTTLS", "ssl": "implicit TLS", "none": "no TLS"}[self._s.security]
        parts = [f"{self._where} ({how}{', ' + tls if tls else ''})"]
        parts.append(f"logged in as {self._s.username}" if self._s.username else "no login")
        return ", ".join(parts)

    # -- connection ------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=self._s.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"email.ca_file: cannot load {self._s.ca_file}: {exc.strerror or exc}"
            ) from exc

    def _open(self, watchdog: _Watchdog) -> _Tracked:
        s = self._s
        port = s.effective_port
        # each read waits at most `timeout`, and never past the deadline
        timeout = min(s.timeout, self._deadline)
        smtp: _Tracked
        if s.security == "ssl":
            smtp = _TrackedSSL(timeout=timeout, context=self._context())
        else:
            if s.security == "starttls":
                context = self._context()
            elif not self._warned_clear:
                self._warned_clear = True
                LOG.warning(
                    "email.security is none: mail to %s goes unencrypted%s",
                    self._where,
                    " and so does the password" if s.username else "",
                )
            smtp = _TrackedPlain(timeout=timeout)
        # smtplib names the TLS server from the constructor's host, which would also connect
        # before the watchdog could watch: connect separately (the greeting may never end)
        smtp._host = self._host
        watchdog.watch(smtp)
        try:
            code, reply = smtp.connect(self._host, port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            smtp.ehlo()
            if s.security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if s.username:
                smtp.login(s.username, s.password or "")
        except BaseException:
            _close(smtp)
            raise
        return smtp

    def _reason(self, exc: BaseException) -> str:
        return one_line(redact(_describe(exc, self._s.timeout), [self._s.password]))


class _Tracked(smtplib.SMTP):
    """An SMTP connection that remembers whether the DATA command has begun."""

    in_data = False
    _host: str  # smtplib's own attribute: the name TLS verifies

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.in_data = True
        return super().data(msg)


class _TrackedPlain(_Tracked):
    pass


class _TrackedSSL(_Tracked, smtplib.SMTP_SSL):
    pass


class _Watchdog:
    """Ends an SMTP session that outlives its deadline: shuts its socket down, so a read
    blocked on a trickling server returns at once (and ``fired`` says why)."""

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._smtp: smtplib.SMTP | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(deadline, self._fire)
        self._timer.daemon = True

    def watch(self, smtp: smtplib.SMTP) -> None:
        with self._lock:
            self._smtp = smtp
            if self.fired:
                self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        sock = self._smtp.sock if self._smtp is not None else None
        if sock is not None:
            try:
                # the plain socket's shutdown, also for TLS: the TLS layer then reads EOF
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _close(smtp: smtplib.SMTP) -> None:
    """QUIT politely; if the server is already gone, just close the socket."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(
        exc.__context__, TimeoutError
    ):
        exc = exc.__context__  # smtplib words a read timeout as "unexpectedly closed"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"all recipients refused: {_refused(exc.recipients)}"
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return f"sender {exc.sender} refused: {exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"login refused: {exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return str(exc) or "the server does not support a needed extension"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _refused(recipients: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(
        f"{addr} ({code} {_text(reply)})" for addr, (code, reply) in sorted(recipients.items())
    )
