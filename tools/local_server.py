"""The business API on this machine: `python -m tools.local_server [--host H] [--port P]`.

Each HTTP request becomes an API Gateway REST proxy event and goes through the same resolver the
Lambda runs (`rag.api.build_app` over `rag.wiring.build_deps`), so routes, validation and errors
are the deployed ones; this module only does what API Gateway does in front of the Lambda (API
key, 10 MB body limit, the event, the response) and what a newcomer needs around it (models,
a filled Qdrant, an LLM or a clear 503, traces). Settings are env vars, see README "Local mode".

Needs `lambda_src` on the path (`PYTHONPATH=lambda_src:.`, as the Makefile sets it).
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from rag.urls import redact_url  # stdlib only: safe before Powertools' defaults are set

if TYPE_CHECKING:
    from rag.pipeline import Deps
    from rag.ports import TraceSink
    from rag.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_QDRANT_PATH = REPO / ".local" / "qdrant"
DEFAULT_TRACE_FILE = REPO / ".local" / "traces.jsonl"
DEFAULT_TRACE_HASH_KEY_FILE = REPO / ".local" / "trace-hash.key"
DEFAULT_CORPUS = REPO / "sample_data" / "corpus.jsonl"
DEFAULT_MODELS_DIR = REPO / "build" / "models"
STAGE = "local"

MAX_BODY_BYTES = 10 * 1024 * 1024
"""API Gateway's payload limit (10 MB); the handler applies its own, much smaller, limit after."""
SHUTDOWN_DRAIN_S = 30.0
"""How long a stop waits for requests in flight: longer than the Lambda's 28 s timeout."""
OPIK_QUEUE_MAX = 1000
OPIK_DRAIN_S = 10.0
IDLE_CONNECTION_TIMEOUT_S = 30.0
QDRANT_COUNT_TIMEOUT_S = 10
EXIT_CONFIG = 2

GATEWAY_ERRORS: dict[int, tuple[str, str]] = {
    403: ("forbidden", "missing or invalid API key (x-api-key header)"),
    413: ("payload_too_large", "request body too large"),
    502: ("internal_error", "the service failed; try again"),
}
"""The gateway responses API Gateway answers with (stacks/constructs/rag_api.py), same bodies."""

POWERTOOLS_DEFAULTS = {
    "POWERTOOLS_SERVICE_NAME": "rag-local",
    # No X-Ray daemon and no CloudWatch here: tracing and EMF output would only be noise.
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_DISABLED": "true",
}

NO_EMBEDDING_MODEL = (
    "no embedding model found: set EMBEDDING_MODEL_DIR to a folder holding model.onnx and "
    "tokenizer.json, or run `make models` to download the pinned models into build/models/"
)


class LocalConfigError(Exception):
    """Local mode cannot start; the message says what to set."""


def shown(path: str | Path | None) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    if path is None:
        return "-"
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- settings


@dataclass
class LocalSetup:
    """The business Lambda's env for this run, plus what local mode decided about it."""

    env: dict[str, str]
    corpus: Path
    corpus_explicit: bool
    notes: list[str] = field(default_factory=list)


def default_model_name() -> str:
    context = json.loads((REPO / "cdk.json").read_text())["context"]
    return str(context["model"])


