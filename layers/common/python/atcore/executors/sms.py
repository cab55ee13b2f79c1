"""send_sms: one text message through Amazon SNS (publish to a phone number), or the local outbox.

Payload: {"phone_number": E.164 "+15551234567", "message": str (1-1600 chars), "sender_id"?: str}
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

from . import aws, outbox
from .payloads import PAYLOAD_CONFIG, parse_payload

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_SENDER_ID = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9]{1,11}")  # SNS: 1-11 alphanumerics, at least one letter


class SmsPayload(BaseModel):
    model_config = PAYLOAD_CONFIG

    phone_number: str
    message: str = Field(min_length=1, max_length=1600)
    sender_id: str | None = None

    @field_validator("phone_number")
    @classmethod
    def _phone_number_is_e164(cls, number: str) -> str:
        if not _E164.fullmatch(number):
            raise ValueError('must be an E.164 phone number like "+15551234567"')
        return number

    @field_validator("sender_id")
    @classmethod
    def _sender_id_is_valid(cls, sender_id: str | None) -> str | None:
        if sender_id is not None and not _SENDER_ID.fullmatch(sender_id):
            raise ValueError("must be 1-11 letters or digits, with at least one letter")
        return sender_id


def run(task_id: int, payload: object, attempt: int, *, deadline: float) -> dict[str, object]:
    sms = parse_payload(SmsPayload, payload)
    if not aws.delivery_enabled("sns"):
        outbox.deliver("sms", task_id, attempt, sms.model_dump())
        return {"delivery": "outbox"}
    with aws.sdk_call("SNS Publish", denied="the worker is not allowed to send SMS"):
        response = aws.client("sns", deadline).publish(**sns_request(sms))
    return {"delivery": "sns", "message_id": response.get("MessageId")}


def sns_request(sms: SmsPayload) -> dict[str, object]:
    request: dict[str, object] = {"PhoneNumber": sms.phone_number, "Message": sms.message}
    if sms.sender_id:
        request["MessageAttributes"] = {
            "AWS.SNS.SMS.SenderID": {"DataType": "String", "StringValue": sms.sender_id},
        }
    return request
