"""Outgoing mail.

Messages are built with :func:`build_message` and handed to a :class:`Mailer`.
:class:`FileMailer` is the development default: it drops every message into an
outbox directory as an ``.eml`` file, which :func:`read_outbox` reads back.
:class:`SmtpMailer` delivers through an SMTP server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiosmtplib

from identity.i18n import _, current
from identity.private_files import private_dir

if TYPE_CHECKING:
    from identity.settings import Settings

__all__ = [
    "FileMailer",
    "MailError",
    "Mailer",
    "SmtpMailer",
    "build_message",
    "if_not_you",
    "read_outbox",
]

_OUTBOX_SUFFIX = ".eml"


class MailError(Exception):
    """A message could not be delivered.

    The message of this exception is safe to show to users; the underlying
    cause, if any, is chained.
    """


class Mailer(Protocol):
    """Something that sends email messages."""

    async def send(self, message: EmailMessage) -> None:
        """Send ``message`` or raise :class:`MailError`."""
        ...


def build_message(
    *,
    sender: str,
    to: str,
    subject: str,
    text: str,
    html: str | None = None,
) -> EmailMessage:
    """Return a message with a plain-text body and, optionally, an HTML alternative."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=_domain_of(sender))
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    # The language it is written in (RFC 3282): the recipient's, or the page's that caused it.
    # (After the content: setting the content drops the Content-* headers set before.)
    message["Content-Language"] = current()
    return message


def if_not_you(settings: Settings) -> str:
    """The closing lines of a notice about a change to the account, in the current language."""
    return _(
        "If this was not you, reset your password at %(reset)s and check your account at %(account)s.\n",
        reset=settings.issuer + "/reset-password",
        account=settings.issuer + "/account",
    )


def _domain_of(address: str) -> str:
    _name, addr_spec = parseaddr(address)
    _local, at, domain = addr_spec.rpartition("@")
    return domain if at and domain else "localhost"


class FileMailer:
    """Writes each message as an ``.eml`` file into an outbox directory.

    File names start with the UTC time of sending, so sorting them by name
    sorts the messages by time.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, message: EmailMessage) -> None:
        """Write ``message`` into the outbox."""
        try:
            await asyncio.to_thread(self._write, message.as_bytes())
        except OSError as exc:
            raise MailError("The email could not be written to the outbox.") from exc

    def _write(self, data: bytes) -> None:
        private_dir(self.directory)
        path = self.directory / _outbox_name()
        # mkstemp creates the file 0600: a message (with its links) is its owner's alone.
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _outbox_name() -> str:
    timestamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{timestamp}-{secrets.token_hex(4)}{_OUTBOX_SUFFIX}"


def read_outbox(directory: Path | str) -> list[EmailMessage]:
    """Return the messages in an outbox directory, oldest first."""
    outbox = Path(directory)
    if not outbox.is_dir():
        return []
    parser = BytesParser(EmailMessage, policy=policy.default)
    return [
        parser.parsebytes(path.read_bytes()) for path in sorted(outbox.glob(f"*{_OUTBOX_SUFFIX}"))
    ]


class SmtpMailer:
    """Delivers messages through an SMTP server.

    ``use_tls`` connects with implicit TLS (usually port 465); ``start_tls``
    upgrades a plain connection with STARTTLS (usually port 587) and fails if
    the server does not offer it. Without a ``port`` the usual port for the
    chosen mode is used.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        start_tls: bool = True,
        use_tls: bool = False,
        timeout: float = 30.0,
    ) -> None:
        if start_tls and use_tls:
            raise ValueError("Choose either start_tls or use_tls, not both.")
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self.start_tls = start_tls
        self.use_tls = use_tls
        self.timeout = timeout

    async def send(self, message: EmailMessage) -> None:
        """Deliver ``message`` to all of its recipients or raise :class:`MailError`."""
        try:
            refused, _response = await aiosmtplib.send(
                message,
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self._password,
                start_tls=self.start_tls,
                use_tls=self.use_tls,
                timeout=self.timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise MailError("The email could not be sent.") from exc
        if refused:
            raise MailError("The email could not be delivered to every recipient.")


def mailer_for(settings: Settings) -> Mailer:
    """The mailer the configuration names: SMTP, or .eml files under the data dir."""
    if settings.mail_backend == "smtp":
        return SmtpMailer(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            start_tls=settings.smtp_starttls,
            use_tls=settings.smtp_tls,
        )
    return FileMailer(private_dir(settings.data_dir) / "mail")
