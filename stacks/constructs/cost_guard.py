"""Cost guard: an idle alarm on an always-on inference component (optionally scaling it to zero) and
a monthly budget, both notifying an SNS topic.

- Idle alarm: `Invocations` (AWS/SageMaker, dimension `InferenceComponentName`, the dimension
  SageMaker publishes inference-component invocation metrics under) summed per period stays 0 for
  `deployment.idle_alarm_minutes`. SageMaker publishes no datapoint when nothing is invoked, so
  missing data is treated as breaching: "no data" is exactly the idle we want to catch. Only for
  `always_on` configs; `scale_to_zero` configs already release the GPU by their own scaling.
- Scale to zero (`deployment.idle_scale_to_zero`): the alarm's state changes drive an EventBridge
  rule -> a Step Functions state machine (AWS SDK tasks, no Lambda code). ALARM lowers the
  scalable target's minimum to 0 and sets the copy count to 0; OK (invocations again, after the
  endpoint's NoCapacityInvocationFailures step policy brought a copy back) puts the configured
  minimum back, so the always-on endpoint does not silently stay a scale-to-zero one. This only
  stops the bill if the endpoint's managed instance scaling may reach 0 instances
  (MinInstanceCount 0), as the endpoint construct does with `release_when_idle`.
- Budget (`deployment.monthly_budget_usd`): AWS::Budgets::Budget, monthly COST, alerts at 80% of
  actual and 100% of forecast spend to the topic (and `deployment.alarm_email`). It covers the whole
  account: a cost-allocation-tag filter reads $0 until the tag is activated in the Billing console.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_budgets as budgets
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from stacks.config import DeploymentConfig, ModelConfig
from stacks.constructs.monitoring import allow_publishing_service
from stacks.nag import acknowledge, rendered

NAMESPACE = "AWS/SageMaker"
INVOCATIONS = "Invocations"
# 5-minute buckets keep the alarm responsive (a single 1-day period would only close once a day).
FINE_PERIOD_MIN = 5
BUDGET_ACTUAL_ALERT_PERCENT = 80
BUDGET_FORECAST_ALERT_PERCENT = 100
STATE_MACHINE_LOG_RETENTION = logs.RetentionDays.ONE_MONTH


def idle_period_minutes(idle_minutes: int) -> int:
    return FINE_PERIOD_MIN if idle_minutes % FINE_PERIOD_MIN == 0 else 1


class CostGuard(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        endpoint_name: str,
        inference_component_name: str,
        config: ModelConfig,
        deployment: DeploymentConfig,
        topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id)
        self.idle_alarm: cloudwatch.Alarm | None = None
        self.scale_to_zero: sfn.StateMachine | None = None
        self.budget: budgets.CfnBudget | None = None

        if config.scaling.mode == "always_on":
            self.idle_alarm = self._idle_alarm(
                endpoint_name, inference_component_name, deployment, topic
            )
            if deployment.idle_scale_to_zero:
                self.scale_to_zero = self._scale_to_zero(
                    self.idle_alarm,
                    inference_component_name,
                    deployment,
                    min_copies=config.scaling.effective_min_copies,
                )
        if deployment.monthly_budget_usd is not None:
            self.budget = self._budget(deployment.monthly_budget_usd, deployment, topic)

    def _idle_alarm(
        self, endpoint_name: str, component: str, deployment: DeploymentConfig, topic: sns.ITopic
    ) -> cloudwatch.Alarm:
        minutes = deployment.idle_alarm_minutes
        period = idle_period_minutes(minutes)
        metric = cloudwatch.Metric(
            namespace=NAMESPACE,
            metric_name=INVOCATIONS,
            dimensions_map={"InferenceComponentName": component},
            statistic=cloudwatch.Stats.SUM,
            period=Duration.minutes(period),
        )
        action = (
            "scales it to zero copies" if deployment.idle_scale_to_zero else "keeps billing the GPU"
        )
        alarm = cloudwatch.Alarm(
            self,
            "IdleAlarm",
            alarm_name=f"{deployment.project}-{component}-idle",
            alarm_description=(
                f"No invocations of inference component {component} on endpoint {endpoint_name} for "
                f"{minutes} min: the always-on GPU is idle and {action}."
            ),
            metric=metric,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
            threshold=0,
            evaluation_periods=minutes // period,
            datapoints_to_alarm=minutes // period,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(topic))
        return alarm

    def _scale_to_zero(
        self,
        alarm: cloudwatch.Alarm,
        component: str,
        deployment: DeploymentConfig,
        *,
        min_copies: int,
    ) -> sfn.StateMachine:
        component_arn = Stack.of(self).format_arn(
            service="sagemaker", resource="inference-component", resource_name=component
        )
        update = tasks.CallAwsService(
            self,
            "SetCopyCountZero",
            service="sagemaker",
            action="updateInferenceComponentRuntimeConfig",
            parameters={
                "InferenceComponentName": component,
                "DesiredRuntimeConfig": {"CopyCount": 0},
            },
            iam_action="sagemaker:UpdateInferenceComponentRuntimeConfig",
            iam_resources=[component_arn],
        )
        # Lower the scalable target's minimum first, or Application Auto Scaling would restore
        # the always-on minimum of one copy; a request then brings a copy back through the
        # endpoint's NoCapacityInvocationFailures step policy (TgiEndpoint release_when_idle).
        allow_zero = self._register_min(component, "AllowZeroCopies", 0)
        restore = self._register_min(component, "RestoreMinimumCopies", min_copies)
        # RegisterScalableTarget checks the caller may describe and update the target resource
        # (Application Auto Scaling User Guide, "Permissions required for API actions on target
        # services and CloudWatch", SageMaker).
        target_service_actions = iam.PolicyStatement(
            actions=[
                "sagemaker:DescribeInferenceComponent",
                "sagemaker:UpdateInferenceComponentRuntimeConfig",
            ],
            resources=[component_arn],
        )
        on_state = (
            sfn.Choice(self, "AlarmState")
            .when(
                sfn.Condition.string_equals("$.detail.state.value", "ALARM"),
                allow_zero.next(update),
            )
            .otherwise(restore)
        )
        log_group = logs.LogGroup(
            self,
            "ScaleToZeroLogs",
            log_group_name=f"/aws/vendedlogs/states/{deployment.project}-{component}-scale-to-zero",
            retention=STATE_MACHINE_LOG_RETENTION,
            removal_policy=RemovalPolicy.DESTROY,
        )
        machine = sfn.StateMachine(
            self,
            "ScaleToZero",
            definition_body=sfn.DefinitionBody.from_chainable(on_state),
            timeout=Duration.minutes(5),
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL),
        )
        machine.add_to_role_policy(target_service_actions)
        acknowledge(
            machine,
            "AwsSolutions-IAM5[Resource::*]",
            "Only the X-Ray trace and CloudWatch Logs vended-delivery actions CDK adds for tracing "
            "and logging use Resource '*': those APIs have no resource-level permissions. The one "
            "SageMaker action is scoped to this inference component's ARN.",
        )
        acknowledge(
            machine,
            f"AwsSolutions-IAM5[Resource::{rendered(self, self._scalable_targets_arn())}]",
            "Scalable target ARNs end in an id Application Auto Scaling assigns at registration, "
            "unknown at synth; the call itself names this inference component's resource id.",
        )
        events.Rule(
            self,
            "OnIdle",
            description=f"Idle alarm of {component}: ALARM -> 0 copies, OK -> configured minimum",
            event_pattern=events.EventPattern(
                source=["aws.cloudwatch"],
                detail_type=["CloudWatch Alarm State Change"],
                resources=[alarm.alarm_arn],
                detail={"state": {"value": ["ALARM", "OK"]}},
            ),
            targets=[targets.SfnStateMachine(machine)],
        )
        return machine

    def _scalable_targets_arn(self) -> str:
        return Stack.of(self).format_arn(
            service="application-autoscaling", resource="scalable-target", resource_name="*"
        )

    def _register_min(
        self, component: str, construct_id: str, minimum: int
    ) -> tasks.CallAwsService:
        return tasks.CallAwsService(
            self,
            construct_id,
            service="applicationautoscaling",
            action="registerScalableTarget",
            parameters={
                "ServiceNamespace": "sagemaker",
                "ResourceId": f"inference-component/{component}",
                "ScalableDimension": "sagemaker:inference-component:DesiredCopyCount",
                "MinCapacity": minimum,
            },
            iam_action="application-autoscaling:RegisterScalableTarget",
            iam_resources=[self._scalable_targets_arn()],
        )

    def _budget(
        self, limit_usd: float, deployment: DeploymentConfig, topic: sns.ITopic
    ) -> budgets.CfnBudget:
        # Budgets publishes to the topic as budgets.amazonaws.com (a no-op for imported topics).
        topic.add_to_resource_policy(
            iam.PolicyStatement(
                actions=["sns:Publish"],
                principals=[iam.ServicePrincipal("budgets.amazonaws.com")],
                resources=[topic.topic_arn],
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            )
        )
        allow_publishing_service(topic, "budgets.amazonaws.com")
        subscribers = [
            budgets.CfnBudget.SubscriberProperty(subscription_type="SNS", address=topic.topic_arn)
        ]
        if deployment.alarm_email:
            subscribers.append(
                budgets.CfnBudget.SubscriberProperty(
                    subscription_type="EMAIL", address=deployment.alarm_email
                )
            )

        def notify(
            kind: str, percent: int
        ) -> budgets.CfnBudget.NotificationWithSubscribersProperty:
            return budgets.CfnBudget.NotificationWithSubscribersProperty(
                notification=budgets.CfnBudget.NotificationProperty(
                    notification_type=kind,
                    comparison_operator="GREATER_THAN",
                    threshold=percent,
                    threshold_type="PERCENTAGE",
                ),
                subscribers=subscribers,
            )

        return budgets.CfnBudget(
            self,
            "MonthlyBudget",
            budget=budgets.CfnBudget.BudgetDataProperty(
                budget_name=f"{deployment.project}-monthly",
                budget_type="COST",
                time_unit="MONTHLY",
                budget_limit=budgets.CfnBudget.SpendProperty(amount=limit_usd, unit="USD"),
            ),
            notifications_with_subscribers=[
                notify("ACTUAL", BUDGET_ACTUAL_ALERT_PERCENT),
                notify("FORECASTED", BUDGET_FORECAST_ALERT_PERCENT),
            ],
        )
