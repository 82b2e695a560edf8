"""The CDK app's stacks and constructs.

The stacks derive contracts from the Lambda code itself (request models, timeout budget), so
`lambda_src` is importable here also when `cdk synth` runs app.py without the Makefile's
PYTHONPATH.
"""

import sys
from pathlib import Path

_LAMBDA_SRC = str(Path(__file__).resolve().parent.parent / "lambda_src")
if _LAMBDA_SRC not in sys.path:
    sys.path.append(_LAMBDA_SRC)
