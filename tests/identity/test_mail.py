import stat
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from identity.mail import FileMailer, MailError, SmtpMailer, build_message, read_outbox
from tests.conftest import free_port


def _message(subject: str = "Confirm your email address") -> EmailMessage:
    return build_message(
        sender="One Sign In <no-reply@onesignin.example>",
        to="ada@example.org",
        subject=subject,
        text="Open https://onesignin.example/verify?token=abc to confirm.\n",
        html='<p><a href="https://onesignin.example/verify?token=abc">Confirm</a></p>\n',
    )


class RecordingHandler:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Controller, RecordingHandler]]:
    handler = RecordingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, handler
    finally:
        controller.stop()


class TestBuildMessage:
    def test_sets_headers(self) -> None:
        message = _message()

        assert message["From"] == "One Sign In <no-reply@onesignin.example>"
        assert message["To"] == "ada@example.org"
        assert message["Subject"] == "Confirm your email address"
        assert message["Date"] is not None
        assert message["Message-ID"].endswith("@onesignin.example>")

    def test_has_text_and_html_alternatives(self) -> None:
        message = _message()

        assert message.get_content_type() == "multipart/alternative"
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        assert text is not None and "token=abc" in text.get_content()
        assert html is not None and "<a href=" in html.get_content()

    def test_text_only(self) -> None:
        message = build_message(
            sender="a@example.org", to="b@example.org", subject="Hi", text="Hello\n"
        )

        assert message.get_content_type() == "text/plain"
        assert message.get_content() == "Hello\n"

    def test_refuses_header_injection(self) -> None:
        with pytest.raises(ValueError):
            build_message(
                sender="a@example.org",
                to="b@example.org",
                subject="Hi\r\nBcc: c@example.org",
                text="Hello\n",
            )


class TestFileMailer:
    async def test_writes_a_message_that_read_outbox_returns(
        self, tmp_path: Path
    ) -> None:
        outbox = tmp_path / "outbox"
        mailer = FileMailer(outbox)

        await mailer.send(_message())

        [message] = read_outbox(outbox)
        assert message["Subject"] == "Confirm your email address"
        assert message["To"] == "ada@example.org"
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        assert "https://onesignin.example/verify?token=abc" in body.get_content()

    async def test_creates_a_private_directory(self, tmp_path: Path) -> None:
        outbox = tmp_path / "outbox"

        await FileMailer(outbox).send(_message())

        assert stat.S_IMODE(outbox.stat().st_mode) == 0o700
        [path] = outbox.iterdir()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    async def test_file_names_are_unique_and_sorted_by_time(
        self, tmp_path: Path
    ) -> None:
        mailer = FileMailer(tmp_path)

        for number in range(5):
            await mailer.send(_message(subject=f"Message {number}"))

        names = [path.name for path in tmp_path.iterdir()]
        assert len(set(names)) == 5
        assert all(name.endswith(".eml") for name in names)
        subjects = [message["Subject"] for message in read_outbox(tmp_path)]
        assert subjects == [f"Message {number}" for number in range(5)]

    async def test_raises_mail_error_when_the_outbox_cannot_be_written(
        self, tmp_path: Path
    ) -> None:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")

        with pytest.raises(MailError) as raised:
            await FileMailer(blocker / "outbox").send(_message())

        assert isinstance(raised.value.__cause__, OSError)

    def test_read_outbox_of_a_missing_directory_is_empty(self, tmp_path: Path) -> None:
        assert read_outbox(tmp_path / "missing") == []

    def test_read_outbox_ignores_other_files(self, tmp_path: Path) -> None:
        (tmp_path / ".partial.tmp").write_text("Subject: partial\n\n")
        (tmp_path / "notes.txt").write_text("Subject: notes\n\n")

        assert read_outbox(str(tmp_path)) == []


class TestSmtpMailer:
    async def test_delivers_to_an_smtp_server(
        self, smtp_server: tuple[Controller, RecordingHandler]
    ) -> None:
        controller, handler = smtp_server
        mailer = SmtpMailer(
            host=controller.hostname, port=controller.port, start_tls=False, timeout=5
        )

        await mailer.send(_message())

        [envelope] = handler.envelopes
        assert envelope.mail_from == "no-reply@onesignin.example"
        assert envelope.rcpt_tos == ["ada@example.org"]
        assert isinstance(envelope.content, bytes)
        assert b"Subject: Confirm your email address" in envelope.content
        assert b"token=abc" in envelope.content

    async def test_refuses_when_starttls_is_required_but_not_offered(
        self, smtp_server: tuple[Controller, RecordingHandler]
    ) -> None:
        controller, handler = smtp_server
        mailer = SmtpMailer(host=controller.hostname, port=controller.port, timeout=5)

        with pytest.raises(MailError):
            await mailer.send(_message())

        assert handler.envelopes == []

    async def test_raises_mail_error_when_the_server_is_unreachable(self) -> None:
        mailer = SmtpMailer(
            host="127.0.0.1", port=free_port(), start_tls=False, timeout=5
        )

        with pytest.raises(MailError) as raised:
            await mailer.send(_message())

        assert str(raised.value) == "The email could not be sent."
        assert isinstance(raised.value.__cause__, OSError)

    def test_refuses_both_tls_modes(self) -> None:
        with pytest.raises(ValueError):
            SmtpMailer(host="localhost", start_tls=True, use_tls=True)
