"""build_mime (pure) and SmtpSender against real aiosmtpd servers on loopback."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import socket
import time
from email.message import EmailMessage

import pytest

from bot.config import EmailConfig, parse_config
from bot.deliver.email import SmtpSender, build_mime
from bot.errors import ConfigError, DeliveryError, OutcomeUnknown
from bot.models import MailMessage
from tests.fake_smtp import REFUSED_DOMAIN, SmtpPki, SmtpServer

NOW = dt.datetime(2024, 5, 6, 7, 30, tzinfo=dt.UTC)
SENDER = "OpenRouter usage <usage@example.com>"
TO = ["alice@example.com", "bob@example.org"]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00fake-png-data" * 10
CSV = b"date,model,provider,usage\r\n2024-05-01,openai/gpt-4o,OpenAI,1.5\r\n"

MAIL = MailMessage(
    subject="OpenRouter weekly: $123.45 (+12.3%)",
    text="Spend this week: $123.45\n",
    html='<html><body><p>Spend this week: $123.45</p><img src="cid:chart-daily"></body></html>',
    inline_images={"chart-daily": PNG},
    attachments=[("activity-2024-04-29.csv", "text/csv", CSV)],
)


def mime(msg: MailMessage = MAIL, **kwargs: object) -> EmailMessage:
    options: dict = {"sender": SENDER, "recipients": TO, "now": NOW}
    options.update(kwargs)
    return build_mime(msg, **options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- build_mime ----------------------------------------------------------------------------


def test_mime_is_text_and_html_with_an_inline_chart_and_a_csv_attachment() -> None:
    m = mime()

    assert m.get_content_type() == "multipart/mixed"
    alternative, attachment = m.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    text, related = alternative.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, image = related.iter_parts()
    assert html.get_content_type() == "text/html"
    assert image.get_content_type() == "image/png"
    assert attachment.get_content_type() == "text/csv"


def test_build_mime_inline_image_is_referenced_by_html() -> None:
    related = mime().get_body(preferencelist=("related",))
    assert related is not None
    html, image = related.iter_parts()
    assert image["Content-ID"] == "<chart-daily>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == PNG
    assert 'src="cid:chart-daily"' in html.get_content()


def test_build_mime_attachment_and_bodies() -> None:
    m = mime()
    [attachment] = list(m.iter_attachments())
    assert attachment.get_filename() == "activity-2024-04-29.csv"
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_payload(decode=True) == CSV
    text = m.get_body(preferencelist=("plain",))
    assert text is not None and text.get_content() == MAIL.text


def test_mime_carries_from_to_subject_date_message_id_and_auto_submitted() -> None:
    m = mime(message_id="<weekly-2024-04-29.email-ops@usage.example.com>")

    assert m["From"] == SENDER
    assert [addr for _, addr in email.utils.getaddresses([str(m["To"])])] == TO
    assert m["Subject"] == MAIL.subject
    assert m["Date"] == "Mon, 06 May 2024 07:30:00 +0000"
    assert email.utils.parsedate_to_datetime(str(m["Date"])) == NOW
    assert m["Message-ID"] == "<weekly-2024-04-29.email-ops@usage.example.com>"
    assert m["Auto-Submitted"] == "auto-generated"
    assert m["MIME-Version"] == "1.0"


def test_build_mime_message_id_defaults_to_sender_domain_and_wraps_given_ids() -> None:
    generated = str(mime()["Message-ID"])
    assert generated.startswith("<") and generated.endswith("@example.com>")
    assert str(mime()["Message-ID"]) != generated
    assert mime(message_id="abc@x.example")["Message-ID"] == "<abc@x.example>"


def test_build_mime_is_deterministic_given_message_id() -> None:
    a = mime(message_id="<fixed@example.com>").as_bytes()
    b = mime(message_id="<fixed@example.com>").as_bytes()
    # only the MIME boundaries are random
    assert len(a) == len(b)
    assert b"\r\n" in a and b"\n" not in a.replace(b"\r\n", b"")


def test_build_mime_without_images_or_attachments_is_plain_alternative() -> None:
    m = mime(MailMessage(subject="s", text="t", html="<p>t</p>"))
    assert m.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in m.iter_parts()] == ["text/plain", "text/html"]


def test_build_mime_subject_cannot_inject_headers() -> None:
    m = mime(MailMessage(subject="hi\r\nBcc: evil@example.com", text="t", html="t"))
    assert m["Subject"] == "hi Bcc: evil@example.com"
    assert m["Bcc"] is None


def test_the_port_follows_security_and_bad_settings_are_config_errors() -> None:
    assert EmailConfig(host="h").effective_port == 587
    assert EmailConfig(host="h", security="ssl").effective_port == 465
    assert EmailConfig(host="h", security="none").effective_port == 25
    assert EmailConfig(host="h", port=2525).effective_port == 2525
    with pytest.raises(ConfigError, match="email.security"):
        parse_config({"email": {"host": "h", "security": "tls"}}, {})
    with pytest.raises(ConfigError, match="email.host"):
        SmtpSender(EmailConfig(host=None))
    assert "pw" not in repr(EmailConfig(host="h", username="u", password="pw"))


# -- sending -------------------------------------------------------------------------------


def plain(server: SmtpServer, **kwargs: object) -> EmailConfig:
    options: dict = {"host": server.host, "port": server.port, "security": "none", "timeout": 5}
    options.update(kwargs)
    return EmailConfig(**options)


def test_send_without_tls_delivers_returns_the_message_id_and_warns_once(
    smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture,
) -> None:
    m = mime(message_id="<one@example.com>")
    sender = SmtpSender(plain(smtp_server))

    with caplog.at_level(logging.WARNING, logger="bot.deliver.email"):
        assert sender.send(m, TO) == "<one@example.com>"
        sender.send(mime(), TO)

    assert len(smtp_server.messages) == 2
    got = smtp_server.messages[0]
    assert got.mail_from == "usage@example.com"
    assert got.rcpt_tos == TO
    received = got.message
    assert received["Message-ID"] == "<one@example.com>"
    assert received["Subject"] == MAIL.subject
    related = received.get_body(preferencelist=("related",))
    assert related is not None
    assert [p.get_content_type() for p in related.iter_parts()] == ["text/html", "image/png"]
    # security: none warns once per sender
    assert caplog.text.count("goes unencrypted") == 1


def test_send_logs_in_when_a_username_is_set(smtp_auth_server: SmtpServer) -> None:
    settings = plain(
        smtp_auth_server,
        username=smtp_auth_server.username,
        password=smtp_auth_server.password,
    )
    SmtpSender(settings).send(mime(), TO)

    [got] = smtp_auth_server.messages
    assert got.login == smtp_auth_server.username


def test_auth_required_without_login_fails(smtp_auth_server: SmtpServer) -> None:
    with pytest.raises(DeliveryError, match=r"failed: sender .* refused: 530"):
        SmtpSender(plain(smtp_auth_server)).send(mime(), TO)
    assert smtp_auth_server.messages == []


def test_wrong_password_is_delivery_error_without_password(
    smtp_auth_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-Passw0rd-42"
    settings = plain(smtp_auth_server, username=smtp_auth_server.username, password=wrong)

    with caplog.at_level(logging.DEBUG), pytest.raises(DeliveryError) as info:
        SmtpSender(settings).send(mime(), TO)

    text = str(info.value)
    assert text.startswith(f"SMTP 127.0.0.1:{smtp_auth_server.port} failed: login refused: 535")
    assert wrong not in text and wrong not in caplog.text
    assert "\n" not in text


def test_starttls_verified_with_ca_file(smtp_tls_server: SmtpServer) -> None:
    settings = EmailConfig(
        host=smtp_tls_server.host,
        port=smtp_tls_server.port,
        security="starttls",
        username=smtp_tls_server.username,
        password=smtp_tls_server.password,
        ca_file=smtp_tls_server.ca_file,
        timeout=5,
    )
    SmtpSender(settings).send(mime(), TO)

    [got] = smtp_tls_server.messages
    assert got.tls
    assert got.login == smtp_tls_server.username


def test_starttls_unknown_ca_fails_verification(
    smtp_tls_server: SmtpServer, smtp_pki: SmtpPki
) -> None:
    settings = EmailConfig(
        host=smtp_tls_server.host,
        port=smtp_tls_server.port,
        username=smtp_tls_server.username,
        password=smtp_tls_server.password,
        ca_file=smtp_pki.other_ca_file,
        timeout=5,
    )
    with pytest.raises(DeliveryError) as info:
        SmtpSender(settings).send(mime(), TO)
    assert "certificate verify failed" in str(info.value)
    assert smtp_tls_server.password is not None
    assert smtp_tls_server.password not in str(info.value)
    assert smtp_tls_server.messages == []


def test_starttls_hostname_must_match_certificate(
    smtp_tls_server: SmtpServer, smtp_pki: SmtpPki
) -> None:
    # the certificate names 127.0.0.1 and localhost; reach it under another name for the IP
    settings = EmailConfig(
        host="127.0.0.2",
        port=smtp_tls_server.port,
        ca_file=smtp_pki.ca_file,
        timeout=5,
    )
    with pytest.raises(DeliveryError):
        SmtpSender(settings).send(mime(), TO)


def test_starttls_not_offered_is_delivery_error(smtp_server: SmtpServer) -> None:
    settings = EmailConfig(host=smtp_server.host, port=smtp_server.port, timeout=5)
    with pytest.raises(DeliveryError, match="STARTTLS extension not supported"):
        SmtpSender(settings).send(mime(), TO)


def test_ssl_security_sends_over_implicit_tls_and_logs_in(smtps_server: SmtpServer) -> None:
    settings = EmailConfig(
        host=smtps_server.host,
        port=smtps_server.port,
        security="ssl",
        username=smtps_server.username,
        password=smtps_server.password,
        ca_file=smtps_server.ca_file,
        timeout=5,
    )
    sender = SmtpSender(settings)
    assert sender.check().startswith(f"127.0.0.1:{smtps_server.port} (implicit TLS, TLSv1.")
    sender.send(mime(), TO)
    [got] = smtps_server.messages
    assert got.tls and got.login == smtps_server.username


def test_connection_refused_is_one_delivery_error_line() -> None:
    port = free_port()
    settings = EmailConfig(host="127.0.0.1", port=port, security="none", timeout=5)
    with pytest.raises(DeliveryError) as info:
        SmtpSender(settings).send(mime(), TO)
    assert str(info.value) == f"SMTP 127.0.0.1:{port} failed: connection refused"


def test_partly_refused_recipients_are_named(smtp_server: SmtpServer) -> None:
    to = ["alice@example.com", f"ghost@{REFUSED_DOMAIN}"]
    with pytest.raises(DeliveryError) as info:
        SmtpSender(plain(smtp_server)).send(mime(recipients=to), to)

    assert f"ghost@{REFUSED_DOMAIN} (550 5.1.1 no such user)" in str(info.value)
    assert "other 1 recipient" in str(info.value)
    [got] = smtp_server.messages
    assert got.rcpt_tos == ["alice@example.com"]


def test_all_recipients_refused_is_a_delivery_error_and_nothing_is_sent(
    smtp_server: SmtpServer,
) -> None:
    to = [f"a@{REFUSED_DOMAIN}", f"b@{REFUSED_DOMAIN}"]
    with pytest.raises(DeliveryError, match="all recipients refused: a@refused.example"):
        SmtpSender(plain(smtp_server)).send(mime(recipients=to), to)
    assert smtp_server.messages == []


def test_unreadable_ca_file_is_config_error(smtp_tls_server: SmtpServer) -> None:
    settings = EmailConfig(
        host=smtp_tls_server.host, port=smtp_tls_server.port, ca_file="/nonexistent/ca.pem"
    )
    with pytest.raises(ConfigError, match="email.ca_file"):
        SmtpSender(settings).send(mime(), TO)


# -- unknown outcomes and deadlines ---------------------------------------------------------


def test_answer_after_the_timeout_in_data_is_an_unknown_outcome(smtp_server: SmtpServer) -> None:
    smtp_server.hold_after_data()
    m = mime(message_id="<held@example.com>")

    with pytest.raises(OutcomeUnknown) as info:
        SmtpSender(plain(smtp_server, timeout=0.2)).send(m, TO)

    assert str(info.value) == (
        f"SMTP 127.0.0.1:{smtp_server.port}: timed out after 0.2s during DATA; the server may "
        "have taken <held@example.com>, so it is sent again later under the same Message-ID")
    [got] = smtp_server.messages  # it did
    assert got.message["Message-ID"] == "<held@example.com>"


def test_a_refusal_before_data_is_a_plain_failure(smtp_auth_server: SmtpServer) -> None:
    with pytest.raises(DeliveryError) as info:
        SmtpSender(plain(smtp_auth_server)).send(mime(), TO)
    assert not isinstance(info.value, OutcomeUnknown)


def test_the_session_deadline_ends_a_trickling_server(trickle_smtp: SmtpServer) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        SmtpSender(plain(trickle_smtp, timeout=2), deadline=0.3).send(mime(), TO)
    assert time.monotonic() - started < 1.5  # the per-read timeout (2 s) never fired
    assert not isinstance(info.value, OutcomeUnknown)  # the greeting never ended: no DATA
    assert str(info.value) == (f"SMTP 127.0.0.1:{trickle_smtp.port} failed: no end to the "
                               "session within 0.3s")


def test_the_deadline_also_bounds_check(trickle_smtp: SmtpServer) -> None:
    with pytest.raises(DeliveryError, match="no end to the session within 0.3s"):
        SmtpSender(plain(trickle_smtp, timeout=2), deadline=0.3).check()


# -- check ---------------------------------------------------------------------------------


def test_check_reports_starttls_and_the_login_and_sends_nothing(
    smtp_tls_server: SmtpServer,
) -> None:
    settings = EmailConfig(
        host=smtp_tls_server.host,
        port=smtp_tls_server.port,
        username=smtp_tls_server.username,
        password=smtp_tls_server.password,
        ca_file=smtp_tls_server.ca_file,
        timeout=5,
    )
    description = SmtpSender(settings).check()
    assert description.startswith(f"127.0.0.1:{smtp_tls_server.port} (STARTTLS, TLSv1.")
    assert description.endswith(f"logged in as {smtp_tls_server.username}")
    assert smtp_tls_server.messages == []


def test_check_reports_no_tls_and_no_login(smtp_server: SmtpServer) -> None:
    assert SmtpSender(plain(smtp_server)).check() == (
        f"127.0.0.1:{smtp_server.port} (no TLS), no login"
    )


def test_check_with_a_wrong_password_fails_without_showing_it(smtp_auth_server: SmtpServer) -> None:
    settings = plain(smtp_auth_server, username="reports@example.com", password="nope-nope")
    with pytest.raises(DeliveryError, match="login refused") as info:
        SmtpSender(settings).check()
    assert "nope-nope" not in str(info.value)
