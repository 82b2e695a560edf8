"""The API key as OpenAI clients send it (`Authorization: Bearer <key>`), usage plan kept.

API Gateway reads API keys from `x-api-key` (apiKeySource HEADER) or from a Lambda authorizer's
`usageIdentifierKey` (apiKeySource AUTHORIZER), and with either source applies the usage plan's
throttling and quota to the key ("Choose an API key source in API Gateway",
https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-api-key-source.html).
This construct is the AUTHORIZER side: the key's value, generated into a Secrets Manager secret
(so it is never in a template), and a REQUEST authorizer (lambda_src/authorizer) that accepts the
key from either header and returns it as `usageIdentifierKey`. The API key is created from the
same secret (`key_value`), so the authorizer needs to read that one secret and nothing else: no
apigateway:GET, no listing of the account's keys.

No result cache in API Gateway: a cached REQUEST authorizer needs every identity source present
and answers 401 without calling the function otherwise (API_CreateAuthorizer identitySource,
https://docs.aws.amazon.com/apigateway/latest/api/API_CreateAuthorizer.html); a caller sends one
of two headers. The function caches the key itself (authorizer.handler.KEY_CACHE_S).
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from authorizer.handler import SECRET_ENV
from stacks.bundling import LAMBDA_SRC, PythonBundle
from stacks.config import LambdaArchitecture
from stacks.constructs.python_function import PythonFunction
from stacks.nag import acknowledge

KEY_CHARS = 40
"""API Gateway API key values are 20 to 128 characters."""
AUTHORIZER_MEMORY_MB = 256
AUTHORIZER_TIMEOUT_S = 5
"""One Secrets Manager call on a cold start; API Gateway waits at most 10 s for an authorizer."""
AUTHORIZER_BUNDLE = PythonBundle(
    requirements=LAMBDA_SRC / "requirements-authorizer.txt", packages=("authorizer",)
)


class ApiKeyAuthorizer(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        project: str,
        architecture: LambdaArchitecture,
    ) -> None:
        super().__init__(scope, construct_id)
        self.secret = secretsmanager.Secret(
            self,
            "KeyValue",
            secret_name=f"{project}/api-key",
            description="The API key's value (generated): x-api-key or Authorization: Bearer",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=KEY_CHARS, exclude_punctuation=True
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.secret,
            "AwsSolutions-SMG4",
            "The API key is created from this value; a rotation would have to replace the API "
            "key and every client's copy together, so the operator rotates it on purpose.",
        )
        self.function = PythonFunction(
            self,
            "Function",
            function_name=f"{project}-authorizer",
            description="API key authorizer: x-api-key or Authorization: Bearer -> usage plan key",
            bundle=AUTHORIZER_BUNDLE,
            handler="authorizer.handler.lambda_handler",
            memory_mb=AUTHORIZER_MEMORY_MB,
            timeout=Duration.seconds(AUTHORIZER_TIMEOUT_S),
            environment={SECRET_ENV: self.secret.secret_arn},
            service_name="authorizer",
            architecture=architecture,
        ).function
        self.secret.grant_read(self.function)
        self.authorizer = apigw.RequestAuthorizer(
            self,
            "Authorizer",
            handler=self.function,
            identity_sources=[],
            results_cache_ttl=Duration.seconds(0),
        )
        # CDK writes "" for no identity source; the property is optional without a cache.
        cfn_authorizer = self.authorizer.node.default_child
        assert isinstance(cfn_authorizer, apigw.CfnAuthorizer)
        cfn_authorizer.add_property_deletion_override("IdentitySource")

    @property
    def key_value(self) -> str:
        """The key's value for the API key resource: a dynamic reference, resolved by
        CloudFormation at deploy time, never a literal in the template."""
        return self.secret.secret_value.unsafe_unwrap()
