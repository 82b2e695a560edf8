"""The business API on this machine: `python -m tools.local_server [--host H] [--port P]`.

uvicorn serves the same ASGI app the Lambda runs behind the Lambda Web Adapter
(`web.app.create_app` over `rag.wiring.build_deps`), so routes, validation, errors and streams
are the deployed ones; this module only adds what API Gateway does in front of the Lambda (API
key, 10 MB body limit, CORS preflight, a request id) and what keeps other web pages out (Host,
Origin, JSON-only POSTs) as a local-only middleware, and what a newcomer needs
around it (models, a filled Qdrant, an LLM or a clear 503, traces). Settings are env vars, see
README "Local mode".

Needs `lambda_src` on the path (`PYTHONPATH=lambda_src:.`, as the Makefile sets it).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authorizer.handler import is_valid, presented_key  # stdlib only, as deployed
from rag.urls import redact_url  # stdlib only: safe before Powertools' defaults are set
from web.page import is_public  # fastapi only, as above

if TYPE_CHECKING:
    from rag.domain.deps import Deps
    from rag.domain.ports import TraceSink
    from rag.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_QDRANT_PATH = REPO / ".local" / "qdrant"
DEFAULT_TRACE_FILE = REPO / ".local" / "traces.jsonl"
DEFAULT_TRACE_HASH_KEY_FILE = REPO / ".local" / "trace-hash.key"
DEFAULT_CORPUS = REPO / "sample_data" / "corpus.jsonl"
DEFAULT_MODELS_DIR = REPO / "build" / "models"

MAX_BODY_BYTES = 10 * 1024 * 1024
"""API Gateway's payload limit (10 MB); the handler applies its own, much smaller, limit after."""
SHUTDOWN_DRAIN_S = 30.0
"""How long a stop waits for requests in flight (a stream still running then is cut)."""
LISTEN_BACKLOG = 128
OPIK_QUEUE_MAX = 1000
OPIK_DRAIN_S = 10.0
IDLE_CONNECTION_TIMEOUT_S = 30.0
QDRANT_COUNT_TIMEOUT_S = 10
EXIT_CONFIG = 2

GATEWAY_ERRORS: dict[int, tuple[str, str]] = {
    403: ("forbidden", "missing or invalid API key (Authorization: Bearer or x-api-key header)"),
    413: ("payload_too_large", "request body too large"),
    415: ("unsupported_media_type", "send application/json"),
    502: ("internal_error", "the service failed; try again"),
}
"""The gateway responses API Gateway answers with (stacks/constructs/rag_api.py), same bodies."""
FOREIGN_HOST = (
    421,
    "misdirected_request",
    "this server answers only loopback Host names (localhost, 127.0.0.1, [::1]) and "
    "LOCAL_ALLOWED_HOSTS",
)
"""A Host this server is not (DNS rebinding: a web page's own name resolved to 127.0.0.1).
RFC 9110 15.5.20: 421 is for a request directed at a server unwilling to answer for it."""
FOREIGN_ORIGIN = (
    403,
    "forbidden",
    "requests from other web pages are refused: only this server's own pages and CORS_ORIGINS",
)
PREFLIGHT_MAX_AGE_S = 600

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
    from rag.domain.ports import COLLECTIONS

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

    from feature.chunking import Chunker
    from feature.ingest import ingest_file
    from rag.adapters.onnx_models import OnnxEmbedder

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
    from rag.adapters.trace_sinks import build_sink

    return replace(deps, sink=build_sink(deps.settings, extra=[opik]))


# --------------------------------------------------------------------------- API Gateway's part


Reply = tuple[int, list[tuple[bytes, bytes]], bytes]


def error_reply(status: int, code: str, message: str) -> Reply:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return status, [(b"content-type", b"application/json")], body


def gateway_error(status: int) -> Reply:
    return error_reply(status, *GATEWAY_ERRORS[status])


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1), bracketed or not."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port (RFC 9110 7.2; IPv6 in brackets)."""
    if host_header.startswith("["):
        return host_header[: host_header.find("]") + 1]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def check_exposure(host: str, api_key: str | None) -> None:
    """Listening beyond loopback without an API key would serve the corpus (and spend LLM
    time, with the developer's AWS credentials when LLM_ENDPOINT is set) to the network."""
    if not is_loopback(host) and not api_key:
        raise LocalConfigError(
            f"--host {host} listens beyond this machine: set LOCAL_API_KEY (callers send it as "
            "x-api-key), and LOCAL_ALLOWED_HOSTS to the names they reach this machine by"
        )


def split_setting(value: str | None) -> frozenset[str]:
    return frozenset(v.strip().lower() for v in (value or "").split(",") if v.strip())


