"""Real aiosmtpd SMTP servers on loopback: plain, AUTH, STARTTLS and implicit TLS.

``SmtpServer.hold_after_data(n)`` makes the server store the next ``n`` messages and then
hold the final answer to DATA until ``release()`` (a server that answers after the client's
timeout). ``trickle_smtp`` is a server that sends its greeting one byte at a time.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

USERNAME = "reports@example.com"
PASSWORD = "s3cret-Passw0rd"
# RCPT to any address at this domain is refused with 550, to test partial refusals
REFUSED_DOMAIN = "refused.example"


@dataclass
class Received:
    """One message as the server got it: the envelope and the raw DATA bytes."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None = None
    tls: bool = False

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Handler:
    def __init__(self, state: SmtpServer) -> None:
        self.state = state
        self.messages = state.messages

    async def handle_RCPT(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.lower().endswith("@" + REFUSED_DOMAIN):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.messages.append(
            Received(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                login=login.decode() if isinstance(login, bytes) else login,
                tls=_is_tls(server, session),
            )
        )
        if self.state.take_hold():
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.state.released.wait, 30)
        return "250 Message accepted for delivery"


def _is_tls(server: SMTP, session: Session) -> bool:
    """STARTTLS sets ``session.ssl``; an implicit-TLS listener only shows on the transport."""
    transport = server.transport
    implicit = transport is not None and transport.get_extra_info("ssl_object") is not None
    return session.ssl is not None or implicit


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    if (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USERNAME.encode()
        and auth_data.password == PASSWORD.encode()
    ):
        return AuthResult(success=True, auth_data=auth_data)
    return AuthResult(success=False, handled=False)


class _Controller(Controller):
    """Binds port 0 and learns the real port before aiosmtpd's start-up probe connects."""

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()

    def factory(self) -> SMTP:
        # AUTH without TLS is what the plain AUTH fixture is for (loopback only); aiosmtpd warns
        # about it in its own thread, where pytest's "warnings are errors" would kill start-up.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return super().factory()


@dataclass
class SmtpServer:
    host: str
    port: int
    messages: list[Received] = field(default_factory=list)
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    released: threading.Event = field(default_factory=threading.Event)
    _holds: int = 0

    def hold_after_data(self, n: int = 1) -> None:
        """Store the next ``n`` messages, then answer their DATA only after ``release()``."""
        self._holds += n

    def take_hold(self) -> bool:
        if self._holds > 0:
            self._holds -= 1
            return True
        return False

    def release(self) -> None:
        self.released.set()


@dataclass(frozen=True)
class SmtpPki:
    """A throwaway CA with a cert for 127.0.0.1/localhost, plus an unrelated CA."""

    server_context: ssl.SSLContext
    ca_file: str
    other_ca_file: str


@contextmanager
def _run(**smtp_kwargs: Any) -> Iterator[SmtpServer]:
    state = SmtpServer(host="127.0.0.1", port=0)
    controller = _Controller(
        _Handler(state),
        hostname="127.0.0.1",
        port=0,
        server_hostname="fake-smtp.test",
        ready_timeout=10,
        **smtp_kwargs,
    )
    controller.start()
    state.port = controller.port
    try:
        yield state
    finally:
        state.release()
        controller.stop()


@pytest.fixture(scope="session")
def smtp_pki(tmp_path_factory: pytest.TempPathFactory) -> SmtpPki:
    folder: Path = tmp_path_factory.mktemp("smtp-pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other_file = folder / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_file))
    return SmtpPki(context, str(ca_file), str(other_file))


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """Plain SMTP, no AUTH, no TLS."""
    with _run() as server:
        yield server


@pytest.fixture
def smtp_auth_server() -> Iterator[SmtpServer]:
    """Plain SMTP that requires AUTH (allowed without TLS: loopback testing only)."""
    with _run(authenticator=_authenticator, auth_required=True, auth_require_tls=False) as server:
        server.username, server.password = USERNAME, PASSWORD
        yield server


@pytest.fixture
def smtp_tls_server(smtp_pki: SmtpPki) -> Iterator[SmtpServer]:
    """SMTP with STARTTLS required (self-signed test CA in ``.ca_file``) and AUTH."""
    with _run(
        tls_context=smtp_pki.server_context,
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
    ) as server:
        server.ca_file = smtp_pki.ca_file
        server.username, server.password = USERNAME, PASSWORD
        yield server


@pytest.fixture
def smtps_server(smtp_pki: SmtpPki) -> Iterator[SmtpServer]:
    """Implicit TLS (SMTPS) with AUTH."""
    with _run(
        ssl_context=smtp_pki.server_context,
        authenticator=_authenticator,
        auth_required=True,
        # the whole session is TLS, but aiosmtpd only counts STARTTLS as TLS for AUTH
        auth_require_tls=False,
    ) as server:
        server.ca_file = smtp_pki.ca_file
        server.username, server.password = USERNAME, PASSWORD
        yield server


@pytest.fixture
def trickle_smtp() -> Iterator[SmtpServer]:
    """A server that sends "220 ..." one byte every 50 ms and never finishes its greeting."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                for byte in b"220 fake-smtp.test ESMTP" * 100:
                    if stop.is_set():
                        break
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break
                    time.sleep(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield SmtpServer(host="127.0.0.1", port=listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
