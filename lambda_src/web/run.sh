#!/bin/bash
# The Lambda handler under the Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap runs
# this instead of the Python runtime's bootstrap). boto3 comes from the runtime's own folder.
export PYTHONPATH="${LAMBDA_TASK_ROOT}:${LAMBDA_RUNTIME_DIR}${PYTHONPATH:+:$PYTHONPATH}"
exec python -m uvicorn web.main:app --host 127.0.0.1 --port "${AWS_LWA_PORT}" \
  --no-server-header --no-access-log --timeout-graceful-shutdown 1
