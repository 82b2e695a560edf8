"""cdk-nag packs beyond AwsSolutions: the NIST 800-53 rev 5 rules for SageMaker endpoints.

AwsSolutions has no SageMaker endpoint rule (DESIGN 4). cdk-nag v3 does not export its rule
functions to Python (jsii exports classes, and the rules are plain TypeScript functions), and
`NIST80053R5Checks` has no option to select rules. It does let a Python subclass override
`checkResource`, which every pack calls once per CfnResource: passing only SageMaker resources
on to the NIST pack's own `checkResource` runs the real NIST rules (including
`SageMakerEndpointConfigurationKMSKeyConfigured`) on them and nothing else. Every other NIST
rule answers "not applicable" for a SageMaker resource, so findings are exactly the SageMaker
ones, reported and acknowledged under the NIST pack's own plugin name.
"""

from __future__ import annotations

from aws_cdk import CfnResource
from cdk_nag import NIST80053R5Checks

# The plugin name the NIST pack reports; acknowledgement ids are `<plugin>::<rule id>`, which
# stacks.nag.acknowledge derives from the rule id's prefix.
NIST_PLUGIN = "NIST.800.53.R5"
ENDPOINT_KMS_RULE = f"{NIST_PLUGIN}-SageMakerEndpointConfigurationKMSKeyConfigured"
_CHECKED_TYPE_PREFIX = "AWS::SageMaker::"


class SageMakerEndpointNistChecks(NIST80053R5Checks):
    """NIST 800-53 rev 5, restricted to SageMaker resources (the endpoint config's KMS rule)."""

    def _check_resource(self, node: CfnResource) -> None:
        if node.cfn_resource_type.startswith(_CHECKED_TYPE_PREFIX):
            super()._check_resource(node)
