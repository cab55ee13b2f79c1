"""send_email (alias email): one e-mail through Amazon SES v2, or the local outbox.

Payload: {"to": str | [str], "subject": str, "text"? (alias "body"), "html"?, "from"?, "reply_to"?, "cc"?, "bcc"?}
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from ..text import has_control_characters
from . import aws, outbox
from .payloads import PAYLOAD_CONFIG, FieldError, parse_payload, payload_error
from .settings import executor_settings

MAX_RECIPIENTS = 50  # SES's limit for to + cc + bcc of one message
MAX_SUBJECT_CHARS = 998  # RFC 5322 line length
MAX_ADDRESS_CHARS = 320

_BARE_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")
_NAMED_ADDRESS = re.compile(r"[^<>]*<([^<>]+)>")  # "Display Name <user@example.com>"


def check_address(value: str) -> str:
    address = bare_address(value)
    if len(value) > MAX_ADDRESS_CHARS or has_control_characters(value) or not _BARE_ADDRESS.fullmatch(address):
        raise ValueError("must be an email address")
    return value


Address = Annotated[str, AfterValidator(check_address)]


class EmailPayload(BaseModel):
    model_config = PAYLOAD_CONFIG

    to: list[Address] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    subject: str = Field(min_length=1, max_length=MAX_SUBJECT_CHARS)
    text: str | None = None
    html: str | None = None
    sender: Address | None = Field(default=None, alias="from")
    reply_to: list[Address] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    cc: list[Address] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    bcc: list[Address] = Field(default_factory=list, max_length=MAX_RECIPIENTS)

    @model_validator(mode="before")
    @classmethod
    def _body_means_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and "body" in data:
            if "text" in data:
                raise FieldError("body", "give either text or body (its alias), not both")
            data = {**data, "text": data["body"]}
        return data

    @field_validator("to", "reply_to", "cc", "bcc", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("subject")
    @classmethod
    def _subject_is_one_line(cls, subject: str) -> str:
        if has_control_characters(subject):
            raise ValueError("must be a single line without control characters")
        return subject

    @model_validator(mode="after")
    def _deliverable(self) -> EmailPayload:
        if self.text is None and self.html is None:
            raise FieldError("text", "at least one of text or html is required")
        if len(self.to) + len(self.cc) + len(self.bcc) > MAX_RECIPIENTS:
            raise FieldError("to", f"at most {MAX_RECIPIENTS} recipients in to, cc and bcc together")
        return self


def run(task_id: int, payload: object, attempt: int, *, deadline: float) -> dict[str, object]:
    email = parse_payload(EmailPayload, payload)
    sender = email.sender or executor_settings().email_from
    if sender is None:
        raise payload_error("from", "is required (no default sender: AT_EMAIL_FROM is not set)")
    check_sender_allowed(sender)
    if not aws.delivery_enabled("sesv2"):
        outbox.deliver("email", task_id, attempt, outbox_message(email, sender))
        return {"delivery": "outbox"}
    with aws.sdk_call("SES SendEmail", denied="the worker is not allowed to send from this address"):
        response = aws.client("sesv2", deadline).send_email(**ses_request(email, sender))
    return {"delivery": "ses", "message_id": response.get("MessageId")}


def check_sender_allowed(sender: str) -> None:
    """On AWS the worker may send only from the stack's senders (its IAM policy says so too): refuse
    others here, with a message the task's owner can act on, instead of an AccessDenied from SES."""
    allowed = executor_settings().email_allowed_from
    if allowed and bare_address(sender).lower() not in allowed:
        raise payload_error("from", "is not one of this deployment's allowed senders (EmailFrom, AllowedEmailSenders)")


def bare_address(value: str) -> str:
    """ "Ann <ann@example.com>" -> "ann@example.com" (what SES's ses:FromAddress condition compares)."""
    named = _NAMED_ADDRESS.fullmatch(value)
    return named.group(1) if named else value


def ses_request(email: EmailPayload, sender: str) -> dict[str, Any]:
    destination: dict[str, list[str]] = {"ToAddresses": email.to}
    if email.cc:
        destination["CcAddresses"] = email.cc
    if email.bcc:
        destination["BccAddresses"] = email.bcc
    body = {}
    if email.text is not None:
        body["Text"] = {"Data": email.text, "Charset": "UTF-8"}
    if email.html is not None:
        body["Html"] = {"Data": email.html, "Charset": "UTF-8"}
    request: dict[str, Any] = {
        "FromEmailAddress": sender,
        "Destination": destination,
        "Content": {"Simple": {"Subject": {"Data": email.subject, "Charset": "UTF-8"}, "Body": body}},
    }
    if email.reply_to:
        request["ReplyToAddresses"] = email.reply_to
    return request


def outbox_message(email: EmailPayload, sender: str) -> dict[str, object]:
    return {
        "from": sender,
        "to": email.to,
        "cc": email.cc,
        "bcc": email.bcc,
        "reply_to": email.reply_to,
        "subject": email.subject,
        "text": email.text,
        "html": email.html,
    }
