"""Faults of every dependency, seen from the client: status, error body, Retry-After, the trace
event that records the failure, clean logs, and traces that are never silently lost.

Two ways in, both over real HTTP through `tools.local_server`:
- `server`: `python -m tools.local_server` as a process (local mode: the HTTP TGI adapter), with
  Qdrant behind `devkit.fakes.qdrant_server.QdrantFake` (real search results from an embedded store,
  switchable to down / slow / 5xx / missing collection) and the TGI fake's fault modes.
- `serve(deps)`: the same `LocalServer` and handler in this process, for adapters that need
  wiring the process cannot take from env vars (SageMaker runtime at a local URL, SQS under
  moto, a count of metrics).

Time is never measured: each fault's worst case is computed from the deployed timeouts
(`stacks.constructs.rag_api`) and the adapters' own bounds, and compared with the Lambda timeout.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto import mock_aws
from qdrant_client import QdrantClient

from devkit.fakes.opik_recorder import OpikRecorder
from devkit.fakes.qdrant_server import QdrantFake, QdrantFault
from devkit.fakes.tgi_server import Fault, TgiServer
from devkit.tiny_models import build_cross_encoder, build_embedder
from feature.chunking import Chunker
from feature.ingest import ingest_file
from rag.adapters import trace_sinks as sinks
from rag.adapters.llm.http import HttpLLM
from rag.adapters.llm.sagemaker import SageMakerLLM
from rag.adapters.onnx_models import OnnxEmbedder
from rag.adapters.trace_sinks import MemoryTraceSink, PolicySink, SqsTraceSink
from rag.domain import budget
from rag.domain.budget import (
    FAST_FAILURE_S,
    generation_timeout_s,
    worst_case_call_s,
    worst_case_send_s,
)
from rag.domain.deps import Deps
from rag.settings import Settings
from rag.wiring import build_deps
from stacks.constructs import rag_api
from tests.integration.test_forwarder_opik import FakeLambdaContext, sqs_record
from tests.integration.test_local_server import (
    CORPUS,
    DOCUMENTS,
    ServerProcess,
    assert_error,
    start_server,
    trace_lines,
    twin_responder,
)
from tools.local_server import LocalServer, local_app

QDRANT_KEY = "qdrant-secret-key-for-fault-tests"
AWS_SECRET = "aws-secret-for-fault-tests"
SECRETS = (QDRANT_KEY, AWS_SECRET)
ACCOUNT = "123456789012"
LEAKS = ("Traceback", 'File "', ACCOUNT, "arn:aws", *SECRETS)
"""Nothing of these may reach a response body."""
ENDPOINT = "twin-llm"
COMPONENT = "twin-llm-ic"
REGION = "eu-west-1"
QUERY = "How should I chunk documents for retrieval?"
NO_HELPERS = {"author": "Maya Okafor", "expand": False}
"""A body that runs no LLM helper call: the generation call is the only one a fault hits."""
TEST_QDRANT_TIMEOUT_S = 2
"""Generous for a local fake: a loaded machine must not turn a healthy search into a timeout."""
TEST_LLM_READ_TIMEOUT_S = 1
HANG_S = 4
"""Longer than the test read timeouts; the fakes wake early when they stop."""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def model_dirs(workdir: Path) -> tuple[Path, Path]:
    words = sorted(
        {w.strip(".,:;!?()\"'").lower() for d in DOCUMENTS for w in d["content"].split()}
    )
    return (
        build_embedder(workdir / "embedding", words=words),
        build_cross_encoder(workdir / "reranker", words=words),
    )


@pytest.fixture(scope="module")
def qdrant(model_dirs: tuple[Path, Path]) -> Iterator[QdrantFake]:
    embedder = OnnxEmbedder(model_dirs[0], threads=1)
    backend = QdrantClient(location=":memory:")
    chunker = Chunker(embedder.tokenizer, max_length=embedder.max_length)
    ingest_file(CORPUS, client=backend, embedder=embedder, chunker=chunker)
    with QdrantFake(backend, api_key=QDRANT_KEY) as fake:  # as a keyed server: 401 without it
        yield fake
    backend.close()


@pytest.fixture(scope="module")
def tgi() -> Iterator[TgiServer]:
    with TgiServer(twin_responder) as server:
        yield server


@pytest.fixture(autouse=True)
def healthy_again(qdrant: QdrantFake, tgi: TgiServer) -> Iterator[None]:
    yield
    qdrant.set_fault(None)
    qdrant.up()
    tgi.set_fault(None)


@pytest.fixture(scope="module")
def server(
    workdir: Path, model_dirs: tuple[Path, Path], qdrant: QdrantFake, tgi: TgiServer
) -> Iterator[ServerProcess]:
    env = {
        "QDRANT_URL": qdrant.url,
        "QDRANT_API_KEY": QDRANT_KEY,
        "QDRANT_TIMEOUT_S": str(TEST_QDRANT_TIMEOUT_S),
        "EMBEDDING_MODEL_DIR": str(model_dirs[0]),
        "RERANKER_MODEL_DIR": str(model_dirs[1]),
        "LLM_URL": tgi.url,
        "LLM_CONNECT_TIMEOUT_S": "1",
        "LLM_READ_TIMEOUT_S": str(TEST_LLM_READ_TIMEOUT_S),
        "LLM_HELPER_TIMEOUT_S": "1",
        "TRACE_FILE": str(workdir / "traces.jsonl"),
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    }
    running = start_server(env, workdir / "server.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


@dataclass(frozen=True)
class Outcome:
    response: httpx.Response
    trace: dict[str, Any]
    log: str


def call(server: ServerProcess, client: httpx.Client, path: str, body: dict[str, Any]) -> Outcome:
    """One request; the trace line and the server log it produced."""
    traces = Path(server.log_path).with_name("traces.jsonl")
    log_before, traces_before = len(server.log()), len(trace_lines(traces))
    response = client.post(path, json=body)
    new = trace_lines(traces)[traces_before:]
    assert len(new) == 1, new  # exactly one trace event per request, failed or not
    return Outcome(response, new[0], server.log()[log_before:])


def assert_no_leak(response: httpx.Response) -> None:
    for leak in LEAKS:
        assert leak not in response.text, leak


def assert_clean_process_log(log: str) -> None:
    """No unhandled exception: no traceback, no ERROR line, no 'unhandled error', no secret."""
    assert "Traceback" not in log, log
    assert '"level":"ERROR"' not in log, log
    assert "unhandled error" not in log, log
    for secret in SECRETS:
        assert secret not in log


def assert_failure_traced(trace: dict[str, Any], status: int, code: str, span: str) -> None:
    assert trace["error"]["code"] == code
    assert trace["metadata"]["status"] == status
    assert trace["output"] is None
    failed = [s for s in trace["spans"] if s["error"] is not None]
    assert [s["name"] for s in failed] == [span]
    assert failed[0]["error"]["code"] == code
    for secret in SECRETS:
        assert secret not in json.dumps(trace)


# --------------------------------------------------------------------------- timeout budget


def qdrant_bound_s(timeout_s: float) -> float:
    """A search is at most two sequential rounds (collection states when the cache is stale,
    then the query batch), each bounded by the client's timeout (rounded up: whole seconds)."""
    return 2 * math.ceil(timeout_s)


