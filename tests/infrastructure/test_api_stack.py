"""The API stack: Lambda defaults, exact IAM, API Gateway contract, traces, alarms."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rag.adapters.trace_sinks import METRIC_SEND_FAILED
from rag.domain.budget import (
    MIN_GENERATION_S,
    generation_timeout_s,
    worst_case_call_s,
    worst_case_send_s,
)
from rag.observability import METRICS_NAMESPACE
from stacks.constructs import rag_api
from tests.infrastructure.helpers import as_list, one, resources

OPIK = {"opik_api_key_secret_name": "llm-twin/opik", "opik_workspace": "team"}


def _functions(template: dict[str, Any]) -> dict[str, Any]:
    return {
        r["Properties"]["FunctionName"]: r["Properties"]
        for r in resources(template, "AWS::Lambda::Function")
    }


def _policy_of(template: dict[str, Any], function_name: str) -> list[Any]:
    function = _functions(template)[function_name]
    role_id = function["Role"]["Fn::GetAtt"][0]
    statements: list[Any] = []
    for res in resources(template, "AWS::IAM::Policy"):
        if {"Ref": role_id} in res["Properties"]["Roles"]:
            statements.extend(res["Properties"]["PolicyDocument"]["Statement"])
    return statements


def test_business_lambda_defaults(synth: Callable[..., dict[str, dict[str, Any]]]) -> None:
    fn = _functions(synth()["api"])["llm-twin-rag"]
    assert fn["Runtime"] == "python3.13"
    assert fn["Architectures"] == ["x86_64"]
    assert fn["MemorySize"] == 1280
    assert fn["Timeout"] == rag_api.LAMBDA_TIMEOUT_S
    assert fn["TracingConfig"] == {"Mode": "Active"}
    assert fn["LoggingConfig"]["LogFormat"] == "JSON"
    assert fn["Handler"] == "web/run.sh"
    assert "ReservedConcurrentExecutions" not in fn
    limited = _functions(synth(lambda_reserved_concurrency="5")["api"])["llm-twin-rag"]
    assert limited["ReservedConcurrentExecutions"] == 5


def test_business_lambda_environment_carries_config_but_no_secret(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    env = _functions(synth()["api"])["llm-twin-rag"]["Environment"]["Variables"]
    profile = json.loads(env["MODEL_PROFILE"])
    assert profile["model_id"] == "mlabonne/TwinLlama-3.1-8B-DPO"
    assert profile["prompt_format"] == "alpaca"
    assert profile["max_input_tokens"] == 2048
    assert env["LLM_ENDPOINT"] == "llm-twin-twin-llama-3-1-8b"
    assert env["LLM_INFERENCE_COMPONENT"] == "llm-twin-twin-llama-3-1-8b-ic"
    assert "QDRANT_API_KEY" not in env
    assert "Ref" in json.dumps(env["QDRANT_API_KEY_SECRET"])  # an ARN reference, not a value
    assert env["TRACE_SAMPLE_RATE"] == "1.0"
    assert env["TRACE_REDACTION"] == "none"
    assert "s3://" in json.dumps(env["MODEL_ASSET_S3_URI"])


def test_timeout_budget_lines_up(synth: Callable[..., dict[str, dict[str, Any]]]) -> None:
    # DESIGN 5: the buffered answer keeps 29 s > request budget > SageMaker read timeout in
    # code; the streamed one has its own budget, which the Lambda timeout and the STREAM
    # integration cover, inside API Gateway's 15-minute limit for streamed responses
    # (https://docs.aws.amazon.com/apigateway/latest/developerguide/response-transfer-mode.html).
    assert rag_api.API_GATEWAY_TIMEOUT_S == 29
    assert rag_api.REQUEST_BUDGET_S < rag_api.API_GATEWAY_TIMEOUT_S
    assert rag_api.STREAM_BUDGET_S < rag_api.LAMBDA_TIMEOUT_S < rag_api.INTEGRATION_TIMEOUT_S
    assert rag_api.INTEGRATION_TIMEOUT_S <= rag_api.API_GATEWAY_STREAM_MAX_S
    env = _functions(synth()["api"])["llm-twin-rag"]["Environment"]["Variables"]
    assert float(env["REQUEST_BUDGET_S"]) == rag_api.REQUEST_BUDGET_S
    assert float(env["STREAM_BUDGET_S"]) == rag_api.STREAM_BUDGET_S
    connect_s, read_s = rag_api.LLM_CONNECT_TIMEOUT_S, rag_api.LLM_READ_TIMEOUT_S
    # A fast retrieval leaves the full read timeout, its retry overhead and the trace send.
    assert worst_case_call_s(connect_s, read_s) + worst_case_send_s() <= rag_api.REQUEST_BUDGET_S
    # Retrieval at its slowest (helpers 3 s concurrent + two Qdrant rounds) still leaves room
    # for a useful generation, which the pipeline then gets with a shortened read timeout.
    retrieval_s = rag_api.LLM_HELPER_TIMEOUT_S + 2 * rag_api.QDRANT_TIMEOUT_S
    shortened = generation_timeout_s(
        read_timeout_s=read_s,
        connect_timeout_s=connect_s,
        request_budget_s=rag_api.REQUEST_BUDGET_S,
        elapsed_s=retrieval_s,
    )
    assert shortened is not None
    assert MIN_GENERATION_S <= shortened < read_s
    worst_s = retrieval_s + worst_case_call_s(connect_s, shortened) + worst_case_send_s()
    assert worst_s <= rag_api.REQUEST_BUDGET_S


def test_business_role_is_scoped_to_exactly_its_endpoint_secret_queue_and_models(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(**OPIK)["api"]
    by_action: dict[str, list[Any]] = {}
    for statement in _policy_of(template, "llm-twin-rag"):
        for action in as_list(statement["Action"]):
            by_action.setdefault(action, []).extend(as_list(statement["Resource"]))
    invoke = json.dumps(by_action.pop("sagemaker:InvokeEndpoint"))
    assert ":endpoint/llm-twin-twin-llama-3-1-8b" in invoke
    assert ":inference-component/llm-twin-twin-llama-3-1-8b-ic" in invoke
    secret_id = next(
        k for k, v in template["Resources"].items() if v["Type"] == "AWS::SecretsManager::Secret"
    )
    assert by_action.pop("secretsmanager:GetSecretValue") == [{"Ref": secret_id}]
    assert by_action.pop("secretsmanager:DescribeSecret") == [{"Ref": secret_id}]
    queue_id = next(
        k
        for k, v in template["Resources"].items()
        if v["Type"] == "AWS::SQS::Queue" and v["Properties"]["QueueName"] == "llm-twin-traces"
    )
    for action in ("sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"):
        assert by_action.pop(action) == [{"Fn::GetAtt": [queue_id, "Arn"]}]
    (model_object,) = by_action.pop("s3:GetObject")
    assert ".zip" in json.dumps(model_object)  # exactly the model archive
    assert by_action.pop("xray:PutTraceSegments") == ["*"]
    assert by_action.pop("xray:PutTelemetryRecords") == ["*"]
    logs = by_action.pop("logs:CreateLogStream") + by_action.pop("logs:PutLogEvents")
    assert all("LogGroup" in json.dumps(r) or "Logs" in json.dumps(r) for r in logs)
    assert by_action == {}, f"unexpected permissions: {sorted(by_action)}"


def test_endpoint_is_referenced_by_name_not_by_export(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    for template in synth().values():
        assert "Fn::ImportValue" not in json.dumps(template)
        assert "Outputs" not in template or all(
            "Export" not in o for o in template["Outputs"].values()
        )


def test_rest_api_requires_keys_validates_bodies_and_throttles(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(api_rate_limit_rps="7", api_burst_limit="11", api_quota_per_day="300")["api"]
    api = one(template, "AWS::ApiGateway::RestApi")
    assert api["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    methods = [r["Properties"] for r in resources(template, "AWS::ApiGateway::Method")]
    posts = [m for m in methods if m["HttpMethod"] == "POST"]
    assert len(posts) == 2
    assert all("RequestValidatorId" in m and "RequestModels" in m for m in posts)
    models = {
        r["Properties"]["Name"]: r["Properties"]["Schema"]
        for r in resources(template, "AWS::ApiGateway::Model")
    }
    rag = models["RagRequest"]
    assert rag["required"] == ["query"]
    assert rag["additionalProperties"] is False
    assert rag["properties"]["k"] == {"type": "integer", "minimum": 1, "maximum": 20}
    assert "generation" not in models["RetrieveRequest"]["properties"]
    plan = one(template, "AWS::ApiGateway::UsagePlan")
    assert plan["Throttle"] == {"RateLimit": 7, "BurstLimit": 11}
    assert plan["Quota"] == {"Limit": 300, "Period": "DAY"}
    stage = one(template, "AWS::ApiGateway::Stage")
    assert stage["AccessLogSetting"]["DestinationArn"]
    settings = stage["MethodSettings"][0]
    assert settings["MetricsEnabled"] is True
    assert settings["DataTraceEnabled"] is False
    assert (settings["ThrottlingRateLimit"], settings["ThrottlingBurstLimit"]) == (7, 11)


def _path_of(template: dict[str, Any], resource_id: dict[str, Any]) -> str:
    """A method's resource as its full path ("/" for the root, "/static/{name}", ...)."""
    if "Fn::GetAtt" in resource_id:  # the RestApi's RootResourceId
        return "/"
    parts: list[str] = []
    logical_id = resource_id["Ref"]
    while True:
        resource = template["Resources"][logical_id]["Properties"]
        parts.insert(0, resource["PathPart"])
        parent = resource["ParentId"]
        if "Fn::GetAtt" in parent:
            return "/" + "/".join(parts)
        logical_id = parent["Ref"]


