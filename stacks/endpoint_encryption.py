"""Encryption at rest of a SageMaker endpoint's storage: a KMS key where SageMaker allows one.

SageMaker's CreateEndpointConfig: "Certain Nitro-based instances include local storage ... Local
storage volumes are encrypted using a hardware module on the instance. You can't request a
KmsKeyId when using an instance type with local storage ... the call to CreateEndpointConfig
fails." Every GPU family this project deploys has local NVMe instance storage, so their endpoint
configs carry no KmsKeyId and the NIST rule that asks for one is acknowledged with that reason;
an instance family with EBS storage only gets a customer-managed key instead.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct, IConstruct

from stacks.nag import acknowledge
from stacks.nag_packs import ENDPOINT_KMS_RULE

# Instance family -> has local (instance store) NVMe storage. Source: the EC2 instance type
# pages (instance store volumes) and SageMaker's ResourceConfig docs ("ML instance families with
# the NVMe-type instance storage include ml.p4d, ml.g4dn, and ml.g5"). An unlisted family is an
# error: whether it takes a KmsKeyId decides whether the endpoint config deploys at all.
LOCAL_INSTANCE_STORAGE: dict[str, bool] = {
    "g4dn": True,
    "g5": True,
    "g6": True,
    "g6e": True,
    "p3dn": True,
    "p4d": True,
    "p4de": True,
    "p5": True,
    "p2": False,
    "p3": False,
    "inf1": False,
    "inf2": False,
}
KEY_DELETION_WINDOW = Duration.days(7)


def instance_family(instance_type: str) -> str:
    """`ml.g5.2xlarge` -> `g5`."""
    parts = instance_type.split(".")
    if len(parts) != 3 or parts[0] != "ml":
        raise ValueError(f"{instance_type!r} is not a SageMaker instance type (ml.<family>.<size>)")
    return parts[1]


def has_local_storage(instance_type: str) -> bool:
    family = instance_family(instance_type)
    if family not in LOCAL_INSTANCE_STORAGE:
        raise ValueError(
            f"unknown instance family {family!r} of {instance_type}: add it to "
            f"stacks.endpoint_encryption.LOCAL_INSTANCE_STORAGE (does it have instance store "
            f"volumes?); known: {', '.join(sorted(LOCAL_INSTANCE_STORAGE))}"
        )
    return LOCAL_INSTANCE_STORAGE[family]


def protect_endpoint_storage(endpoint_config: IConstruct, *, instance_type: str) -> kms.Key | None:
    """Set a customer-managed KMS key on `endpoint_config`, or, for an instance type with local
    storage (where SageMaker refuses one), acknowledge the NIST rule with that reason."""
    if not isinstance(endpoint_config, sagemaker.CfnEndpointConfig):
        raise TypeError(f"expected a CfnEndpointConfig, got {endpoint_config.node.path}")
    if has_local_storage(instance_type):
        acknowledge(
            endpoint_config,
            ENDPOINT_KMS_RULE,
            f"{instance_type} has local NVMe instance storage, encrypted at rest by the "
            "instance's hardware module; SageMaker's CreateEndpointConfig fails when a KmsKeyId "
            "is given for an instance type with local storage, so none can be set.",
        )
        return None
    scope = endpoint_config.node.scope
    assert isinstance(scope, Construct)
    # The default key policy delegates to the account's IAM policies, which is what SageMaker
    # needs: the principal calling CreateEndpoint (CloudFormation's) must be able to use the key.
    key = kms.Key(
        scope,
        "StorageKey",
        description=f"Encrypts the ML storage volume of {endpoint_config.node.path}",
        enable_key_rotation=True,
        pending_window=KEY_DELETION_WINDOW,
        removal_policy=RemovalPolicy.DESTROY,
    )
    endpoint_config.kms_key_id = key.key_arn
    return key