def _set(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def local_setup(environ: Mapping[str, str], models_dir: Path = DEFAULT_MODELS_DIR) -> LocalSetup:
    """The effective settings: the caller's env with local-mode defaults filled in."""
    from stacks.config import ConfigError, load_model_config

    env = {k: v for k, v in environ.items() if v.strip()}
    notes: list[str] = []

    model = _set(environ, "MODEL")
    if model or "MODEL_PROFILE" not in env:
        # The deployed Lambda gets MODEL_PROFILE from the same YAML at synth.
        try:
            env["MODEL_PROFILE"] = load_model_config(
                model or default_model_name()
            ).runtime_profile_json()
        except ConfigError as exc:
            raise LocalConfigError(f"MODEL: {exc}") from None

    if "EMBEDDING_MODEL_DIR" not in env:
        if not (models_dir / "embedding").is_dir():
            raise LocalConfigError(NO_EMBEDDING_MODEL)
        env["EMBEDDING_MODEL_DIR"] = str(models_dir / "embedding")
    if "RERANKER_MODEL_DIR" not in env and (models_dir / "reranker").is_dir():
        env["RERANKER_MODEL_DIR"] = str(models_dir / "reranker")
    if "RERANKER_MODEL_DIR" not in env and env.get("RERANK_ENABLED", "true").lower() != "false":
        env["RERANK_ENABLED"] = "false"
        notes.append(
            f"reranker off: no cross-encoder at {shown(models_dir / 'reranker')} "
            "(set RERANKER_MODEL_DIR or run `make models`)"
        )

    if "QDRANT_URL" not in env:
        env.setdefault("QDRANT_PATH", str(DEFAULT_QDRANT_PATH))
    env.setdefault("TRACE_FILE", str(DEFAULT_TRACE_FILE))
    env.setdefault("TRACE_HASH_KEY_FILE", str(DEFAULT_TRACE_HASH_KEY_FILE))
    corpus = _set(environ, "LOCAL_CORPUS")
    return LocalSetup(
        env=env,
        corpus=Path(corpus) if corpus else DEFAULT_CORPUS,
        corpus_explicit=corpus is not None,
        notes=notes,
    )


# --------------------------------------------------------------------------- Qdrant


@dataclass(frozen=True)
class StoreStatus:
    description: str
    counts: dict[str, int]
    action: str
    """`ingested FILE`, `reused`, or a hint when a server is empty or unreachable."""

    @property
    def points(self) -> int:
        return sum(self.counts.values())


def _counts(client: Any) -> dict[str, int]:
    from rag.ports import COLLECTIONS

    return {
        name: client.count(name, exact=True).count if client.collection_exists(name) else 0
        for name in COLLECTIONS
    }


def prepare_store(settings: Settings, setup: LocalSetup) -> StoreStatus:
    """Count the points; fill an empty embedded store from the corpus, reuse a filled one."""
    from qdrant_client import QdrantClient

    if settings.qdrant_url:
        description = f"server {redact_url(settings.qdrant_url)}"
        client = QdrantClient(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key(),
            timeout=QDRANT_COUNT_TIMEOUT_S,
            check_compatibility=False,
        )
        try:
            counts = _counts(client)
        except Exception as exc:  # the server may come up later; requests then answer 502
            return StoreStatus(description, {}, f"not reachable now ({type(exc).__name__})")
        finally:
            client.close()
        empty = "empty: load data with `make ingest FILE=... QDRANT_URL=...`"
        return StoreStatus(description, counts, "in use" if sum(counts.values()) else empty)

    path = Path(settings.qdrant_path or DEFAULT_QDRANT_PATH)
    description = f"embedded at {shown(path)}"
    if str(path) == ":memory:":
        raise LocalConfigError("QDRANT_PATH=:memory: would lose the store at exit; use a folder")
    path.mkdir(parents=True, exist_ok=True)
    try:
        client = QdrantClient(path=str(path))
    except RuntimeError as exc:  # Qdrant's lock: one process per folder
        raise LocalConfigError(
            f"QDRANT_PATH {path} is in use by another process (a running `make local` or "
            f"`make ingest`?): {exc}"
        ) from None
    # Present while a first fill runs: a fill cut short (Ctrl-C) is redone at the next start
    # rather than a partial store being reused; deterministic ids make the redo a no-op for
    # what was already written.
    filling = path.with_name(path.name + ".filling")
    try:
        counts = _counts(client)
        if sum(counts.values()) and not filling.exists():
            action = "reused"
            if setup.corpus_explicit:
                action += (
                    f"; LOCAL_CORPUS not loaded (the store is not empty): add it with "
                    f"`make ingest FILE={setup.corpus}`, or delete {path} to start over"
                )
            return StoreStatus(description, counts, action)
        filling.touch()
        _ingest(client, settings, setup.corpus)
        filling.unlink()
        return StoreStatus(description, _counts(client), f"ingested {shown(setup.corpus)}")
    finally:
        client.close()


def _ingest(client: Any, settings: Settings, corpus: Path) -> None:
    from tqdm import tqdm

    from rag.chunking import Chunker
    from rag.ingest import ingest_file
    from rag.onnx_models import OnnxEmbedder

    if not corpus.is_file():
        raise LocalConfigError(f"LOCAL_CORPUS: no such file {corpus}")
    log(f"Qdrant store is empty: ingesting {shown(corpus)} (first start only)")
    # A one-time bulk job before serving starts: every core helps (ORT_THREADS is per request).
    threads = max(settings.ort_threads, os.cpu_count() or 1)
    embedder = OnnxEmbedder(Path(str(settings.embedding_model_dir)), threads=threads)
    chunker = Chunker(embedder.tokenizer, max_length=embedder.max_length)
    with tqdm(unit="chunk", desc="ingest", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = ingest_file(
            corpus, client=client, embedder=embedder, chunker=chunker, progress=progress
        )
    for error in report.bad_lines:
        log(f"  skipped {shown(corpus)}: {error}")
    log(
        f"ingested {report.documents} documents, {report.chunks} chunks, "
        f"{len(report.bad_lines)} bad lines"
    )


# --------------------------------------------------------------------------- traces


class BackgroundSink:
    """Hands events to `inner` on one worker thread: a slow or unreachable Opik must not hold
    up local answers. A full queue drops the event with a log line, like a lost SQS send."""

    _STOP = object()

    def __init__(self, inner: TraceSink, *, max_pending: int = OPIK_QUEUE_MAX) -> None:
        self.inner = inner
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="trace-sink", daemon=True)
        self._thread.start()

    def send(self, event: Mapping[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log(f"trace {event.get('trace_id')} not sent to Opik: {OPIK_QUEUE_MAX} pending")

    def close(self, timeout_s: float = OPIK_DRAIN_S) -> None:
        try:
            self._queue.put(self._STOP, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (event := self._queue.get()) is not self._STOP:
            self.inner.send(event)  # OpikEventSink logs its failures and never raises


def opik_sink(env: Mapping[str, str]) -> tuple[BackgroundSink, str] | None:
    """Opik directly (no SQS locally) when OPIK_API_KEY or OPIK_URL_OVERRIDE is set."""
    if not (_set(env, "OPIK_API_KEY") or _set(env, "OPIK_URL_OVERRIDE")):
        return None
    # forwarder's package import turns off opik's Sentry and analytics before opik loads.
    from forwarder.handler import Settings as OpikSettings
    from forwarder.opik_mapping import OpikEventSink, OpikWriter, build_rest_client

    opik = OpikSettings.model_validate(dict(env))
    rest = build_rest_client(
        url=opik.opik_url_override, workspace=opik.opik_workspace, api_key=opik.api_key()
    )
    writer = OpikWriter(rest, project_name=opik.opik_project_name, timeout_s=opik.opik_timeout_s)
    label = f"Opik at {redact_url(opik.opik_url_override)} (project {opik.opik_project_name})"
    return BackgroundSink(OpikEventSink(writer)), label


def with_opik(deps: Deps, opik: TraceSink) -> Deps:
    """The production sink (sampling, redaction, JSONL file) fanned out to Opik as well."""
    from rag.sinks import build_sink

    return replace(deps, sink=build_sink(deps.settings, extra=[opik]))


# --------------------------------------------------------------------------- HTTP <-> event


@dataclass(frozen=True)
class LocalContext:
    """The part of Lambda's context object that handlers and Powertools read."""

    aws_request_id: str
    function_name: str = "llm-twin-rag-local"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:llm-twin-rag-local"
    memory_limit_in_mb: int = 2048
    log_group_name: str = "local"
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 28_000


def to_event(
    *,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    source_ip: str,
    request_id: str,
    known_paths: Sequence[str],
) -> dict[str, Any]:
    """An API Gateway REST proxy event, as the deployed API (explicit resources plus a
    `{proxy+}` catch-all) would send it to the Lambda."""
    split = urlsplit(target)
    path = split.path or "/"
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        single[name] = value
        multi.setdefault(name, []).append(value)
    query = parse_qsl(split.query, keep_blank_values=True)
    multi_query: dict[str, list[str]] = {}
    for name, value in query:
        multi_query.setdefault(name, []).append(value)
    resource = path if path in known_paths else "/{proxy+}"
    try:
        text: str | None = body.decode("utf-8") if body else None
        is_base64 = False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode("ascii"), True
    lower = {k.lower(): v for k, v in single.items()}
    now = time.time()
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": dict(query) or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": path.lstrip("/")} if resource == "/{proxy+}" else None,
        "stageVariables": None,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": lower.get("host", "localhost"),
            "httpMethod": method,
            "identity": {"sourceIp": source_ip, "userAgent": lower.get("user-agent")},
            "path": f"/{STAGE}{path}",
            "protocol": "HTTP/1.1",
            "requestId": request_id,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestTimeEpoch": int(now * 1000),
            "resourceId": "local",
            "resourcePath": resource,
            "stage": STAGE,
        },
        "body": text,
        "isBase64Encoded": is_base64,
    }


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def from_result(result: Mapping[str, Any]) -> HttpReply:
    """The HTTP response API Gateway makes of a Lambda proxy result."""
    headers: list[tuple[str, str]] = []
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((name, str(v)) for v in values)
    seen = {name.lower() for name, _ in headers}
    for name, value in (result.get("headers") or {}).items():
        if name.lower() not in seen:
            headers.append((name, str(value)))
    raw = result.get("body") or ""
    body = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode("utf-8")
    return HttpReply(int(result["statusCode"]), headers, body)


def gateway_error(status: int) -> HttpReply:
    code, message = GATEWAY_ERRORS[status]
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return HttpReply(status, [("Content-Type", "application/json")], body)


# --------------------------------------------------------------------------- the server


Handler = Callable[[dict[str, Any], LocalContext], dict[str, Any]]


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not hold up a stop
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: Handler,
        *,
        api_key: str | None,
        known_paths: Sequence[str],
    ) -> None:
        super().__init__(address, _RequestHandler)
        self.handler = handler
        self.api_key = api_key
        self.known_paths = tuple(known_paths)
        self._in_flight = 0
        self._idle = threading.Condition()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def begin(self) -> None:
        with self._idle:
            self._in_flight += 1

    def end(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait for requests in flight; True when none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout_s)