def test_only_the_chat_pages_static_gets_go_without_an_api_key(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """`ApiKeyRequired` false lets a method through without the x-api-key header, and such calls
    count against no usage plan (AWS::ApiGateway::Method ApiKeyRequired; "Usage plans and API
    keys for REST APIs", https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-api-usage-plans.html).
    A browser loads the page and its files before it has the key, so exactly `GET /` and
    `GET /static/{name}` (which the app answers from fixed files) are keyless; every route that
    reaches the model, and every other method, still needs the key."""
    template = synth()["api"]
    keyless: set[tuple[str, str]] = set()
    keyed: set[tuple[str, str]] = set()
    for method in resources(template, "AWS::ApiGateway::Method"):
        props = method["Properties"]
        if props["HttpMethod"] == "OPTIONS":  # CORS preflight, a MOCK (browsers send no key)
            continue
        route = (props["HttpMethod"], _path_of(template, props["ResourceId"]))
        (keyed if props["ApiKeyRequired"] else keyless).add(route)
    assert keyless == {("GET", "/"), ("GET", "/static/{name}")}
    assert {("POST", "/rag"), ("POST", "/retrieve"), ("ANY", "/{proxy+}")} <= keyed
    assert {("ANY", "/"), ("ANY", "/static/{name}"), ("GET", "/health")} <= keyed


def test_gateway_errors_use_the_contract_shape(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    responses = {
        r["Properties"]["ResponseType"]: r["Properties"]
        for r in resources(synth()["api"], "AWS::ApiGateway::GatewayResponse")
    }
    for kind, status in (
        ("BAD_REQUEST_BODY", "400"),
        ("THROTTLED", "429"),
        ("REQUEST_TOO_LARGE", "413"),
        ("UNSUPPORTED_MEDIA_TYPE", "415"),
        ("INTEGRATION_TIMEOUT", "504"),
        ("INVALID_API_KEY", "403"),
    ):
        body = json.loads(responses[kind]["ResponseTemplates"]["application/json"])
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        assert responses[kind]["StatusCode"] == status


def test_cors_is_off_by_default_and_limited_to_configured_origins(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    methods = [r["Properties"] for r in resources(synth()["api"], "AWS::ApiGateway::Method")]
    assert not [m for m in methods if m["HttpMethod"] == "OPTIONS"]
    template = synth(cors_origins="https://app.example")["api"]
    options = [
        r["Properties"]
        for r in resources(template, "AWS::ApiGateway::Method")
        if r["Properties"]["HttpMethod"] == "OPTIONS"
    ]
    assert options
    assert "https://app.example" in json.dumps(options[0]["Integration"])
    assert "'*'" not in json.dumps(options[0]["Integration"]["IntegrationResponses"])


def test_configured_cors_origins_reach_the_lambda_and_the_preflight_alike(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """With a Lambda proxy integration the function must return Access-Control-Allow-Origin
    itself (https://docs.aws.amazon.com/apigateway/latest/developerguide/how-to-cors.html,
    "Enabling CORS support for Lambda or HTTP proxy integrations"): it gets the same origins
    the OPTIONS preflight allows, and none when CORS is off."""
    origins = "https://app.example,https://admin.example"
    template = synth(cors_origins=origins)["api"]
    env = _functions(template)["llm-twin-rag"]["Environment"]["Variables"]
    assert env["CORS_ORIGINS"] == origins
    assert (
        "CORS_ORIGINS" not in _functions(synth()["api"])["llm-twin-rag"]["Environment"]["Variables"]
    )
    preflight = json.dumps(
        [
            r["Properties"]["Integration"]
            for r in resources(template, "AWS::ApiGateway::Method")
            if r["Properties"]["HttpMethod"] == "OPTIONS"
        ]
    )
    assert "https://app.example" in preflight and "https://admin.example" in preflight


def test_outputs_give_url_key_id_the_command_to_read_it_and_function(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    outputs = synth()["api"]["Outputs"]
    assert {"ApiUrl", "ApiKeyId", "ApiKeyCommand", "FunctionName"} <= set(outputs)
    command = json.dumps(outputs["ApiKeyCommand"]["Value"])
    assert "aws apigateway get-api-key --api-key" in command and "--include-value" in command


def _qdrant_secrets(template: dict[str, Any]) -> Any:
    return [
        r["Properties"]
        for r in resources(template, "AWS::SecretsManager::Secret")
        if "qdrant" in r["Properties"]["Name"]
    ]


def test_qdrant_secret_is_created_or_referenced(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    created = synth()["api"]
    assert [s["Name"] for s in _qdrant_secrets(created)] == ["llm-twin/qdrant-api-key"]
    referenced = synth(
        qdrant_api_key_secret_name="team/qdrant", qdrant_url="https://q.example:6333"
    )["api"]
    assert not _qdrant_secrets(referenced)
    env = _functions(referenced)["llm-twin-rag"]["Environment"]["Variables"]
    assert env["QDRANT_URL"] == "https://q.example:6333"
    assert "secret:team/qdrant" in json.dumps(env["QDRANT_API_KEY_SECRET"])


def test_trace_queue_is_encrypted_with_a_dead_letter_queue_and_partial_batches(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(**OPIK)["api"]
    queues = {
        r["Properties"]["QueueName"]: r["Properties"]
        for r in resources(template, "AWS::SQS::Queue")
    }
    traces = queues["llm-twin-traces"]
    assert traces["SqsManagedSseEnabled"] is True
    assert traces["MaximumMessageSize"] == 1_048_576
    assert traces["RedrivePolicy"]["maxReceiveCount"] == 5
    assert queues["llm-twin-traces-dlq"]["SqsManagedSseEnabled"] is True
    mapping = one(template, "AWS::Lambda::EventSourceMapping")
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] == 10
    forwarder = _functions(template)["llm-twin-trace-forwarder"]
    env = forwarder["Environment"]["Variables"]
    assert env["OPIK_API_KEY_SECRET"] == "llm-twin/opik"
    assert env["OPIK_WORKSPACE"] == "team"
    assert "OPIK_API_KEY" not in env
    actions = {
        a: s["Resource"]
        for s in _policy_of(template, "llm-twin-trace-forwarder")
        for a in as_list(s["Action"])
    }
    assert "llm-twin/opik" in json.dumps(actions["secretsmanager:GetSecretValue"])
    assert "Traces" in json.dumps(actions["sqs:ReceiveMessage"])
    assert "*" not in json.dumps(actions["sqs:DeleteMessage"])


def test_alarms_and_dashboard_an_on_call_person_needs(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(alarm_email="oncall@example.com", **OPIK)["api"]
    alarms = {
        r["Properties"]["AlarmName"]: r["Properties"]
        for r in resources(template, "AWS::CloudWatch::Alarm")
    }
    for name in (
        "api-5xx-rate",
        "api-p99-latency",
        "rag-errors",
        "rag-throttles",
        "endpoint-invocation-errors",
        "endpoint-gpu-memory",
        "trace-queue-age",
        "trace-dlq-not-empty",
        "forwarder-errors",
        "trace-send-failed",
    ):
        assert f"llm-twin-{name}" in alarms, name
        assert alarms[f"llm-twin-{name}"]["AlarmActions"]
    dlq = alarms["llm-twin-trace-dlq-not-empty"]
    assert dlq["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert dlq["Threshold"] == 1
    subscription = one(template, "AWS::SNS::Subscription")
    assert subscription == {**subscription, "Protocol": "email", "Endpoint": "oncall@example.com"}
    body = json.dumps(one(template, "AWS::CloudWatch::Dashboard")["DashboardBody"])
    for metric in (
        "5XXError",
        "ModelLatency",
        "NoCapacityInvocationFailures",
        "GPUMemoryUtilizationNormalized",
        "ApproximateAgeOfOldestMessage",
        "Throttles",
        "Duration",
    ):
        assert metric in body, metric


def test_every_method_streams_through_the_response_streaming_invocation(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    # API Gateway streams a Lambda proxy response only with responseTransferMode STREAM and
    # the InvokeWithResponseStream URI `.../2021-11-15/functions/<arn>/response-streaming-
    # invocations` (https://docs.aws.amazon.com/apigateway/latest/developerguide/
    # response-transfer-mode-lambda.html). Which methods need a key: the test above.
    template = synth()["api"]
    methods = [
        m["Properties"]
        for m in resources(template, "AWS::ApiGateway::Method")
        if m["Properties"]["Integration"]["Type"] != "MOCK"  # CORS preflight answers itself
    ]
    # POST + ANY on /rag and /retrieve, GET + ANY on /health, ANY on {proxy+}, GET + ANY on the
    # root and on /static/{name}
    assert len(methods) == 11
    for method in methods:
        integration = method["Integration"]
        assert integration["Type"] == "AWS_PROXY"
        assert integration["ResponseTransferMode"] == "STREAM"
        uri = json.dumps(integration["Uri"])
        assert ":lambda:path/2021-11-15/functions/" in uri
        assert "/response-streaming-invocations" in uri
        assert integration["TimeoutInMillis"] == rag_api.INTEGRATION_TIMEOUT_S * 1000


def test_the_business_lambda_runs_the_app_behind_the_web_adapter(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    # The adapter's documented zip setup: its layer, AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap,
    # a run script as the handler, AWS_LWA_INVOKE_MODE=response_stream for streaming
    # (https://awslabs.github.io/aws-lambda-web-adapter/configuration/environment-variables.html)
    fn = _functions(synth()["api"])["llm-twin-rag"]
    env = fn["Environment"]["Variables"]
    assert env["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert env["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert env["AWS_LWA_READINESS_CHECK_PATH"] == "/health"
    assert env["AWS_LWA_PORT"] == "8000"
    (layer,) = fn["Layers"]
    assert ":753240598075:layer:LambdaAdapterLayerX86:30" in json.dumps(layer)
    assert {"Ref": "AWS::Region"} in layer["Fn::Join"][1]
    # The forwarder is a plain Python handler: no adapter
    forwarder = next(
        f for name, f in _functions(synth(**OPIK)["api"]).items() if name != "llm-twin-rag"
    )
    assert "Layers" not in forwarder
    assert "AWS_LAMBDA_EXEC_WRAPPER" not in forwarder["Environment"]["Variables"]


def test_api_gateway_may_invoke_the_function_with_a_stream(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    # InvokeWithResponseStream is authorised by the same lambda:InvokeFunction permission
    # (https://docs.aws.amazon.com/lambda/latest/api/API_InvokeWithResponseStream.html)
    template = synth()["api"]
    permissions = [
        p["Properties"]
        for p in resources(template, "AWS::Lambda::Permission")
        if p["Properties"]["Principal"] == "apigateway.amazonaws.com"
    ]
    assert permissions
    assert {p["Action"] for p in permissions} == {"lambda:InvokeFunction"}


def test_hash_query_keys_its_digests_with_a_generated_secret_only_the_business_lambda_reads(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """hash_query's HMAC key is a Secrets Manager secret the stack generates
    (AWS::SecretsManager::Secret GenerateSecretString, https://docs.aws.amazon.com/
    AWSCloudFormation/latest/UserGuide/aws-properties-secretsmanager-secret-generatesecretstring.html),
    so the value is never in the template; the Lambda reads it at run time (GetSecretValue on
    exactly that secret) and gets only its ARN in the environment."""
    template = synth(trace_redaction="hash_query", **OPIK)["api"]
    env = _functions(template)["llm-twin-rag"]["Environment"]["Variables"]
    secrets = {
        logical_id: res
        for logical_id, res in template["Resources"].items()
        if res["Type"] == "AWS::SecretsManager::Secret"
        and "GenerateSecretString" in res["Properties"]
        and "trace" in res["Properties"].get("Name", "")
    }
    [(secret_id, secret)] = secrets.items()
    assert env["TRACE_HASH_KEY_SECRET"] == {"Ref": secret_id}  # the ARN, not a value
    assert secret["Properties"]["GenerateSecretString"]["PasswordLength"] >= 32
    readers = [
        s
        for s in _policy_of(template, "llm-twin-rag")
        if "secretsmanager:GetSecretValue" in as_list(s["Action"])
    ]
    assert {"Ref": secret_id} in [r for s in readers for r in as_list(s["Resource"])]
    # And no other function may read it, and without hash_query there is no key at all
    for name in _functions(template):
        if name != "llm-twin-rag":
            assert secret_id not in json.dumps(_policy_of(template, name))
    for plain in (synth(**OPIK)["api"], synth(trace_redaction="hash_query")["api"]):
        env = _functions(plain)["llm-twin-rag"]["Environment"]["Variables"]
        assert "TRACE_HASH_KEY_SECRET" not in env
        assert not [
            r
            for r in resources(plain, "AWS::SecretsManager::Secret")
            if "trace" in r["Properties"].get("Name", "")
        ]


def _key_statements_for(template: dict[str, Any], service: str) -> tuple[dict[str, Any], list[Any]]:
    [key] = resources(template, "AWS::KMS::Key")
    return key, [
        s
        for s in key["Properties"]["KeyPolicy"]["Statement"]
        # @aws-cdk/aws-iam:minimizePolicies merges services that share actions into one statement
        if service in as_list(s.get("Principal", {}).get("Service", [])) and s["Effect"] == "Allow"
    ]


def test_alarm_topic_is_encrypted_with_a_customer_key_cloudwatch_and_budgets_may_use(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """SNS encrypts a topic's messages with the KMS key named in KmsMasterKeyId, and AWS services
    that publish to an encrypted topic need kms:GenerateDataKey* and kms:Decrypt on that key in
    its key policy; the AWS-managed key's policy cannot be changed, so CloudWatch alarms (and
    Budgets) need a customer-managed key ("Enable compatibility between event sources from AWS
    services and encrypted topics",
    https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html#compatibility-with-aws-services)."""
    template = synth(monthly_budget_usd="100")["api"]
    topic = one(template, "AWS::SNS::Topic")
    key, cloudwatch = _key_statements_for(template, "cloudwatch.amazonaws.com")
    key_ids = [logical_id for logical_id, r in template["Resources"].items() if r is key]
    assert topic["KmsMasterKeyId"] == {"Fn::GetAtt": [key_ids[0], "Arn"]}
    assert key["Properties"]["EnableKeyRotation"] is True
    for statements in (cloudwatch, _key_statements_for(template, "budgets.amazonaws.com")[1]):
        actions = {a for s in statements for a in as_list(s["Action"])}
        assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= actions
        assert not actions - {"kms:Decrypt", "kms:GenerateDataKey*"}
    # And without a budget, Budgets gets nothing
    assert _key_statements_for(synth()["api"], "budgets.amazonaws.com")[1] == []


def test_trace_send_failed_alarm_watches_the_metric_the_business_lambda_emits(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """CloudWatch identifies a metric by namespace, name and every dimension ("a metric is uniquely
    defined by a name, a namespace, and zero or more dimensions",
    https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/cloudwatch_concepts.html):
    an alarm that differs in any of them watches nothing and never fires. Powertools puts
    POWERTOOLS_SERVICE_NAME in the `service` dimension of every metric it emits."""
    template = synth(alarm_email="oncall@example.com", **OPIK)["api"]
    env = _functions(template)["llm-twin-rag"]["Environment"]["Variables"]
    alarm = next(
        r["Properties"]
        for r in resources(template, "AWS::CloudWatch::Alarm")
        if r["Properties"]["AlarmName"] == "llm-twin-trace-send-failed"
    )
    assert alarm["Namespace"] == env["POWERTOOLS_METRICS_NAMESPACE"] == METRICS_NAMESPACE
    assert alarm["MetricName"] == METRIC_SEND_FAILED
    assert alarm["Dimensions"] == [{"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}]
