"""Move trace events from the dead-letter queue back to the trace queue for another delivery.

`python -m tools.redrive_traces --dlq-arn <arn> [--region R]` (`make redrive-traces`; the API
stack prints the exact command as `TraceRedriveCommand`). It starts SQS's own DLQ redrive
(StartMessageMoveTask): with no destination, SQS returns each message to the queue it came
from. The forwarder then delivers them; traces older than Opik's window get a new id
(forwarder.opik_mapping.relocate_if_late), so a redrive works days later too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def start_redrive(sqs: Any, dlq_arn: str) -> str:
    """Start moving every message of `dlq_arn` back to its source queue; the task handle."""
    return str(sqs.start_message_move_task(SourceArn=dlq_arn)["TaskHandle"])


def main(argv: Sequence[str] | None = None, sqs: Any | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.redrive_traces", description=__doc__)
    parser.add_argument("--dlq-arn", required=True, help="the trace dead-letter queue's ARN")
    parser.add_argument("--region", help="AWS region (default: the session's)")
    args = parser.parse_args(argv)
    client = sqs or boto3.client("sqs", region_name=args.region)
    try:
        handle = start_redrive(client, args.dlq_arn)
    except (ClientError, BotoCoreError) as exc:
        print(f"redrive not started: {exc}", file=sys.stderr)
        return 1
    print(
        f"redrive started (task {handle}); follow it with `aws sqs list-message-move-tasks "
        f"--source-arn {args.dlq_arn}`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