class LocalGateway:
    """ASGI middleware doing, in local mode only, what API Gateway does in front of the Lambda:
    the API key (403; `Authorization: Bearer` or `x-api-key`, checked by the deployed
    authorizer's own functions; the chat page's static files need none, as in AWS), the 10 MB body
    limit (413, refused unread when announced), the CORS
    preflight, a request id header; plus one log line per request. The app behind it is the
    Lambda's, unchanged.

    A developer's browser can reach this server from any web page, so it also refuses what a
    page could send it: a Host that is not loopback or LOCAL_ALLOWED_HOSTS (DNS rebinding, 421),
    an Origin other than its own or CORS_ORIGINS (403), and a POST that is not JSON (415): a
    request without a JSON content type needs no CORS preflight (Fetch standard, CORS-safelisted
    request headers), so a page could send one blind."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        allowed_hosts: Collection[str] = (),
        allowed_origins: Collection[str] = (),
    ) -> None:
        from web.app import is_json_type  # after Powertools' defaults (it loads rag.observability)

        self.app = app
        self.api_key = api_key
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.allowed_origins = frozenset(allowed_origins)
        self._is_json_type = is_json_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        status = 0  # stays 0 when the client went away before an answer was written

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-amzn-requestid", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            refused, body = await self._refusal(scope, receive)
            if refused is not None:
                await _send_whole(send_with_id, *refused)
                return
            await self.app(scope, _replay(body, receive), send_with_id)
        except Exception:  # API Gateway answers a crashed integration with 502
            log(traceback.format_exc().rstrip())
            if status == 0:
                await _send_whole(send_with_id, *gateway_error(502))
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            log(f"{scope['method']} {scope['path']} {status} {elapsed_ms:.0f}ms")

    async def _refusal(self, scope: Scope, receive: Receive) -> tuple[Reply | None, bytes]:
        """(a gateway error or the preflight's answer, or None and the whole body)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        name = host_name(host)
        if not (is_loopback(name) or name.lower() in self.allowed_hosts):
            return error_reply(*FOREIGN_HOST), b""
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, host):
            return error_reply(*FOREIGN_ORIGIN), b""
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            return self._preflight(origin), b""
        key_needed = self.api_key is not None and not is_public(scope["method"], scope["path"])
        if key_needed and not is_valid(presented_key(headers), self.api_key or ""):
            return gateway_error(403), b""
        if scope["method"] == "POST" and not self._is_json_type(headers.get("content-type", "")):
            return gateway_error(415), b""
        try:
            announced = int(headers.get("content-length", "0") or 0)
        except ValueError:
            announced = MAX_BODY_BYTES + 1
        if announced > MAX_BODY_BYTES:
            return gateway_error(413), b""
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return gateway_error(413), b""  # nobody is left to read it anyway
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:  # chunked bodies announce no length
                return gateway_error(413), b""
        return None, bytes(body)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """Its own pages (same scheme, host and port: this server speaks plain HTTP) or a
        configured origin. `null` (sandboxed frames, file: pages) is never allowed."""
        return origin == f"http://{host}" or origin in self.allowed_origins

    def _preflight(self, origin: str | None) -> Reply:
        """What the stack's OPTIONS method (a MOCK integration) answers, with the same lists."""
        from web.cors import ALLOW_HEADERS, ALLOW_METHODS

        headers = [
            (b"access-control-allow-methods", ",".join(ALLOW_METHODS).encode()),
            (b"access-control-allow-headers", ",".join(ALLOW_HEADERS).encode()),
            (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode()),
            (b"vary", b"Origin"),
        ]
        if origin is not None:  # already checked: its own page or an allowed origin
            headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
        return 204, headers, b""


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read by the gateway, then what the client does next (e.g. disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


async def _send_whole(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def local_app(
    deps: Deps, *, api_key: str | None = None, allowed_hosts: Collection[str] = ()
) -> ASGIApp:
    """The Lambda's app over `deps`, behind the local-only gateway middleware. Browser origins
    allowed in are the app's own CORS origins (CORS_ORIGINS), so one setting serves both."""
    from web.app import create_app

    return LocalGateway(
        create_app(lambda: deps),
        api_key=api_key,
        allowed_hosts=allowed_hosts,
        allowed_origins=deps.settings.cors_origins,
    )


class LocalServer:
    """uvicorn serving `app` on a socket bound (and listening) before it starts, so `url` is known
    at once and early connections wait in the backlog. `run()` blocks; `start()` runs it on a
    thread (tests, benchmarks); `stop()` finishes requests in flight, as a signal does."""

    def __init__(self, app: ASGIApp, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(LISTEN_BACKLOG)
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
            timeout_keep_alive=int(IDLE_CONNECTION_TIMEOUT_S),
            timeout_graceful_shutdown=int(SHUTDOWN_DRAIN_S),
        )
        self._server = _QuietServer(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def run(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self) -> LocalServer:
        self._thread = threading.Thread(target=self.run, name="uvicorn", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self._socket.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class _QuietServer(uvicorn.Server):
    """Signals are main()'s: uvicorn would re-raise SIGTERM after its shutdown (exit code -15
    instead of 0), and it cannot install handlers outside the main thread anyway."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# --------------------------------------------------------------------------- main


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
        f"  API key:   {'required (x-api-key or Authorization: Bearer $LOCAL_API_KEY)' if api_key else 'not required'}",
        f"  Browsers:  this server's own pages{''.join(f', {o}' for o in settings.cors_origins)}",
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
    api_key = _set(os.environ, "LOCAL_API_KEY")
    try:
        check_exposure(args.host, api_key)
    except LocalConfigError as exc:
        log(f"local mode cannot start: {exc}")
        return EXIT_CONFIG
    for name, value in POWERTOOLS_DEFAULTS.items():
        os.environ.setdefault(name, value)  # read by Powertools when rag.observability loads

    from rag.adapters.model_store import ModelAssetError
    from rag.adapters.onnx_models import ModelLoadError
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

    allowed_hosts = split_setting(_set(os.environ, "LOCAL_ALLOWED_HOSTS"))
    app = local_app(deps, api_key=api_key, allowed_hosts=allowed_hosts)
    try:
        server = LocalServer(app, args.host, args.port)
    except OSError as exc:
        log(f"cannot listen on {args.host}:{args.port}: {exc} (try --port or LOCAL_PORT)")
        return EXIT_CONFIG

    def stop(*_: object) -> None:
        log("stopping: no new connections, finishing requests in flight")
        server._server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    log(banner(server.url, settings, store, setup, opik[1] if opik else None, bool(api_key)))
    server.run()
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