DEPLOYED_HELPERS_S = rag_api.LLM_HELPER_TIMEOUT_S
DEPLOYED_QDRANT_S = qdrant_bound_s(rag_api.QDRANT_TIMEOUT_S)
DEPLOYED_GENERATE_S = worst_case_call_s(rag_api.LLM_CONNECT_TIMEOUT_S, rag_api.LLM_READ_TIMEOUT_S)
FAILING_STAGE_BOUNDS_S = {
    # The failing dependency at its worst; the LLM helpers (same LLM) at their wait bound.
    "qdrant": DEPLOYED_HELPERS_S + DEPLOYED_QDRANT_S,
    "llm": DEPLOYED_HELPERS_S + DEPLOYED_GENERATE_S,
    "sqs": worst_case_send_s(),
}


@pytest.mark.parametrize("stage", sorted(FAILING_STAGE_BOUNDS_S))
def test_a_failing_dependency_ends_the_request_inside_the_lambda_timeout(stage: str) -> None:
    # Given the deployed timeouts, when one dependency fails at its slowest, then the buffered
    # request is answered (with its error) inside API Gateway's classic 29 s (the Lambda's own
    # timeout is longer now: it covers the streamed route's budget)
    assert FAILING_STAGE_BOUNDS_S[stage] < rag_api.API_GATEWAY_TIMEOUT_S
    assert rag_api.LLM_READ_TIMEOUT_S < rag_api.REQUEST_BUDGET_S < rag_api.LAMBDA_TIMEOUT_S


