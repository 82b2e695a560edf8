"""Lambda SnapStart hooks of the web app, called by the Lambda Web Adapter.

The adapter runs this app as a process of its own: its `/opt/bootstrap` execs `web/run.sh`
instead of the Python runtime's bootstrap, so the runtime client that runs `snapshot_restore_py`
hooks never starts, and hooks registered with it would never fire (aws/aws-lambda-web-adapter
issue #184). The adapter (1.1.0 and later) bridges the lifecycle instead: it POSTs to the path in
AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH before the snapshot and to AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH
after a restore, before any traffic; a non-2xx answer fails that phase; outside requests for
those paths get the adapter's own 403 (aws-lambda-web-adapter `docs/src/features/snapstart.md`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fastapi import FastAPI, Response

BEFORE_SNAPSHOT_ENV = "AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH"
AFTER_RESTORE_ENV = "AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH"
HOOK_PATHS = {
    BEFORE_SNAPSHOT_ENV: "/lwa/snapstart/before",
    AFTER_RESTORE_ENV: "/lwa/snapstart/after",
}
"""The adapter's variable -> the app's path: paths no client route uses."""


def add_hooks(
    app: FastAPI,
    environ: Mapping[str, str],
    *,
    before_snapshot: Callable[[], None],
    after_restore: Callable[[], None],
) -> None:
    """Mount each hook at the path the adapter was given, and only when it was given one: the
    adapter's 403 guard exists only for configured paths, so an unconfigured hook route would be
    open to any caller (and in local mode there is no adapter at all)."""
    for variable, hook in (
        (BEFORE_SNAPSHOT_ENV, before_snapshot),
        (AFTER_RESTORE_ENV, after_restore),
    ):
        if path := environ.get(variable):
            app.add_api_route(path, _endpoint(hook), methods=["POST"], include_in_schema=False)


def _endpoint(hook: Callable[[], None]) -> Callable[[], Response]:
    def run() -> Response:  # sync: FastAPI runs it on its thread pool, off the event loop
        hook()  # an exception answers 500, which fails the phase instead of serving traffic
        return Response(status_code=204)

    return run
