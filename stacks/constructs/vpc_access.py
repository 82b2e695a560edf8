"""What the business Lambda needs to reach AWS from inside a VPC without a NAT gateway.

A Lambda attached to a VPC has no internet access: every AWS API it calls at run time needs a
NAT gateway or a VPC endpoint, or the first call hangs until the function times out. Qdrant
Cloud is on the internet and needs NAT either way (a Qdrant inside the VPC does not).
"""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from constructs import Construct

INTERFACE_SERVICES = {
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,  # Qdrant API key
    "SageMakerRuntime": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_RUNTIME,  # the LLM
}
"""Interface endpoints the business Lambda always needs; SQS is added when traces are sent."""


class LambdaVpcAccess(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, sends_traces: bool
    ) -> None:
        super().__init__(scope, construct_id)
        # The model archive is read from the CDK assets bucket at init: S3's gateway endpoint
        # has no hourly charge.
        self.s3 = vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        services = dict(INTERFACE_SERVICES)
        if sends_traces:
            services["Sqs"] = ec2.InterfaceVpcEndpointAwsService.SQS
        # Private DNS makes the SDK's default endpoints resolve to them; the default security
        # group lets the VPC's own CIDR in on 443.
        self.interfaces = {
            name: vpc.add_interface_endpoint(name, service=service, private_dns_enabled=True)
            for name, service in services.items()
        }
