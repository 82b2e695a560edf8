"""What a first `make deploy` in a real account exercises, checked against AWS's documented
behaviour (issue 12): logging roles, gateway responses, body models, routes, VPC, traces."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from stacks.config import ConfigError
from stacks.request_schemas import ROUTE_MODELS
from tests.conftest import synth_templates
from tests.infrastructure.helpers import one, resources
from tests.infrastructure.scanned_contexts import VPC_LOOKUP

OPIK = {"opik_api_key_secret_name": "llm-twin/opik", "opik_workspace": "team"}
ENV = {"account": "123456789012", "region": "eu-west-1"}


def _by_id(template: dict[str, Any], type_name: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_name}


# --- finding 1: the model's logs ---------------------------------------------------------------


def test_dashboard_reads_the_inference_component_log_group(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """Inference-component containers log to /aws/sagemaker/InferenceComponents/<ic-name>
    (sagemaker-python-sdk serve/model_builder.py; SageMaker developer guide, CloudWatch Logs
    for inference components): the dashboard and the outputs must point there."""
    template = synth()["api"]
    group = "/aws/sagemaker/InferenceComponents/llm-twin-twin-llama-3-1-8b-ic"
    body = json.dumps(one(template, "AWS::CloudWatch::Dashboard")["DashboardBody"])
    assert group in body
    assert "/aws/sagemaker/Endpoints/" not in body
    assert template["Outputs"]["ModelLogGroup"]["Value"] == group


# --- finding 2: the account-wide API Gateway logging role --------------------------------------


def test_the_account_wide_api_gateway_role_is_not_owned_by_default(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """AWS::ApiGateway::Account is one setting per account and region: a stack that owns it
    overwrites the account's role, and its destroy leaves the setting on a deleted role, which
    breaks logging for every REST API there (aws-cdk issues 10878, 12769, 22954; aws-cdk
    README: "there can only be a single apigateway.CfnAccount per AWS environment")."""
    template = synth()["api"]
    assert not resources(template, "AWS::ApiGateway::Account")
    assert "AmazonAPIGatewayPushToCloudWatchLogs" not in json.dumps(
        resources(template, "AWS::IAM::Role")
    )


def test_an_explicit_switch_creates_the_role_and_keeps_it_on_destroy(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """When the stack does create the singleton, destroying the stack must not leave the
    account pointing at a deleted role (aws-cdk issue 12769): both are retained."""
    template = synth(api_gateway_account_role="true")["api"]
    (account,) = _by_id(template, "AWS::ApiGateway::Account").values()
    assert account["DeletionPolicy"] == "Retain"
    role_id = account["Properties"]["CloudWatchRoleArn"]["Fn::GetAtt"][0]
    assert template["Resources"][role_id]["DeletionPolicy"] == "Retain"


# --- finding 3: gateway error bodies are JSON --------------------------------------------------

# How API Gateway substitutes each variable into a gateway response template, per the API
# Gateway developer guide, "Variables for data transformations" ($context.error.*):
# messageString is "the quoted value of $context.error.message"; validationErrorString is the
# validator's text as is; responseType is the GatewayResponse type name. Realistic values:
# raw quotes, brackets and a newline.
RAW_MESSAGE = 'Invalid request body: "k" must be <= 20\n[see docs]'
VALIDATION_ERROR = '[object has missing required properties (["query"])]'
RESPONSE_TYPES = ("BAD_REQUEST_BODY", "WAF_FILTERED", "RESOURCE_NOT_FOUND", "DEFAULT_4XX")


def render_gateway_template(template: str, response_type: str) -> str:
    values = {
        "$context.error.messageString": f'"{RAW_MESSAGE}"',
        "$context.error.message": RAW_MESSAGE,
        "$context.error.validationErrorString": VALIDATION_ERROR,
        "$context.error.responseType": response_type,
    }
    names = sorted(values, key=len, reverse=True)
    rendered = re.sub("|".join(re.escape(n) for n in names), lambda m: values[m.group(0)], template)
    unknown = re.findall(r"\$context\.[\w.]+", rendered)
    assert not unknown, f"template uses variables this test cannot render: {unknown}"
    return rendered


def test_every_gateway_response_renders_as_the_error_contract(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    responses = resources(synth()["api"], "AWS::ApiGateway::GatewayResponse")
    assert len(responses) >= 10
    for res in responses:
        props = res["Properties"]
        template = props["ResponseTemplates"]["application/json"]
        for response_type in RESPONSE_TYPES:
            body = json.loads(render_gateway_template(template, response_type))
            assert set(body) == {"error"}, props["ResponseType"]
            error = body["error"]
            assert set(error) == {"code", "message"}
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
            assert error["code"] and error["message"]


# --- finding 4: gateway body models = the app's request models --------------------------------


def _gateway_models(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        r["Properties"]["Name"]: r["Properties"]["Schema"]
        for r in resources(template, "AWS::ApiGateway::Model")
    }


BODIES = [
    {"query": "q"},
    {"query": "q", "k": 5, "author": "Paul Iusztin", "expand": False},
    {"query": "q", "author": None},
    {"query": "q", "include_context": True},
    {"query": "q", "generation": {"max_new_tokens": 64, "temperature": 0.2, "top_p": 0.9}},
    {"query": "q", "generation": {"top_p": 0}},
    {"query": "q", "k": 0},
    {"query": "q", "k": 21},
    {"query": ""},
    {"query": "q", "unknown": 1},
    {"k": 3},
    {"query": 3},
    {"query": "q", "expand": "yes"},
]


@pytest.mark.parametrize("route", sorted(ROUTE_MODELS))
def test_the_gateway_accepts_exactly_what_the_handler_accepts(
    synth: Callable[..., dict[str, dict[str, Any]]], route: str
) -> None:
    """API Gateway validates request bodies against the method's model (JSON Schema draft 4,
    API Gateway developer guide, "Data models for REST APIs" and "Request validation"): a body
    it lets through that the handler then refuses is a billed invocation answering 400, and a
    body it refuses that the handler accepts is a broken feature. The two must agree on every
    field, type and bound; only lengths counted after trimming (query, author) are left to the
    handler, as JSON Schema cannot express them."""
    model = ROUTE_MODELS[route]
    schema = _gateway_models(synth()["api"])[model.__name__]
    validator = jsonschema.Draft4Validator(schema)
    for body in BODIES:
        try:
            model.model_validate(body, context={"max_new_tokens_limit": 2048})
            handler_accepts = True
        except ValueError:
            handler_accepts = False
        assert validator.is_valid(body) == handler_accepts, (route, body)


def test_the_methods_use_the_generated_models(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth()["api"]
    models = {
        k: v["Properties"]["Name"] for k, v in _by_id(template, "AWS::ApiGateway::Model").items()
    }
    used = {
        models[m["Properties"]["RequestModels"]["application/json"]["Ref"]]
        for m in resources(template, "AWS::ApiGateway::Method")
        if m["Properties"].get("RequestModels")
    }
    assert used == {m.__name__ for m in ROUTE_MODELS.values()}


# --- finding 8: every path reaches the app -----------------------------------------------------


def test_no_route_ends_on_a_mock_integration(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """RestApi.root.addProxy() also adds ANY on the root, with the API's default integration
    when the root has none: a MOCK (aws-cdk ProxyResource.addMethod), which answers `/v1/`
    with an error counted in 5XXError. Only CORS preflight (OPTIONS) may be a MOCK."""
    for context in ({}, {"cors_origins": "https://a.example"}):
        template = synth(**context)["api"]
        methods = resources(template, "AWS::ApiGateway::Method")
        root = [
            m
            for m in methods
            if m["Properties"]["ResourceId"].get("Fn::GetAtt", [None, ""])[1] == "RootResourceId"
            and m["Properties"]["HttpMethod"] == "ANY"
        ]
        assert len(root) == 1
        for method in methods:
            integration = method["Properties"]["Integration"]
            if method["Properties"]["HttpMethod"] == "OPTIONS":
                continue
            assert integration["Type"] == "AWS_PROXY", method["Properties"]


# --- finding 7: VPC ----------------------------------------------------------------------------


def test_vpc_without_account_and_region_fails_naming_the_missing_settings() -> None:
    """Vpc.fromLookup needs a concrete account and region (aws-cdk README, "Importing an
    existing VPC": lookups are not supported in environment-agnostic stacks)."""
    with pytest.raises(ConfigError, match=r"vpc_id.*-c account=.*-c region="):
        synth_templates(vpc_id="vpc-0123456789abcdef0")


def test_in_a_vpc_the_function_gets_the_endpoints_it_calls(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """A Lambda attached to a VPC has no internet access (Lambda developer guide, "Giving
    Lambda functions access to resources in an Amazon VPC": use NAT or VPC endpoints). The
    business Lambda calls S3 (model archive), Secrets Manager (Qdrant key), SageMaker runtime
    and, with traces on, SQS."""
    template = synth(vpc_id="vpc-0123456789abcdef0", **ENV, **OPIK, **VPC_LOOKUP)["api"]
    services = json.dumps(
        [e["Properties"]["ServiceName"] for e in resources(template, "AWS::EC2::VPCEndpoint")]
    )
    for service in ("s3", "secretsmanager", "sagemaker.runtime", "sqs"):
        assert f".{service}" in services, service
    gateway = [
        e["Properties"]
        for e in resources(template, "AWS::EC2::VPCEndpoint")
        if e["Properties"].get("VpcEndpointType") == "Gateway"
    ]
    assert len(gateway) == 1 and ".s3" in json.dumps(gateway[0]["ServiceName"])
    without = synth(vpc_id="vpc-0123456789abcdef0", vpc_endpoints="false", **ENV, **VPC_LOOKUP)[
        "api"
    ]
    assert not resources(without, "AWS::EC2::VPCEndpoint")


# --- finding 9: no Opik, no trace pipeline -----------------------------------------------------


def test_without_opik_nothing_is_queued_for_a_consumer_that_cannot_deliver(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """SQS moves a message to the dead-letter queue after maxReceiveCount failed receives (SQS
    developer guide, "Using dead-letter queues"): with no Opik key every trace would fail five
    times and land there. Without Opik settings no queue, forwarder or trace alarm is deployed,
    the Lambda gets no queue to send to, and the output says traces are off."""
    template = synth()["api"]
    assert not resources(template, "AWS::SQS::Queue")
    assert not resources(template, "AWS::Lambda::EventSourceMapping")
    functions = {
        f["Properties"]["FunctionName"]: f["Properties"]
        for f in resources(template, "AWS::Lambda::Function")
    }
    assert sorted(functions) == ["llm-twin-authorizer", "llm-twin-rag"]  # no forwarder
    env = functions["llm-twin-rag"]["Environment"]["Variables"]
    assert "TRACE_QUEUE_URL" not in env
    alarms = [a["Properties"]["AlarmName"] for a in resources(template, "AWS::CloudWatch::Alarm")]
    assert not [a for a in alarms if "trace" in a or "forwarder" in a]
    assert template["Outputs"]["Traces"]["Value"].startswith("off")
    with_opik = synth(**OPIK)["api"]
    assert len(resources(with_opik, "AWS::SQS::Queue")) == 2
    assert "TraceRedriveCommand" in with_opik["Outputs"]


# --- finding 11: CORS on gateway errors, execution logs ----------------------------------------


@pytest.mark.parametrize(
    ("origins", "expected"),
    [
        ("https://a.example", "'https://a.example'"),
        ("https://a.example,https://b.example", "method.request.header.Origin"),
    ],
)
def test_gateway_errors_carry_cors_headers(
    synth: Callable[..., dict[str, dict[str, Any]]], origins: str, expected: str
) -> None:
    """Gateway responses (403 bad key, 429 throttled...) skip the integration, so without
    their own Access-Control-Allow-Origin a browser reports a CORS error instead of the JSON
    (API Gateway developer guide, "Enable CORS for a REST API resource": add the headers to
    the gateway responses too)."""
    for res in resources(synth(cors_origins=origins)["api"], "AWS::ApiGateway::GatewayResponse"):
        headers = res["Properties"]["ResponseParameters"]
        assert headers["gatewayresponse.header.Access-Control-Allow-Origin"] == expected
    for res in resources(synth()["api"], "AWS::ApiGateway::GatewayResponse"):
        assert (
            "gatewayresponse.header.Access-Control-Allow-Origin"
            not in res["Properties"]["ResponseParameters"]
        )


def test_the_execution_log_group_is_the_stacks_and_goes_with_it(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """API Gateway writes execution logs to API-Gateway-Execution-Logs_{rest-api-id}/{stage}
    and creates that group itself, without retention, when it does not exist (API Gateway
    developer guide, "Set up CloudWatch logging for REST APIs"): it would outlive destroy."""
    template = synth()["api"]
    (api_id,) = _by_id(template, "AWS::ApiGateway::RestApi")
    groups = {
        json.dumps(v["Properties"]["LogGroupName"]): v
        for v in _by_id(template, "AWS::Logs::LogGroup").values()
    }
    expected = json.dumps(
        {"Fn::Join": ["", ["API-Gateway-Execution-Logs_", {"Ref": api_id}, "/v1"]]}
    )
    assert expected in groups
    assert groups[expected]["DeletionPolicy"] == "Delete"
    assert groups[expected]["Properties"]["RetentionInDays"] > 0
