"""A local HTTP server speaking the Hugging Face Hub's REST protocol, for the real `huggingface_hub` client.

Routes (as on huggingface.co):
- `GET /api/models/{repo}/revision/{rev}[?blobs=true]`: the model JSON (`sha`, `gated`, `siblings`,
  `safetensors` {parameters, total}, `config`).
- `GET /{repo}/resolve/{rev}/{file}`: `config.json`, or a weight shard. Each file's `blobId` is its
  git blob id and each shard's `lfs.sha256` the sha256 of the bytes served, as on the Hub, so a
  client can verify what it downloads. (Shard bytes are a short stand-in: give a repo
  `shard_sizes` of SHARD_STAND_IN_BYTES to download it whole.)
Errors carry the Hub's `X-Error-Code` header (RepoNotFound, RevisionNotFound, GatedRepo), which is
how `huggingface_hub` maps them to its exception types. Like the real Hub, a gated repo's metadata is
public; only its files need a token whose account accepted the licence.

The repos below hold the real parameter counts and config.json values of the models (from their
Hub pages); commit SHAs are made up (sha1 of the repo id).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse


def fake_sha(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content: sha1 of `blob <size>\\0` + the bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


SHARD_STAND_IN_BYTES = 41
"""Length of a served shard: the ASCII of `<commit sha><shard number>` (shards 1-9)."""


@dataclass
class FakeRepo:
    repo_id: str
    config: dict[str, Any]
    safetensors: dict[str, Any] | None
    gated: str | bool = False
    shard_sizes: list[int] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)
    granted_tokens: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.branches.setdefault("main", fake_sha(self.repo_id))

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.branches.values() else None

    def config_bytes(self) -> bytes:
        return json.dumps(self.config).encode()

    def shard_name(self, i: int) -> str:
        return f"model-{i:05d}-of-{len(self.shard_sizes):05d}.safetensors"

    def file_bytes(self, sha: str, name: str) -> bytes | None:
        if name == "config.json":
            return self.config_bytes()
        for i in range(1, len(self.shard_sizes) + 1):
            if name == self.shard_name(i):
                return f"{sha}{i}".encode()
        return None

    def info_json(self, sha: str) -> dict[str, Any]:
        config = self.config_bytes()
        siblings: list[dict[str, Any]] = [
            {"rfilename": "config.json", "blobId": git_blob_id(config), "size": len(config)},
            *(
                {
                    "rfilename": self.shard_name(i),
                    "blobId": fake_sha(f"{sha}{i}"),
                    "size": size,
                    "lfs": {
                        "sha256": hashlib.sha256(f"{sha}{i}".encode()).hexdigest(),
                        "size": size,
                        "pointerSize": 135,
                    },
                }
                for i, size in enumerate(self.shard_sizes, start=1)
            ),
        ]
        data: dict[str, Any] = {
            "_id": fake_sha(self.repo_id)[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "sha": sha,
            "lastModified": "2024-09-25T14:34:16.000Z",
            "createdAt": "2024-07-18T08:56:00.000Z",
            "private": False,
            "disabled": False,
            "gated": self.gated,
            "downloads": 1000,
            "likes": 10,
            "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "tags": [
                "transformers",
                "safetensors",
                self.config.get("model_type", "llama"),
                "text-generation",
            ],
            "config": {
                k: self.config[k] for k in ("architectures", "model_type") if k in self.config
            },
            "cardData": {"license": "other"},
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(self.shard_sizes),
        }
        if self.safetensors is not None:
            data["safetensors"] = self.safetensors
        return data


LLAMA_31_8B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}  # fmt: skip
LLAMA_31_8B_PARAMS = 8_030_261_248
LLAMA_31_8B_SHARDS = [4_976_698_672, 4_999_802_720, 4_915_916_176, 1_168_138_808]

LLAMA_31_70B_CONFIG: dict[str, Any] = {
    **LLAMA_31_8B_CONFIG,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
}
LLAMA_31_70B_PARAMS = 70_553_706_496

QWEN25_32B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 5120,
    "intermediate_size": 27648,
    "max_position_embeddings": 32768,
    "max_window_layers": 70,
    "model_type": "qwen2",
    "num_attention_heads": 40,
    "num_hidden_layers": 64,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_sliding_window": False,
    "vocab_size": 152064,
}
QWEN25_32B_PARAMS = 32_763_876_352

GRANTED_TOKEN = "hf_granted_fake_token"
UNGRANTED_TOKEN = "hf_valid_but_no_access"


def bf16(params: int) -> dict[str, Any]:
    return {"parameters": {"BF16": params}, "total": params}


def shipped_repos() -> list[FakeRepo]:
    """The models of the shipped configs, plus Llama-3.1-70B for a too-big case."""
    return [
        FakeRepo("mlabonne/TwinLlama-3.1-8B-DPO", LLAMA_31_8B_CONFIG, bf16(LLAMA_31_8B_PARAMS),
                 shard_sizes=LLAMA_31_8B_SHARDS),
        FakeRepo("meta-llama/Llama-3.1-8B-Instruct", LLAMA_31_8B_CONFIG, bf16(LLAMA_31_8B_PARAMS),
                 gated="manual", shard_sizes=LLAMA_31_8B_SHARDS, granted_tokens={GRANTED_TOKEN}),
        FakeRepo("Qwen/Qwen2.5-32B-Instruct", QWEN25_32B_CONFIG, bf16(QWEN25_32B_PARAMS)),
        FakeRepo("meta-llama/Llama-3.1-70B-Instruct", LLAMA_31_70B_CONFIG, bf16(LLAMA_31_70B_PARAMS),
                 gated="manual", granted_tokens={GRANTED_TOKEN}),
    ]  # fmt: skip


class FakeHub:
    def __init__(self, repos: list[FakeRepo] | None = None) -> None:
        self.repos = {r.repo_id: r for r in (repos if repos is not None else shipped_repos())}
        self.valid_tokens = {GRANTED_TOKEN, UNGRANTED_TOKEN}
        self.requests: list[tuple[str, str | None]] = []
        """(path, Authorization header) of every request, for asserting what the client sent."""

    def handle(self, path: str, auth: str | None) -> tuple[int, dict[str, str], Any]:
        self.requests.append((path, auth))
        token = auth.removeprefix("Bearer ") if auth else None
        if token is not None and token not in self.valid_tokens:
            return (
                401,
                {"X-Error-Message": "Invalid credentials in Authorization header"},
                {"error": "Invalid credentials in Authorization header"},
            )
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "revision":
            repo_id, revision, file = f"{parts[2]}/{parts[3]}", parts[5], None
        elif len(parts) == 5 and parts[2] == "resolve":
            repo_id, revision, file = f"{parts[0]}/{parts[1]}", parts[3], parts[4]
        else:
            return 404, {}, {"error": "Not Found"}
        repo = self.repos.get(repo_id)
        if repo is None:
            # The Hub answers 401 to anonymous callers so private repos are not revealed.
            return (
                (404 if token else 401),
                {"X-Error-Code": "RepoNotFound"},
                {"error": "Repository not found"},
            )
        sha = repo.resolve(revision)
        if sha is None:
            return (
                404,
                {"X-Error-Code": "RevisionNotFound"},
                {"error": f"Invalid rev id: {revision}"},
            )
        if file is None:
            return 200, {}, repo.info_json(sha)
        if repo.gated and token not in repo.granted_tokens:
            message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            return (
                (403 if token else 401),
                {"X-Error-Code": "GatedRepo", "X-Error-Message": message},
                {"error": message},
            )
        content = repo.file_bytes(sha, file)
        if content is None:
            return 404, {"X-Error-Code": "EntryNotFound"}, {"error": "Entry not found"}
        headers = {"X-Repo-Commit": sha, "ETag": f'"{fake_sha(sha + file)}"'}
        return 200, headers, repo.config if file == "config.json" else content


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = hub.handle(
                urlparse(self.path).path, self.headers.get("Authorization")
            )
            raw = isinstance(body, bytes)
            payload = body if raw else json.dumps(body).encode()
            self.send_response(status)
            self.send_header(
                "Content-Type", "application/octet-stream" if raw else "application/json"
            )
            self.send_header("Content-Length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serve(hub: FakeHub) -> Iterator[str]:
    """Run the fake Hub on a free local port; yields its base URL (an `HfApi(endpoint=...)`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
