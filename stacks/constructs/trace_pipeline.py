"""Traces leave the request path through SQS; a forwarder Lambda delivers them to Opik (DESIGN 4).

A message that fails MAX_RECEIVES times goes to the dead-letter queue; nothing is dropped.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.bundling import LAMBDA_SRC, PythonBundle
from stacks.config import DeploymentConfig
from stacks.constructs.python_function import PythonFunction
from stacks.nag import acknowledge

MAX_MESSAGE_BYTES = 1_048_576  # SQS's maximum; the business Lambda trims events to fit it
MAX_RECEIVES = 5
BATCH_SIZE = 10
BATCH_WINDOW = Duration.seconds(5)
FORWARDER_TIMEOUT = Duration.seconds(60)  # a batch is at most BATCH_SIZE x (trace + spans) calls
# SQS requires the visibility timeout to be at least the consumer's timeout; 6x is AWS's advice.
VISIBILITY_TIMEOUT = Duration.seconds(6 * 60)
RETENTION = Duration.days(14)
FORWARDER_MEMORY_MB = 512
OPIK_TIMEOUT_S = 10
HASH_KEY_CHARS = 64
"""hash_query's HMAC key: 64 random letters and digits, about 380 bits (RFC 2104 asks for at
least the hash output, 256 bits for SHA-256)."""

FORWARDER_BUNDLE = PythonBundle(
    requirements=LAMBDA_SRC / "requirements-forwarder.txt",
    # Its lock is hand-listed (opik's declared dependencies come to 392 MB, over Lambda's
    # 250 MB; the REST client the forwarder uses imports none of them): see its .in file.
    packages=("forwarder", "trace_contract"),
)


class TracePipeline(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, deployment: DeploymentConfig):
        super().__init__(scope, construct_id)
        project = deployment.project
        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetters",
            queue_name=f"{project}-traces-dlq",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=RETENTION,
            removal_policy=RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.dead_letter_queue,
            "AwsSolutions-SQS3",
            "This is the dead-letter queue of the trace queue; it has no dead-letter queue itself.",
        )
        self.queue = sqs.Queue(
            self,
            "Traces",
            queue_name=f"{project}-traces",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            max_message_size_bytes=MAX_MESSAGE_BYTES,
            retention_period=RETENTION,
            visibility_timeout=VISIBILITY_TIMEOUT,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letter_queue, max_receive_count=MAX_RECEIVES
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )

        self.opik_secret = (
            secretsmanager.Secret.from_secret_name_v2(
                self, "OpikApiKey", deployment.opik_api_key_secret_name
            )
            if deployment.opik_api_key_secret_name
            else None
        )
        environment = {
            "OPIK_PROJECT_NAME": deployment.opik_project_name,
            "OPIK_TIMEOUT_S": str(OPIK_TIMEOUT_S),
            "OPIK_SENTRY_ENABLE": "false",
            "OPIK_ANALYTICS_ENABLE": "false",
        }
        if deployment.opik_workspace:
            environment["OPIK_WORKSPACE"] = deployment.opik_workspace
        if self.opik_secret is not None:
            environment["OPIK_API_KEY_SECRET"] = self.opik_secret.secret_name

        self.forwarder = PythonFunction(
            self,
            "Forwarder",
            function_name=f"{project}-trace-forwarder",
            description="Delivers request traces from the trace queue to Opik (Comet)",
            bundle=FORWARDER_BUNDLE,
            handler="forwarder.handler.lambda_handler",
            memory_mb=FORWARDER_MEMORY_MB,
            timeout=FORWARDER_TIMEOUT,
            environment=environment,
            service_name="trace-forwarder",
            architecture=deployment.lambda_architecture,
        )
        function = self.forwarder.function
        function.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=BATCH_SIZE,
                max_batching_window=BATCH_WINDOW,
                report_batch_item_failures=True,
            )
        )
        if self.opik_secret is not None:
            self.opik_secret.grant_read(function)

        # Only hash_query uses a key; the other modes create none.
        self.hash_key_secret: secretsmanager.Secret | None = None
        if deployment.trace_redaction == "hash_query":
            self.hash_key_secret = secretsmanager.Secret(
                self,
                "HashKey",
                secret_name=f"{project}/trace-hash-key",
                description="HMAC key of TRACE_REDACTION=hash_query (generated, never shown)",
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    password_length=HASH_KEY_CHARS, exclude_punctuation=True
                ),
                removal_policy=RemovalPolicy.DESTROY,
            )
            acknowledge(
                self.hash_key_secret,
                "AwsSolutions-SMG4",
                "Rotating the trace hashing key would make digests before and after the rotation "
                "incomparable; replace it on purpose (a new value), not on a schedule.",
            )

    def grant_redaction_key(self, function: lambda_.Function) -> None:
        """Let `function` read hash_query's key (exactly that secret) and tell it where it is."""
        if self.hash_key_secret is None:
            return
        function.add_environment("TRACE_HASH_KEY_SECRET", self.hash_key_secret.secret_arn)
        self.hash_key_secret.grant_read(function)
