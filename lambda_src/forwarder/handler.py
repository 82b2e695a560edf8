"""Forwarder Lambda: each SQS record is one trace event; Opik gets it or the record fails.

Partial batch responses: a failed record is returned in `batchItemFailures`, SQS makes it
visible again, and after the queue's maxReceiveCount it goes to the DLQ; the rest of the batch
is acknowledged. Nothing is acknowledged that Opik did not accept.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.parameters import get_secret
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from forwarder.opik_mapping import (
    MalformedEvent,
    OpikRejected,
    OpikUnavailable,
    OpikWriter,
    build_rest_client,
    parse_event,
)

OPIK_CLOUD_URL = "https://www.comet.com/opik/api"
SECRET_CACHE_S = 300
"""A rotated Opik key is picked up within five minutes without a cold start."""

logger = Logger(utc=True)
# A batch that fails as a whole (Opik down) is answered like any other, with every id in
# batchItemFailures, instead of raising: same retry by SQS, without a stack trace per batch.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


class Settings(BaseModel):
    """Forwarder environment, read once per cold start."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    opik_api_key_secret: str | None = Field(default=None, validation_alias="OPIK_API_KEY_SECRET")
    opik_api_key: SecretStr | None = Field(default=None, validation_alias="OPIK_API_KEY")
    """Local runs and tests only; the stack passes the secret's name, never the key."""
    opik_workspace: str = Field(default="default", validation_alias="OPIK_WORKSPACE")
    opik_project_name: str = Field(default="llm-twin", validation_alias="OPIK_PROJECT_NAME")
    opik_url_override: str = Field(default=OPIK_CLOUD_URL, validation_alias="OPIK_URL_OVERRIDE")
    opik_timeout_s: int = Field(default=10, ge=1, le=60, validation_alias="OPIK_TIMEOUT_S")
    opik_trace_window_h: int = Field(default=24, ge=2, validation_alias="OPIK_TRACE_WINDOW_H")
    """Opik's trace-id age window (24 h unless the Opik server was configured otherwise)."""

    @classmethod
    def from_env(cls) -> Settings:
        return cls.model_validate(dict(os.environ))

    def api_key(self) -> str | None:
        if self.opik_api_key_secret:
            return str(get_secret(self.opik_api_key_secret, max_age=SECRET_CACHE_S))
        return self.opik_api_key.get_secret_value() if self.opik_api_key else None


@cache
def writer() -> OpikWriter:
    """One REST client per container: settings, secret and connection pool survive warm starts."""
    settings = Settings.from_env()
    rest = build_rest_client(
        url=settings.opik_url_override,
        workspace=settings.opik_workspace,
        api_key=settings.api_key(),
    )
    return OpikWriter(
        rest,
        project_name=settings.opik_project_name,
        timeout_s=settings.opik_timeout_s,
        trace_window_s=settings.opik_trace_window_h * 3600,
    )


def record_handler(record: SQSRecord) -> None:
    log = {
        "message_id": record.message_id,
        "receive_count": record.attributes.approximate_receive_count,
    }
    try:
        event = parse_event(record.body)
    except MalformedEvent as exc:
        logger.error("malformed trace event", extra={**log, "problem": str(exc)})
        raise
    try:
        writer().write(event)
    except (OpikUnavailable, OpikRejected) as exc:
        logger.warning(
            "trace not delivered to Opik",
            extra={**log, "trace_id": event.trace_id, "reason": str(exc)},
        )
        raise
    logger.info("trace delivered", extra={**log, "trace_id": event.trace_id})


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    writer().begin_batch()
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