def test_every_dependency_at_its_timeout_at_once_still_fits_the_lambda_timeout() -> None:
    # Helpers and Qdrant at their worst; the generation call gets only what is left of the request
    # budget (rag.domain.budget.generation_timeout_s), then the trace send at its worst.
    elapsed_s = DEPLOYED_HELPERS_S + DEPLOYED_QDRANT_S
    read_s = generation_timeout_s(
        read_timeout_s=rag_api.LLM_READ_TIMEOUT_S,
        connect_timeout_s=rag_api.LLM_CONNECT_TIMEOUT_S,
        request_budget_s=rag_api.REQUEST_BUDGET_S,
        elapsed_s=elapsed_s,
    )
    assert read_s is not None
    total = (
        elapsed_s + worst_case_call_s(rag_api.LLM_CONNECT_TIMEOUT_S, read_s) + worst_case_send_s()
    )
    assert total <= rag_api.REQUEST_BUDGET_S < rag_api.API_GATEWAY_TIMEOUT_S


def test_the_test_timeouts_make_each_fault_fire_before_the_fake_answers() -> None:
    # The hang and slow faults must outlast the timeouts the server under test runs with
    assert HANG_S > TEST_LLM_READ_TIMEOUT_S
    assert math.ceil(TEST_QDRANT_TIMEOUT_S) < HANG_S
    assert FAST_FAILURE_S >= 1


# --------------------------------------------------------------------------- Qdrant faults

QDRANT_FAULTS = [
    pytest.param("down", 502, "upstream_error", id="unreachable"),
    pytest.param(QdrantFault.slow(HANG_S), 504, "upstream_timeout", id="slow"),
    pytest.param(QdrantFault.http_status(500), 502, "upstream_error", id="http-500"),
    pytest.param(QdrantFault.http_status(503), 502, "upstream_error", id="http-503"),
]


@pytest.mark.parametrize("route", ["/rag", "/retrieve"])
@pytest.mark.parametrize(("fault", "status", "code"), QDRANT_FAULTS)
def test_qdrant_faults_answer_the_contract_error_and_are_traced(
    server: ServerProcess,
    client: httpx.Client,
    qdrant: QdrantFake,
    route: str,
    fault: QdrantFault | str,
    status: int,
    code: str,
) -> None:
    # Given Qdrant misbehaving
    if fault == "down":
        qdrant.down()
    else:
        assert isinstance(fault, QdrantFault)
        qdrant.set_fault(fault)

    # When a request needs it
    outcome = call(server, client, route, {"query": QUERY, **NO_HELPERS})

    # Then the client gets the contract's error, no Retry-After (not a model state), no leak
    message = assert_error(outcome.response, status, code)
    assert "Qdrant" in message
    assert "retry-after" not in outcome.response.headers
    assert_no_leak(outcome.response)
    # And the trace records the failure on the search span; the log has no traceback
    assert_failure_traced(outcome.trace, status, code, "search")
    assert_clean_process_log(outcome.log)


def test_a_missing_collection_is_skipped_with_a_warning(
    server: ServerProcess, client: httpx.Client, qdrant: QdrantFake
) -> None:
    # Given the posts collection deleted on the server
    qdrant.set_fault(QdrantFault.missing("embedded_posts"))

    # When asking
    outcome = call(server, client, "/rag", {"query": QUERY, "k": 5, "include_context": True})

    # Then the answer comes from the other collections, and the trace says what was skipped
    assert outcome.response.status_code == 200, outcome.response.text
    body = outcome.response.json()
    assert body["sources"]
    assert "embedded_posts" not in {s["collection"] for s in body["sources"]}
    assert (
        "collection embedded_posts does not exist, skipped" in outcome.trace["metadata"]["warnings"]
    )
    assert outcome.trace["error"] is None
    assert_clean_process_log(outcome.log)