class _RequestHandler(BaseHTTPRequestHandler):
    server: LocalServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_CONNECTION_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is written by _serve

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def __getattr__(self, name: str) -> Any:
        # Any other method (TRACE, QUERY, ...) goes to the handler too, which answers 405 in the
        # API's JSON error shape; http.server would send its own HTML 501 page.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        started = time.perf_counter()
        status = 0  # stays 0 when the client went away before an answer was written
        self.server.begin()
        try:
            reply = self._reply()
            self._write(reply)
            status = reply.status
        finally:
            self.server.end()
            elapsed_ms = (time.perf_counter() - started) * 1000
            log(f"{self.command} {urlsplit(self.path).path} {status} {elapsed_ms:.0f}ms")

    def _reply(self) -> HttpReply:
        # Read (within the limit) before answering: closing on an unread body resets the
        # connection, and the client may lose the answer.
        body = self._read_body()
        if body is None:
            self.close_connection = True
        expected = self.server.api_key
        if expected is not None:
            given = self.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return gateway_error(403)
        if body is None:
            return gateway_error(413)
        request_id = str(uuid.uuid4())
        event = to_event(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
            request_id=request_id,
            known_paths=self.server.known_paths,
        )
        try:
            reply = from_result(self.server.handler(event, LocalContext(request_id)))
        except Exception:  # API Gateway answers a crashed Lambda with 502
            log(traceback.format_exc().rstrip())
            reply = gateway_error(502)
        reply.headers.append(("x-amzn-RequestId", request_id))
        return reply

    def _read_body(self) -> bytes | None:
        """The body, or None when it is over MAX_BODY_BYTES (checked before reading it)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = MAX_BODY_BYTES + 1
        if length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                return None
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)  # the CRLF after each chunk

    def _write(self, reply: HttpReply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)


# --------------------------------------------------------------------------- main


def build_handler(deps: Deps) -> Handler:
    """The Lambda's resolver over `deps`, one event at a time, as in one Lambda container.

    The lock is not optional: Powertools keeps the event being resolved on the router class
    (`BaseRouter.current_event`), shared by every resolver instance, so two threads resolving
    at once read each other's bodies. Lambda never does that; concurrent local requests queue.
    """
    from rag.api import build_app
    from rag.observability import metrics

    app = build_app(lambda: deps)
    lock = threading.Lock()

    def handle(event: dict[str, Any], context: LocalContext) -> dict[str, Any]:
        with lock:
            try:
                return app.resolve(event, context)  # type: ignore[arg-type]
            finally:
                # Nothing flushes metrics here; Powertools would print them every 100 values.
                metrics.clear_metrics()

    return handle


def llm_description(settings: Settings) -> str:
    if settings.llm_endpoint:
        component = settings.llm_inference_component
        on = f" (inference component {component})" if component else ""
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        where = f"region {region}" if region else "region from your AWS config"
        return f"SageMaker endpoint {settings.llm_endpoint}{on}, {where}, local AWS credentials"
    if settings.llm_url:
        kind = "TGI" if settings.llm_api == "tgi" else "OpenAI-compatible server"
        return f"{kind} at {redact_url(settings.llm_url)}"
    return (
        "none: POST /rag answers 503 llm_not_configured (set LLM_URL=http://host:port of a TGI "
        "or OpenAI-compatible server with LLM_API=tgi|openai, or LLM_ENDPOINT=<SageMaker "
        "endpoint>); /retrieve works"
    )


def banner(
    url: str,
    settings: Settings,
    store: StoreStatus,
    setup: LocalSetup,
    opik_label: str | None,
    api_key: bool,
) -> str:
    counts = ", ".join(f"{name} {n}" for name, n in store.counts.items())
    profile = settings.model_profile
    reranker = (
        f"on ({shown(settings.reranker_model_dir)})"
        if settings.rerank_enabled and settings.reranker_model_dir
        else "off"
    )
    lines = [
        f"LLM twin API (local) listening on {url}",
        f"  API key:   {'required (x-api-key: $LOCAL_API_KEY)' if api_key else 'not required'}",
        f"  Qdrant:    {store.description}: {store.points} points ({counts}); {store.action}",
        f"  LLM:       {llm_description(settings)}",
        f"  Model:     {profile.name} ({profile.model_id}, prompt {profile.prompt_format})",
        f"  Embedding: {shown(settings.embedding_model_dir)}",
        f"  Reranker:  {reranker}",
        f"  Traces:    {shown(settings.trace_file)}" + (f" + {opik_label}" if opik_label else ""),
        *(f"  Note:      {note}" for note in setup.notes),
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.local_server", description=__doc__)
    parser.add_argument(
        "--host", default=os.environ.get("LOCAL_HOST", DEFAULT_HOST), help="default 127.0.0.1"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("LOCAL_PORT", DEFAULT_PORT)),
        help="default 8000; 0 picks a free port",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name, value in POWERTOOLS_DEFAULTS.items():
        os.environ.setdefault(name, value)  # read by Powertools when rag.observability loads

    from rag.model_store import ModelAssetError
    from rag.onnx_models import ModelLoadError
    from rag.settings import Settings, SettingsError
    from rag.wiring import build_deps

    try:
        setup = local_setup(os.environ)
        settings = Settings.from_env(setup.env)
        store = prepare_store(settings, setup)
        deps = build_deps(settings)
    except (LocalConfigError, SettingsError, ModelAssetError, ModelLoadError) as exc:
        log(f"local mode cannot start: {exc}")
        return EXIT_CONFIG
    opik = opik_sink(setup.env)
    if opik is not None:
        deps = with_opik(deps, opik[0])

    from rag.api import ROUTE_METHODS

    api_key = _set(os.environ, "LOCAL_API_KEY")
    try:
        server = LocalServer(
            (args.host, args.port),
            build_handler(deps),
            api_key=api_key,
            known_paths=tuple(ROUTE_METHODS),
        )
    except OSError as exc:
        log(f"cannot listen on {args.host}:{args.port}: {exc} (try --port or LOCAL_PORT)")
        return EXIT_CONFIG

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    serving.start()
    log(banner(server.url, settings, store, setup, opik[1] if opik else None, bool(api_key)))
    stop.wait()

    log("stopping: no new connections, finishing requests in flight")
    server.shutdown()
    if not server.drain(SHUTDOWN_DRAIN_S):
        log(f"stopped with requests still running after {SHUTDOWN_DRAIN_S:.0f} s")
    server.server_close()
    if opik is not None:
        opik[0].close()
    for resource in (deps.store, deps.llm):
        close = getattr(resource, "close", None)
        if callable(close):
            close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
