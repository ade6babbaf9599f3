"""Builds MIME from a rendered MailMessage (pure) and sends it over SMTP with verified TLS."""

from __future__ import annotations

import datetime as dt
import email.message
import email.policy
import email.utils
import logging
import smtplib
import socket
import ssl

from bot.config import EmailConfig
from bot.errors import ConfigError, DeliveryError
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

    def __init__(self, settings: EmailConfig) -> None:
        if not settings.host:
            raise ConfigError("email.host: required to send e-mail")
        self._s = settings
        self._host = settings.host or ""
        self._where = f"{self._host}:{settings.effective_port}"
        self._warned_clear = False

    def send(self, mime: email.message.EmailMessage, recipients: list[str]) -> str:
        """Send ``mime`` to ``recipients`` (the envelope); return its Message-ID."""
        if not recipients:
            raise DeliveryError(f"SMTP {self._where} failed: no recipients")
        message_id = str(mime.get("Message-ID", ""))
        try:
            smtp = self._open()
            try:
                refused = smtp.send_message(mime, to_addrs=recipients)
            finally:
                _close(smtp)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {self._where} failed: {self._reason(exc)}") from exc
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
        try:
            smtp = self._open()
            try:
                code, reply = smtp.noop()
                if code != 250:
                    raise smtplib.SMTPResponseException(code, reply)
                tls = smtp.sock.version() if isinstance(smtp.sock, ssl.SSLSocket) else None
            finally:
                _close(smtp)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {self._where} failed: {self._reason(exc)}") from exc
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

    def _open(self) -> smtplib.SMTP:
        s = self._s
        port = s.effective_port
        smtp: smtplib.SMTP
        if s.security == "ssl":
            smtp = smtplib.SMTP_SSL(self._host, port, timeout=s.timeout, context=self._context())
        elif s.security == "starttls":
            context = self._context()
            smtp = smtplib.SMTP(self._host, port, timeout=s.timeout)
        else:
            if not self._warned_clear:
                self._warned_clear = True
                LOG.warning(
                    "email.security is none: mail to %s goes unencrypted%s",
                    self._where,
                    " and so does the password" if s.username else "",
                )
            smtp = smtplib.SMTP(self._host, port, timeout=s.timeout)
        try:
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


def _close(smtp: smtplib.SMTP) -> None:
    """QUIT politely; if the server is already gone, just close the socket."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _describe(exc: BaseException, timeout: float) -> str:
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