def test_qdrant_back_up_serves_again(
    server: ServerProcess, client: httpx.Client, qdrant: QdrantFake
) -> None:
    # Given Qdrant down for one request, then back
    qdrant.down()
    down = call(server, client, "/retrieve", {"query": QUERY, **NO_HELPERS})
    qdrant.up()

    # When asking again, then the same server recovers without a restart
    again = call(server, client, "/retrieve", {"query": QUERY, **NO_HELPERS})
    assert down.response.status_code == 502
    assert again.response.status_code == 200
    assert again.response.json()["chunks"]


# --------------------------------------------------------------------------- LLM faults (HTTP TGI)

TGI_FAULTS = [
    pytest.param(Fault.http_status(422), 400, "model_input_invalid", None, id="tgi-422"),
    pytest.param(Fault.http_status(424), 502, "model_error", None, id="tgi-424"),
    pytest.param(Fault.http_status(429), 429, "model_overloaded", "2", id="tgi-429"),
    pytest.param(
        Fault.http_status(429, **{"Retry-After": "7"}),
        429,
        "model_overloaded",
        "7",
        id="tgi-429-retry-after",
    ),
    pytest.param(Fault.http_status(500), 502, "model_error", None, id="tgi-500"),
    pytest.param(Fault.http_status(503), 503, "model_unavailable", "30", id="tgi-503"),
    pytest.param(Fault.malformed(), 502, "model_bad_response", None, id="malformed-body"),
    pytest.param(Fault.wrong_shape(), 502, "model_bad_response", None, id="wrong-shape"),
    pytest.param(Fault.close(), 502, "model_connection_lost", None, id="connection-closed"),
    pytest.param(Fault.hang(HANG_S), 504, "model_timeout", None, id="read-timeout"),
]


@pytest.mark.parametrize(("fault", "status", "code", "retry_after"), TGI_FAULTS)
def test_tgi_faults_answer_the_contract_error_and_are_traced(
    server: ServerProcess,
    client: httpx.Client,
    tgi: TgiServer,
    fault: Fault,
    status: int,
    code: str,
    retry_after: str | None,
) -> None:
    # Given the TGI server failing every generation this way
    tgi.set_fault(fault)

    # When asking for an answer
    outcome = call(server, client, "/rag", {"query": QUERY, **NO_HELPERS})

    # Then the client gets the contract's status and code, Retry-After where it applies
    assert_error(outcome.response, status, code)
    assert outcome.response.headers.get("retry-after") == retry_after
    assert_no_leak(outcome.response)
    # And the trace has the failure on the generate span, after a successful retrieval
    assert_failure_traced(outcome.trace, status, code, "generate")
    assert {"embed", "search", "prompt"} <= {s["name"] for s in outcome.trace["spans"]}
    assert_clean_process_log(outcome.log)


def test_failing_helpers_fall_back_and_the_generation_error_is_answered(
    server: ServerProcess, client: httpx.Client, tgi: TgiServer
) -> None:
    # Given the LLM answering 500 to every call, helpers included
    tgi.set_fault(Fault.http_status(500))

    # When a request runs self-query and expansion
    outcome = call(server, client, "/rag", {"query": "What does Maya Okafor say about chunking?"})

    # Then both helpers fell back (recorded), and the generation's failure is the answer
    assert_error(outcome.response, 502, "model_error")
    trace = outcome.trace
    assert set(trace["metadata"]["fallbacks"]) == {"self_query", "query_expansion"}
    errors = {s["name"]: s["error"]["code"] for s in trace["spans"] if s["error"]}
    assert errors == {
        "self_query": "model_error",
        "query_expansion": "model_error",
        "generate": "model_error",
    }
    assert_clean_process_log(outcome.log)


def test_retrieve_survives_an_llm_that_is_down(
    server: ServerProcess, client: httpx.Client, tgi: TgiServer
) -> None:
    # Given every LLM call failing
    tgi.set_fault(Fault.http_status(503))

    # When retrieving with self-query and expansion on
    outcome = call(server, client, "/retrieve", {"query": QUERY})

    # Then retrieval still answers, from the original query, with the fallbacks traced
    assert outcome.response.status_code == 200, outcome.response.text
    assert outcome.response.json()["expanded_queries"] == [QUERY]
    assert set(outcome.trace["metadata"]["fallbacks"]) == {"self_query", "query_expansion"}
    assert outcome.trace["error"] is None
    assert_clean_process_log(outcome.log)


