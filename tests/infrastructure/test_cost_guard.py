"""CostGuard synthesized alone in a minimal stack (the real stacks wire it in later)."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Match, Template

from stacks.config import DeploymentConfig, load_model_config
from stacks.constructs.cost_guard import CostGuard
from tests.conftest import app_context

ENDPOINT = "llm-twin-twin-llama-3-1-8b"
COMPONENT = "llm-twin-twin-llama-3-1-8b-ic"


def synth(model: str = "twin-llama-3.1-8b", **deployment: Any) -> Template:
    app = cdk.App(context=app_context())
    stack = cdk.Stack(
        app, "CostGuardTest", env=cdk.Environment(account="123456789012", region="us-east-1")
    )
    topic = sns.Topic(stack, "Alerts")
    CostGuard(
        stack,
        "CostGuard",
        endpoint_name=ENDPOINT,
        inference_component_name=COMPONENT,
        config=load_model_config(model),
        deployment=DeploymentConfig(**deployment),
        topic=topic,
    )
    return Template.from_stack(stack)


@pytest.fixture(scope="module")
def guarded() -> Template:
    return synth(
        idle_alarm_minutes=60,
        idle_scale_to_zero=True,
        monthly_budget_usd=500,
        alarm_email="ops@example.com",
    )


def _only(template: Template, type_: str) -> dict[str, Any]:
    resources = template.find_resources(type_)
    assert len(resources) == 1, resources
    properties: dict[str, Any] = next(iter(resources.values()))["Properties"]
    return properties


def _topic_ref(template: Template) -> dict[str, str]:
    (logical_id,) = template.find_resources("AWS::SNS::Topic")
    return {"Ref": logical_id}


def test_idle_alarm_watches_the_inference_component_invocations(guarded: Template) -> None:
    # Given an always-on config with a 60-minute idle time; When synthesized
    alarm = _only(guarded, "AWS::CloudWatch::Alarm")

    # Then the alarm sums AWS/SageMaker Invocations of the component in 5-minute periods over 60 minutes
    assert alarm["Namespace"] == "AWS/SageMaker"
    assert alarm["MetricName"] == "Invocations"
    assert alarm["Dimensions"] == [{"Name": "InferenceComponentName", "Value": COMPONENT}]
    assert alarm["Statistic"] == "Sum"
    assert alarm["Period"] == 300
    assert alarm["EvaluationPeriods"] == 12
    assert alarm["DatapointsToAlarm"] == 12
    assert alarm["ComparisonOperator"] == "LessThanOrEqualToThreshold"
    assert alarm["Threshold"] == 0
    # no datapoints is what an idle component publishes
    assert alarm["TreatMissingData"] == "breaching"
    assert alarm["AlarmActions"] == [_topic_ref(guarded)]


def test_idle_minutes_not_divisible_by_five_use_one_minute_periods() -> None:
    alarm = _only(synth(idle_alarm_minutes=7), "AWS::CloudWatch::Alarm")
    assert (alarm["Period"], alarm["EvaluationPeriods"]) == (60, 7)


def test_scale_to_zero_sdk_calls_are_scoped_to_the_component(guarded: Template) -> None:
    # Then an EventBridge rule on the alarm entering ALARM (or OK again) starts a state machine
    rule = _only(guarded, "AWS::Events::Rule")
    assert rule["EventPattern"]["detail-type"] == ["CloudWatch Alarm State Change"]
    assert rule["EventPattern"]["detail"] == {"state": {"value": ["ALARM", "OK"]}}
    (machine_id,) = guarded.find_resources("AWS::StepFunctions::StateMachine")
    assert rule["Targets"][0]["Arn"] == {"Ref": machine_id}

    # whose SageMaker task sets the component's copy count to 0
    machine = _only(guarded, "AWS::StepFunctions::StateMachine")
    definition = json.dumps(machine["DefinitionString"])
    assert ":states:::aws-sdk:sagemaker:updateInferenceComponentRuntimeConfig" in definition
    assert f'\\"InferenceComponentName\\":\\"{COMPONENT}\\"' in definition
    assert '\\"CopyCount\\":0' in definition

    # and every SageMaker permission is on that component's ARN only (the stack's region is known,
    # so @aws-cdk/core:enablePartitionLiterals writes its partition as a literal)
    statements = [
        s
        for policy in guarded.find_resources("AWS::IAM::Policy").values()
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if "sagemaker" in json.dumps(s["Action"])
    ]
    component_arn = f"arn:aws:sagemaker:us-east-1:123456789012:inference-component/{COMPONENT}"
    assert statements
    assert all(s["Resource"] == component_arn for s in statements)


def test_budget_alerts_at_80_percent_actual_and_100_percent_forecast(guarded: Template) -> None:
    budget = _only(guarded, "AWS::Budgets::Budget")
    assert budget["Budget"] == {
        "BudgetName": "llm-twin-monthly",
        "BudgetType": "COST",
        "TimeUnit": "MONTHLY",
        "BudgetLimit": {"Amount": 500, "Unit": "USD"},
    }
    alerts = {
        (n["Notification"]["NotificationType"], n["Notification"]["Threshold"]): n["Subscribers"]
        for n in budget["NotificationsWithSubscribers"]
    }
    assert set(alerts) == {("ACTUAL", 80), ("FORECASTED", 100)}
    for subscribers in alerts.values():
        assert {"SubscriptionType": "EMAIL", "Address": "ops@example.com"} in subscribers
        assert {
            "SubscriptionType": "SNS",
            "Address": _topic_ref(guarded),
        } in subscribers
    # Budgets may publish to the topic
    guarded.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Principal": {"Service": "budgets.amazonaws.com"},
                                "Action": "sns:Publish",
                            }
                        )
                    ]
                )
            }
        },
    )


def test_nothing_is_retained_on_destroy(guarded: Template) -> None:
    for resource in guarded.to_json()["Resources"].values():
        assert resource.get("DeletionPolicy", "Delete") == "Delete"


def test_defaults_give_an_idle_alarm_only() -> None:
    # Given no budget and no scale-to-zero; Then just the notifying alarm
    template = synth()
    template.resource_count_is("AWS::CloudWatch::Alarm", 1)
    template.resource_count_is("AWS::StepFunctions::StateMachine", 0)
    template.resource_count_is("AWS::Events::Rule", 0)
    template.resource_count_is("AWS::Budgets::Budget", 0)


def test_scale_to_zero_configs_get_no_idle_alarm_but_keep_the_budget() -> None:
    # Given a config that already scales to zero by itself
    template = synth("llama-3.1-8b-instruct", idle_scale_to_zero=True, monthly_budget_usd=100)
    template.resource_count_is("AWS::CloudWatch::Alarm", 0)
    template.resource_count_is("AWS::StepFunctions::StateMachine", 0)
    template.resource_count_is("AWS::Budgets::Budget", 1)


def test_aws_solutions_nag_pack_has_no_unacknowledged_finding() -> None:
    # Given every optional part enabled and the AwsSolutions pack applied
    from aws_cdk import Validations
    from cdk_nag import AwsSolutionsChecks

    app = cdk.App(context=app_context())
    stack = cdk.Stack(
        app, "NagTest", env=cdk.Environment(account="123456789012", region="us-east-1")
    )
    CostGuard(
        stack,
        "CostGuard",
        endpoint_name=ENDPOINT,
        inference_component_name=COMPONENT,
        config=load_model_config("twin-llama-3.1-8b"),
        deployment=DeploymentConfig(idle_scale_to_zero=True, monthly_budget_usd=100),
        topic=sns.Topic(stack, "Alerts", enforce_ssl=True),
    )
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))

    # When synthesizing; Then validation passes (it raises on any unacknowledged finding)
    app.synth()


def test_the_idle_guard_puts_the_configured_minimum_back_when_traffic_returns(
    guarded: Template,
) -> None:
    """RegisterScalableTarget with MinCapacity 0 changes the target outside CloudFormation, and a
    later deploy with an unchanged template does not reset it (CloudFormation only updates what
    the template changes): the state machine must restore the always-on minimum itself once
    the idle alarm is OK again. Its role needs what Application Auto Scaling checks on the target
    service (Application Auto Scaling User Guide, "Permissions required for API actions on target
    services and CloudWatch", SageMaker: DescribeInferenceComponent and
    UpdateInferenceComponentRuntimeConfig for inference components)."""
    definition = json.loads(
        "".join(
            p if isinstance(p, str) else "X"
            for p in _only(guarded, "AWS::StepFunctions::StateMachine")["DefinitionString"][
                "Fn::Join"
            ][1]
        )
    )
    registers = [
        state["Parameters"]["MinCapacity"]
        for state in definition["States"].values()
        if state.get("Resource", "").endswith("applicationautoscaling:registerScalableTarget")
    ]
    assert sorted(registers) == [0, 1]  # 0 on ALARM, the config's min_copies (1) on OK
    actions = {
        a
        for policy in guarded.find_resources("AWS::IAM::Policy").values()
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert {
        "application-autoscaling:RegisterScalableTarget",
        "sagemaker:DescribeInferenceComponent",
        "sagemaker:UpdateInferenceComponentRuntimeConfig",
    } <= actions
