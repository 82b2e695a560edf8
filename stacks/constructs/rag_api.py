"""The business Lambda behind a regional REST API: API keys, throttling, body validation, logs.

The request contract (DESIGN 3.1) is enforced twice on purpose: API Gateway rejects malformed
bodies before a Lambda runs (and is billed), and the handler validates again with the same limits
so local mode and direct invocations behave the same. Gateway errors are rewritten into the
contract's JSON shape `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jsii
from aws_cdk import AssetHashType, Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from rag.domain.budget import DEFAULT_GENERATION_TOKENS_PER_S, DEFAULT_STREAM_BUDGET_S
from stacks.bundling import LAMBDA_SRC, REPO, ModelBundle, PythonBundle
from stacks.config import DeploymentConfig, ModelConfig
from stacks.constructs.api_key_authorizer import ApiKeyAuthorizer
from stacks.constructs.python_function import PythonFunction
from stacks.constructs.tgi_endpoint import TgiEndpointRef
from stacks.nag import acknowledge
from stacks.request_schemas import ROUTE_MODELS, gateway_schema
from web.cors import ALLOW_HEADERS, ALLOW_METHODS
from web.page import STATIC_ROUTE

# Timeout budget (DESIGN 5). The buffered /rag keeps API Gateway's classic chain in code:
# 29 s > request budget > SageMaker read timeout > generation. A streamed answer has its own
# budget (STREAM_BUDGET_S, passed to the app), so the Lambda and the STREAM integration are sized for it,
# inside API Gateway's 15-minute limit for streamed responses.
API_GATEWAY_TIMEOUT_S = 29
STREAM_BUDGET_S = int(DEFAULT_STREAM_BUDGET_S)  # passed as STREAM_BUDGET_S; local mode's default
LAMBDA_TIMEOUT_S = STREAM_BUDGET_S + 10  # the trace send and the adapter's own overhead
INTEGRATION_TIMEOUT_S = LAMBDA_TIMEOUT_S + 5
API_GATEWAY_STREAM_MAX_S = 15 * 60
LLM_CONNECT_TIMEOUT_S = 1
LLM_HELPER_TIMEOUT_S = 3  # self-query and expansion run concurrently, so this counts once
LLM_READ_TIMEOUT_S = 16  # ~500 tokens at TGI's ~35 tokens/s for an 8B model on one A10G
QDRANT_TIMEOUT_S = 2
# Decode speed the buffered /rag sizes max_new_tokens by (rag.domain.budget.max_new_tokens_within):
# ~480 new tokens fit the 16 s read timeout.
GENERATION_TOKENS_PER_S = DEFAULT_GENERATION_TOKENS_PER_S
# What a buffered answer may spend end to end; the generation call gets what retrieval left of
# it (rag.domain.budget.generation_timeout_s). 2 s under API Gateway's classic 29 s.
REQUEST_BUDGET_S = API_GATEWAY_TIMEOUT_S - 2
# The cheapest size per request that holds peak RSS (~1.0 GB) + 20 % (make bench, README
# "Performance"): below 1769 MB (one vCPU) a CPU-bound request stretches as its GB shrink, so
# its GB-s stay flat, while the time spent waiting for the model costs less per second.
BUSINESS_MEMORY_MB = 1280
ONNX_THREADS = 1
MAX_BODY_BYTES = 16 * 1024
STAGE = "v1"

BUSINESS_BUNDLE = PythonBundle(
    requirements=LAMBDA_SRC / "requirements.txt",
    packages=("rag", "web", "trace_contract"),
    # Pulled in by tokenizers (Hub downloads) and onnxruntime (model tooling), never imported
    # here: models load from files. 36 MB that would push the bundle past Lambda's limit.
    exclude=(
        "huggingface_hub*",
        "hf_xet*",
        "fsspec*",
        "filelock*",
        "tqdm*",
        "httpx2*",
        "httpcore2*",
        "truststore*",
        "yaml",
        "_yaml",
        "pyyaml-*",
        "dateutil",
        "python_dateutil-*",
        "six.py",
        "six-*",
        "bin",
        "onnxruntime/transformers",
        "onnxruntime/quantization",
        "onnxruntime/tools",
        "onnxruntime/datasets",
        "numpy/*/tests",
        "numpy/tests",
        "numpy/f2py",
        "numpy/_pyinstaller",
        "**/*.pyi",
    ),
)

# Gateway-made errors in the API's own error shape. A gateway response template is not VTL: API
# Gateway only substitutes variables into it, without JSON escaping. `$context.error.messageString`
# arrives already quoted and `$context.error.validationErrorString` carries raw quotes
# (`[object has missing required properties (["query"])]`), so neither can sit in a JSON string:
# messages are static, and the catch-all names the response type (an identifier, safe to embed).
_INVALID_KEY = "missing or invalid API key (Authorization: Bearer or x-api-key header)"
_GATEWAY_ERRORS = {
    apigw.ResponseType.BAD_REQUEST_BODY: (
        "400",
        "validation_error",
        "the body does not match this route's schema: check field names, types and limits "
        "(README, HTTP API)",
    ),
    apigw.ResponseType.BAD_REQUEST_PARAMETERS: (
        "400",
        "validation_error",
        "a required request parameter is missing or invalid",
    ),
    apigw.ResponseType.INVALID_API_KEY: ("403", "forbidden", _INVALID_KEY),
    apigw.ResponseType.MISSING_AUTHENTICATION_TOKEN: ("403", "forbidden", _INVALID_KEY),
    # The key authorizer's Deny for a missing or wrong key (stacks/constructs/api_key_authorizer.py)
    apigw.ResponseType.ACCESS_DENIED: ("403", "forbidden", _INVALID_KEY),
    apigw.ResponseType.THROTTLED: ("429", "throttled", "too many requests, slow down"),
    apigw.ResponseType.QUOTA_EXCEEDED: ("429", "quota_exceeded", "the API key's quota is used up"),
    apigw.ResponseType.REQUEST_TOO_LARGE: ("413", "payload_too_large", "request body too large"),
    apigw.ResponseType.UNSUPPORTED_MEDIA_TYPE: (
        "415",
        "unsupported_media_type",
        "send application/json",
    ),
    apigw.ResponseType.INTEGRATION_TIMEOUT: (
        "504",
        "upstream_timeout",
        "the request took too long",
    ),
    apigw.ResponseType.DEFAULT_4_XX: (
        None,
        "bad_request",
        "API Gateway refused the request ($context.error.responseType)",
    ),
    apigw.ResponseType.DEFAULT_5_XX: (None, "internal_error", "the service failed; try again"),
}


def gateway_error_template(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}})


def cors_response_headers(origins: list[str]) -> dict[str, str]:
    """CORS headers for gateway-made errors, so a browser reads the 403/429 JSON instead of
    reporting a CORS failure. Gateway response headers are static values or request values: one
    origin is returned as is; with several, the caller's Origin is echoed (the bodies carry no
    data) and `Vary: Origin` keeps caches from mixing them up."""
    if not origins:
        return {}
    if len(origins) == 1:
        return {"Access-Control-Allow-Origin": f"'{origins[0]}'"}
    return {
        "Access-Control-Allow-Origin": "method.request.header.Origin",
        "Vary": "'Origin'",
    }


@dataclass(frozen=True)
class QdrantConnection:
    url: str | None
    secret: secretsmanager.ISecret


@jsii.implements(apigw.IAuthorizer)
class _NoAuthorizer:
    """Lifts the API's default key authorizer off one method: CDK's own CORS preflight methods
    do the same (an authorizer with an empty id and type NONE), since a method may not name a
    type other than its default authorizer's."""

    @property
    def authorizer_id(self) -> str:
        return ""

    @property
    def authorization_type(self) -> apigw.AuthorizationType:
        return apigw.AuthorizationType.NONE