# --------------------------------------------------------------------------- in-process server


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Attached to the Powertools logger and the root: a propagated record arrives twice.
        if not any(seen is record for seen in self.records):
            self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    def assert_clean(self) -> None:
        """No unhandled exception: nothing at ERROR, no exception info, no secret."""
        assert self.messages(logging.ERROR) == []
        assert [r.getMessage() for r in self.records if r.exc_info] == []
        text = " ".join(str(r.__dict__) for r in self.records)
        for secret in SECRETS:
            assert secret not in text


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    from rag.observability import logger

    capture = LogCapture()
    targets = [logging.getLogger(logger.service), logging.getLogger()]
    for target in targets:
        target.addHandler(capture)
    yield capture
    for target in targets:
        target.removeHandler(capture)


@pytest.fixture(scope="module")
def base_deps(model_dirs: tuple[Path, Path], qdrant: QdrantFake, tgi: TgiServer) -> Deps:
    settings = Settings.from_env(
        {
            "QDRANT_URL": qdrant.url,
            "QDRANT_API_KEY": QDRANT_KEY,
            "QDRANT_TIMEOUT_S": str(TEST_QDRANT_TIMEOUT_S),
            "EMBEDDING_MODEL_DIR": str(model_dirs[0]),
            "RERANKER_MODEL_DIR": str(model_dirs[1]),
            "LLM_URL": tgi.url,
            "LLM_CONNECT_TIMEOUT_S": "1",
            "LLM_READ_TIMEOUT_S": str(TEST_LLM_READ_TIMEOUT_S),
            "LLM_HELPER_TIMEOUT_S": "1",
        }
    )
    return build_deps(settings)


@contextmanager
def serve(deps: Deps) -> Iterator[httpx.Client]:
    """The local server's HTTP front and handler over `deps`, in this process."""
    with (
        LocalServer(local_app(deps)) as local,
        httpx.Client(base_url=local.url, timeout=60) as http,
    ):
        yield http


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def sagemaker_llm(url: str) -> SageMakerLLM:
    return SageMakerLLM(
        ENDPOINT,
        COMPONENT,
        connect_timeout_s=1,
        read_timeout_s=TEST_LLM_READ_TIMEOUT_S,
        region_name=REGION,
        endpoint_url=url,
    )


NO_CAPACITY = (
    "Inference Component has no capacity to process this request. ApplicationAutoScaling may be "
    "in-progress (if configured) or try to increase the capacity by invoking "
    "UpdateInferenceComponentRuntimeConfig API."
)
SAGEMAKER_FAULTS = [
    pytest.param(
        Fault.aws_error("ValidationError", 400, NO_CAPACITY),
        503,
        "model_scaling_from_zero",
        "60",
        id="scaled-to-zero",
    ),
    pytest.param(
        Fault.aws_error("ValidationError", 400, f"Inference Component {COMPONENT} not found."),
        503,
        "endpoint_not_found",
        "300",
        id="component-still-creating",
    ),
    pytest.param(
        Fault.aws_error("ModelNotReadyException", 429, "Model is not ready, try again."),
        503,
        "model_not_ready",
        "30",
        id="model-still-loading",
    ),
    pytest.param(
        Fault.aws_error(
            "ValidationError", 400, f"Endpoint {ENDPOINT} of account {ACCOUNT} not found."
        ),
        503,
        "endpoint_not_found",
        "300",
        id="endpoint-not-found",
    ),
    pytest.param(
        Fault.aws_error("ServiceUnavailable", 503, "Service unavailable"),
        503,
        "sagemaker_unavailable",
        "5",
        id="service-unavailable",
    ),
    pytest.param(
        Fault.aws_error("ThrottlingException", 400, "Rate exceeded"),
        429,
        "sagemaker_throttled",
        "2",
        id="throttled",
    ),
    pytest.param(Fault.http_status(424), 502, "model_error", None, id="tgi-424-as-ModelError"),
    pytest.param(Fault.http_status(429), 429, "model_overloaded", "2", id="tgi-429-as-ModelError"),
    pytest.param(Fault.malformed(), 502, "model_bad_response", None, id="malformed-body"),
    pytest.param(Fault.hang(HANG_S), 504, "model_timeout", None, id="read-timeout"),
]


