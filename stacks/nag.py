"""cdk-nag acknowledgements in one form: a granular rule id and a real reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct

MIN_REASON_CHARS = 40


def acknowledge(scope: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge one finding, e.g. `AwsSolutions-IAM5[Resource::*]`, with why it is right.

    Validations ids are `<plugin>::<rule>`; the plugin is the rule's pack prefix
    (`AwsSolutions`, `NIST.800.53.R5`).
    """
    if len(reason) < MIN_REASON_CHARS:
        raise ValueError(f"acknowledgement of {rule_id} needs a real reason, got {reason!r}")
    pack = rule_id.split("-", 1)[0]
    Validations.of(scope).acknowledge(Acknowledgment(id=f"{pack}::{rule_id}", reason=reason))


def rendered(scope: IConstruct, value: str) -> str:
    """A (possibly tokenized) string as cdk-nag writes it in finding ids: `{"Ref": "X"}` becomes
    `<X>`, `Fn::GetAtt [X, Y]` becomes `<X.Y>`, joins are concatenated."""
    from aws_cdk import Stack

    def render(node: object) -> str:
        if isinstance(node, str):
            return node
        if isinstance(node, dict) and "Ref" in node:
            return f"<{node['Ref']}>"
        if isinstance(node, dict) and "Fn::GetAtt" in node:
            return f"<{'.'.join(node['Fn::GetAtt'])}>"
        if isinstance(node, dict) and "Fn::Join" in node:
            separator, parts = node["Fn::Join"]
            return str(separator).join(render(p) for p in parts)
        raise ValueError(f"cannot render {node!r} as a nag finding id")

    return render(Stack.of(scope).resolve(value))
