"""Trace forwarder Lambda: trace events from SQS to Opik (DESIGN 3.4, issue 5).

opik decides whether to start Sentry while it is being imported, so its kill switches are
set here, before any module of this package imports it. The stack sets them too; setdefault
keeps an explicit value.
"""

import os

for _switch in ("OPIK_SENTRY_ENABLE", "OPIK_ANALYTICS_ENABLE"):
    os.environ.setdefault(_switch, "false")