@pytest.mark.usefixtures("aws_env")
@pytest.mark.parametrize(("fault", "status", "code", "retry_after"), SAGEMAKER_FAULTS)
def test_sagemaker_faults_answer_the_contract_error_and_are_traced(
    base_deps: Deps,
    tgi: TgiServer,
    logs: LogCapture,
    fault: Fault,
    status: int,
    code: str,
    retry_after: str | None,
) -> None:
    # Given the SageMaker runtime (botocore, real wire shapes) answering with this error
    tgi.set_fault(fault)
    traces = MemoryTraceSink()
    deps = replace(base_deps, llm=sagemaker_llm(tgi.url), sink=traces)

    # When asking for an answer
    with serve(deps) as http:
        response = http.post("/rag", json={"query": QUERY, **NO_HELPERS})

    # Then the client is told the model's state, and when to come back
    assert_error(response, status, code)
    assert response.headers.get("retry-after") == retry_after
    assert_no_leak(response)
    (trace,) = traces.events
    assert_failure_traced(trace, status, code, "generate")
    assert trace["metadata"]["endpoint"] == f"sagemaker:{ENDPOINT}/{COMPONENT}"
    logs.assert_clean()


@pytest.mark.usefixtures("aws_env")
@pytest.mark.parametrize("adapter", ["tgi-http", "sagemaker"])
def test_llm_connection_refused_is_503_with_retry_after(
    base_deps: Deps, logs: LogCapture, adapter: str
) -> None:
    # Given an LLM address where nothing listens
    url = f"http://127.0.0.1:{closed_port()}"
    llm = (
        sagemaker_llm(url)
        if adapter == "sagemaker"
        else HttpLLM(url, connect_timeout_s=1, read_timeout_s=TEST_LLM_READ_TIMEOUT_S)
    )
    traces = MemoryTraceSink()

    # When asking for an answer
    with serve(replace(base_deps, llm=llm, sink=traces)) as http:
        response = http.post("/rag", json={"query": QUERY, **NO_HELPERS})

    # Then it is "not available, retry later", traced, with clean logs
    assert_error(response, 503, "model_unreachable")
    assert response.headers["retry-after"] == "10"
    assert_no_leak(response)
    assert_failure_traced(traces.events[0], 503, "model_unreachable", "generate")
    logs.assert_clean()


# --------------------------------------------------------------------------- trace queue faults


@pytest.mark.usefixtures("aws_env")
def test_trace_queue_gone_the_answer_still_comes_and_the_loss_is_counted(
    base_deps: Deps, logs: LogCapture
) -> None:
    with mock_aws():
        # Given the trace queue deleted after the sink was configured
        sqs = boto3.client("sqs", region_name=REGION)
        queue_url = sqs.create_queue(QueueName="llm-twin-traces")["QueueUrl"]
        sqs.delete_queue(QueueUrl=queue_url)
        counted: list[str] = []
        sink = SqsTraceSink(queue_url, client=sqs, count_metric=counted.append)
        deps = replace(base_deps, sink=PolicySink(sink, sample_rate=1, redaction="none"))

        # When asking for an answer
        with serve(deps) as http:
            response = http.post("/rag", json={"query": QUERY, **NO_HELPERS})

    # Then the answer is unaffected
    assert response.status_code == 200, response.text
    assert response.json()["answer"]
    # And the lost trace is counted and logged (with its id, never its content)
    assert counted == [sinks.METRIC_SEND_FAILED]
    lost = [r for r in logs.records if r.getMessage() == "trace event not sent to SQS"]
    assert len(lost) == 1
    assert lost[0].levelno == logging.WARNING
    assert getattr(lost[0], "trace_id", None) == response.json()["trace_id"]
    assert QUERY not in str(lost[0].__dict__)
    logs.assert_clean()