class RagApi(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        endpoint: TgiEndpointRef,
        model: ModelConfig,
        deployment: DeploymentConfig,
        trace_queue: sqs.IQueue | None,
        vpc: ec2.IVpc | None = None,
    ):
        super().__init__(scope, construct_id)
        self.qdrant = self._qdrant(deployment)
        models = ModelBundle(
            embedding_dir=_path(deployment.embedding_model_dir, "build/models/embedding"),
            reranker_dir=_path(deployment.reranker_model_dir, "build/models/reranker"),
        )
        self.model_asset = s3_assets.Asset(
            self,
            "Models",
            path=str(LAMBDA_SRC),  # ignored: the asset is the bundler's output
            bundling=models.options(),
            asset_hash_type=AssetHashType.CUSTOM,
            asset_hash=models.fingerprint(),
        )
        environment = {
            "MODEL_PROFILE": model.runtime_profile_json(),
            "LLM_ENDPOINT": endpoint.endpoint_name,
            "LLM_INFERENCE_COMPONENT": endpoint.inference_component_name,
            "LLM_CONNECT_TIMEOUT_S": str(LLM_CONNECT_TIMEOUT_S),
            "LLM_HELPER_TIMEOUT_S": str(LLM_HELPER_TIMEOUT_S),
            "LLM_READ_TIMEOUT_S": str(LLM_READ_TIMEOUT_S),
            "QDRANT_API_KEY_SECRET": self.qdrant.secret.secret_arn,
            "QDRANT_TIMEOUT_S": str(QDRANT_TIMEOUT_S),
            "REQUEST_BUDGET_S": str(REQUEST_BUDGET_S),
            "GENERATION_TOKENS_PER_S": str(GENERATION_TOKENS_PER_S),
            "STREAM_BUDGET_S": str(STREAM_BUDGET_S),
            "MODEL_ASSET_S3_URI": self.model_asset.s3_object_url,
            "TRACE_SAMPLE_RATE": str(deployment.trace_sample_rate),
            "TRACE_REDACTION": deployment.trace_redaction,
            "ORT_THREADS": str(ONNX_THREADS),
        }
        if deployment.cors_origins:  # the app adds CORS headers to its own responses (web.cors)
            environment["CORS_ORIGINS"] = ",".join(deployment.cors_origins)
        if self.qdrant.url:
            environment["QDRANT_URL"] = self.qdrant.url
        if trace_queue is not None:
            environment["TRACE_QUEUE_URL"] = trace_queue.queue_url
        self.business = PythonFunction(
            self,
            "Business",
            function_name=deployment.business_function_name,
            description="RAG business layer: retrieve from Qdrant, prompt, generate on SageMaker",
            bundle=BUSINESS_BUNDLE,
            web_app=True,
            memory_mb=BUSINESS_MEMORY_MB,
            timeout=Duration.seconds(LAMBDA_TIMEOUT_S),
            environment=environment,
            service_name="rag",
            architecture=deployment.lambda_architecture,
            snapstart=deployment.snapstart,
            reserved_concurrency=deployment.lambda_reserved_concurrency,
            vpc=vpc,
        )
        function = self.business.function
        endpoint.grant_invoke(function)
        self.qdrant.secret.grant_read(function)
        if trace_queue is not None:
            trace_queue.grant_send_messages(function)
        # Exactly the model archive, not the whole assets bucket.
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[self.model_asset.bucket.arn_for_objects(self.model_asset.s3_object_key)],
            )
        )
        self.api = self._rest_api(self.business.invoke_target, deployment)

    def _qdrant(self, deployment: DeploymentConfig) -> QdrantConnection:
        if deployment.qdrant_api_key_secret_name:
            secret = secretsmanager.Secret.from_secret_name_v2(
                self, "QdrantApiKey", deployment.qdrant_api_key_secret_name
            )
        else:
            created = secretsmanager.Secret(
                self,
                "QdrantApiKey",
                secret_name=f"{deployment.project}/qdrant-api-key",
                description="Qdrant API key: replace the generated placeholder with your key",
                removal_policy=RemovalPolicy.DESTROY,
            )
            acknowledge(
                created,
                "AwsSolutions-SMG4",
                "A Qdrant API key is issued and rotated in Qdrant (Cloud console or its config); "
                "Secrets Manager cannot rotate it, the operator updates the value.",
            )
            secret = created
        return QdrantConnection(url=deployment.qdrant_url, secret=secret)

    def _rest_api(self, function: lambda_.IFunction, deployment: DeploymentConfig) -> apigw.RestApi:
        access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            log_group_name=f"/aws/apigateway/{deployment.project}-api",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        # API keys come from the authorizer (x-api-key or Authorization: Bearer), every method
        # that requires one runs it; the usage plan throttles and counts the key as before.
        self.key_authorizer = ApiKeyAuthorizer(
            self,
            "KeyAuthorizer",
            project=deployment.project,
            architecture=deployment.lambda_architecture,
        )
        cors = (
            apigw.CorsOptions(
                allow_origins=deployment.cors_origins,
                allow_methods=list(ALLOW_METHODS),
                allow_headers=list(ALLOW_HEADERS),
            )
            if deployment.cors_origins
            else None
        )
        api = apigw.RestApi(
            self,
            "Api",
            rest_api_name=f"{deployment.project}-api",
            description="LLM twin RAG API",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            api_key_source_type=apigw.ApiKeySourceType.AUTHORIZER,
            # The region's API Gateway logging role (AWS::ApiGateway::Account) is shared by every
            # REST API there: owned by a stack, it overwrites the account's role and points at a
            # deleted role after destroy (aws-cdk#10878, #12769). Preflight checks it exists;
            # `-c api_gateway_account_role=true` creates it, retained on destroy.
            cloud_watch_role=deployment.api_gateway_account_role,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN
            if deployment.api_gateway_account_role
            else None,
            default_cors_preflight_options=cors,
            default_method_options=apigw.MethodOptions(
                api_key_required=True, authorizer=self.key_authorizer.authorizer
            ),
            deploy_options=apigw.StageOptions(
                stage_name=STAGE,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=False,
                ),
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # would log request and response bodies
                metrics_enabled=True,
                tracing_enabled=True,
                throttling_rate_limit=deployment.api_rate_limit_rps,
                throttling_burst_limit=deployment.api_burst_limit,
            ),
        )
        # API Gateway writes execution logs to this group; made here so it has a retention and
        # goes with the stack instead of outliving `cdk destroy`.
        execution_logs = logs.LogGroup(
            self,
            "ExecutionLogs",
            log_group_name=f"API-Gateway-Execution-Logs_{api.rest_api_id}/{STAGE}",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        api.deployment_stage.node.add_dependency(execution_logs)
        headers = {
            "Content-Type": "'application/json'",
            **cors_response_headers(deployment.cors_origins),
        }
        for response_type, (status, code, message) in _GATEWAY_ERRORS.items():
            api.add_gateway_response(
                f"Gw{response_type.response_type}",
                type=response_type,
                status_code=status,
                response_headers=headers,
                templates={"application/json": gateway_error_template(code, message)},
            )

        validator = api.add_request_validator(
            "Body", validate_request_body=True, validate_request_parameters=True
        )
        # STREAM: API Gateway calls the function with InvokeWithResponseStream (CDK switches the
        # integration URI to .../response-streaming-invocations) and passes bytes on as the
        # Lambda Web Adapter writes them; a buffered answer is simply one short stream.
        integration = apigw.LambdaIntegration(
            function,
            timeout=Duration.seconds(INTEGRATION_TIMEOUT_S),
            response_transfer_mode=apigw.ResponseTransferMode.STREAM,
        )
        for path, request_model in ROUTE_MODELS.items():
            model = self._body_model(api, request_model.__name__, gateway_schema(request_model))
            resource = api.root.add_resource(path)
            resource.add_method(
                "POST",
                integration,
                api_key_required=True,
                request_validator=validator,
                request_models={"application/json": model},
            )
            # Other methods reach the handler, which answers 405 with `Allow` like local mode.
            resource.add_method("ANY", integration, api_key_required=True)
        health = api.root.add_resource("health")
        health.add_method("GET", integration, api_key_required=True)
        health.add_method("ANY", integration, api_key_required=True)
        # Unknown paths too: the handler's 404 is in the contract's shape. The root gets its own
        # method first: add_proxy() would otherwise add a root ANY on a MOCK integration.
        api.root.add_method("ANY", integration, api_key_required=True)
        api.root.add_proxy(default_integration=integration)
        # The chat page and its files: a browser loads them without a key (the page asks for it
        # and sends it with each API call). The app serves only fixed files on these GETs.
        static = api.root.add_resource(STATIC_ROUTE).add_resource("{name}")
        no_key = _NoAuthorizer()
        self.public_methods = (
            api.root.add_method("GET", integration, api_key_required=False, authorizer=no_key),
            static.add_method("GET", integration, api_key_required=False, authorizer=no_key),
        )
        static.add_method("ANY", integration, api_key_required=True)

        self.api_key = api.add_api_key(
            "Key", api_key_name=f"{deployment.project}-key", value=self.key_authorizer.key_value
        )
        plan = api.add_usage_plan(
            "Plan",
            name=f"{deployment.project}-plan",
            throttle=apigw.ThrottleSettings(
                rate_limit=deployment.api_rate_limit_rps, burst_limit=deployment.api_burst_limit
            ),
            quota=apigw.QuotaSettings(limit=deployment.api_quota_per_day, period=apigw.Period.DAY),
        )
        plan.add_api_key(self.api_key)
        plan.add_api_stage(stage=api.deployment_stage)
        self._acknowledge_api(api)
        return api

    @staticmethod
    def _body_model(api: apigw.RestApi, name: str, schema: dict[str, object]) -> apigw.Model:
        model = api.add_model(
            name,
            content_type="application/json",
            model_name=name,
            schema=apigw.JsonSchema(schema=apigw.JsonSchemaVersion.DRAFT4),
        )
        # The generated draft-4 document as is: CDK's JsonSchema type would need a field-by-field
        # copy of it, which is exactly the drift this generation removes.
        cfn_model = model.node.default_child
        assert isinstance(cfn_model, apigw.CfnModel)
        cfn_model.add_property_override("Schema", schema)
        return model

    def _acknowledge_api(self, api: apigw.RestApi) -> None:
        acknowledge(
            api.deployment_stage,
            "AwsSolutions-APIG3",
            "No WAF by default: every route needs an API key and is throttled by the stage and the "
            "usage plan (rate, burst, daily quota); attach a web ACL to the stage if exposed widely.",
        )
        # by construct path: jsii hands back new proxies, so `in` on the objects never matches
        public = {m.node.path for m in self.public_methods}
        for method in api.methods:
            if method.node.path in public:
                reason = (
                    "GET of the chat page's static files (fixed HTML, JS, CSS, no data, no model "
                    "call): a browser must load them before it has the API key; the stage "
                    "throttle bounds them."
                )
                acknowledge(method, "AwsSolutions-APIG4", reason)
                acknowledge(method, "AwsSolutions-COG4", reason)
                # checkov's in-template skip, for exactly these two methods (CKV_AWS_59: no
                # authorizer and no API key).
                method.node.default_child.add_metadata(  # type: ignore[union-attr]
                    "checkov", {"skip": [{"id": "CKV_AWS_59", "comment": reason}]}
                )
                continue
            acknowledge(
                method,
                "AwsSolutions-APIG4",
                "Callers authenticate with an API key bound to a usage plan: the API serves "
                "programs, not end users, so there is no IAM or Cognito authorizer.",
            )
            acknowledge(
                method,
                "AwsSolutions-COG4",
                "Service-to-service API authenticated by API keys; no Cognito user pool by design.",
            )
        role = api.node.try_find_child("CloudWatchRole")
        if role is None:
            return
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]",
            "API Gateway's account-level logging role needs this AWS-managed policy to write "
            "execution logs; it is the documented way to enable stage logging.",
        )


def _path(configured: str | None, default: str) -> Path:
    return Path(configured) if configured else REPO / default