@pytest.mark.usefixtures("aws_env")
def test_an_unreachable_queue_is_tried_sqs_max_attempts_times_then_given_up(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    # Given SQS refusing connections, with the sink's own client (its timeouts and retries)
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", url)
    counted: list[str] = []
    sink = SqsTraceSink(f"{url}/{ACCOUNT}/llm-twin-traces", count_metric=counted.append)
    sends: list[int] = []
    sink._client.meta.events.register(  # the only way to count attempts on the wire
        "before-send.sqs.SendMessage", lambda **_: sends.append(1)
    )

    # When a trace is sent
    sink.send({"trace_id": "t-1", "input": {"query": QUERY}})

    # Then it was tried exactly SQS_MAX_ATTEMPTS times (not 1 + that many), then counted lost
    assert len(sends) == budget.SQS_MAX_ATTEMPTS
    assert counted == [sinks.METRIC_SEND_FAILED]
    config = sink._client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (
        budget.SQS_CONNECT_TIMEOUT_S,
        budget.SQS_READ_TIMEOUT_S,
    )
    logs.assert_clean()


# --------------------------------------------------------------------------- Opik down, then back


@pytest.fixture
def opik(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpikRecorder]:
    from forwarder import handler

    with OpikRecorder() as recorder:
        monkeypatch.setenv("OPIK_URL_OVERRIDE", recorder.url)
        monkeypatch.setenv("OPIK_WORKSPACE", "fault-tests")
        monkeypatch.setenv("OPIK_PROJECT_NAME", "llm-twin-faults")
        monkeypatch.setenv("OPIK_API_KEY", "opik-test-key")
        monkeypatch.setenv("OPIK_TIMEOUT_S", "2")
        monkeypatch.delenv("OPIK_API_KEY_SECRET", raising=False)
        handler.writer.cache_clear()
        yield recorder
        handler.writer.cache_clear()


def forward_once(sqs: Any, queue_url: str) -> tuple[list[str], list[str]]:
    """What the SQS event source mapping does: receive a batch, invoke the forwarder, delete
    the records it reports done. Returns (received trace ids, failed trace ids)."""
    from forwarder import handler

    received = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=0,  # a failed record is visible again at once (no waiting in tests)
        AttributeNames=["ApproximateReceiveCount"],
    ).get("Messages", [])
    if not received:
        return [], []
    records = [
        sqs_record(m["Body"], m["MessageId"], int(m["Attributes"]["ApproximateReceiveCount"]))
        for m in received
    ]
    result = handler.lambda_handler({"Records": records}, FakeLambdaContext())  # type: ignore[arg-type]
    failed = {item["itemIdentifier"] for item in result["batchItemFailures"]}
    for message in received:
        if message["MessageId"] not in failed:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    ids = {m["MessageId"]: json.loads(m["Body"])["trace_id"] for m in received}
    return sorted(ids.values()), sorted(ids[m] for m in failed)


@pytest.mark.usefixtures("aws_env")
def test_opik_down_for_a_while_then_back_every_trace_arrives_or_waits_in_the_dlq(
    base_deps: Deps, opik: OpikRecorder
) -> None:
    with mock_aws():
        # Given the deployed trace path: queue with a DLQ after 2 receives, forwarder, Opik
        sqs = boto3.client("sqs", region_name=REGION)
        dlq_url = sqs.create_queue(QueueName="llm-twin-traces-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
        queue_url = sqs.create_queue(
            QueueName="llm-twin-traces", Attributes={"RedrivePolicy": redrive}
        )["QueueUrl"]
        sink = SqsTraceSink(queue_url, client=sqs, count_metric=lambda _: None)
        deps = replace(base_deps, sink=PolicySink(sink, sample_rate=1, redaction="none"))
        with serve(deps) as http:
            first = http.post("/rag", json={"query": QUERY, **NO_HELPERS}).json()["trace_id"]

        # When Opik is down for two deliveries
        opik.down()
        assert forward_once(sqs, queue_url) == ([first], [first])
        assert forward_once(sqs, queue_url) == ([first], [first])
        # Then the record was never acknowledged, and SQS moves it to the DLQ, not the void
        assert forward_once(sqs, queue_url) == ([], [])
        dead = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)["Messages"]
        assert [json.loads(m["Body"])["trace_id"] for m in dead] == [first]

        # And when Opik is down for one delivery of the next trace, then back
        with serve(deps) as http:
            second = http.post("/retrieve", json={"query": QUERY, **NO_HELPERS}).json()["trace_id"]
        assert forward_once(sqs, queue_url) == ([second], [second])
        opik.up()
        assert forward_once(sqs, queue_url) == ([second], [])

    # Then the redelivered trace arrived once, under its own id, with its spans
    assert second in opik.traces
    assert opik.traces[second]["name"] == "retrieve"
    assert {s["trace_id"] for s in opik.spans.values()} == {second}
    assert first not in opik.traces
