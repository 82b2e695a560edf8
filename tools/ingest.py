"""Load a JSONL corpus (DESIGN 3.3) into Qdrant: `python -m tools.ingest FILE [options]`.

Exit codes: 0 done (bad lines, if any, are listed and skipped), 1 strict mode met bad lines or
Qdrant failed, 2 the file or the embedding model cannot be read. Needs `lambda_src` on the path
(`PYTHONPATH=lambda_src:.`, as the Makefile sets it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from tqdm import tqdm

from feature.chunking import Chunker
from feature.ingest import DEFAULT_BATCH_SIZE, IngestError, IngestReport, ingest_file
from rag.adapters.onnx_models import ModelLoadError, OnnxEmbedder
from rag.urls import check_key_transport

DEFAULT_QDRANT_PATH = Path(".local/qdrant")  # the store `make local` serves
DEFAULT_MODEL_DIR = Path("build/models/embedding")
QDRANT_TIMEOUT_S = 30  # batch upserts against a remote server can be slow
EXIT_FAILED, EXIT_UNREADABLE = 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.ingest", description=__doc__)
    parser.add_argument("file", type=Path, help="JSONL file, one document a line")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--qdrant-url", help="Qdrant server URL (default: embedded local mode)")
    target.add_argument(
        "--qdrant-path",
        type=Path,
        help=f"embedded Qdrant folder (default: {DEFAULT_QDRANT_PATH})",
    )
    parser.add_argument(
        "--api-key-env",
        default="QDRANT_API_KEY",
        metavar="NAME",
        help="environment variable holding the Qdrant API key (default: QDRANT_API_KEY)",
    )
    parser.add_argument(
        "--embedding-model-dir",
        type=Path,
        default=Path(os.environ.get("EMBEDDING_MODEL_DIR", DEFAULT_MODEL_DIR)),
        metavar="DIR",
        help="model.onnx + tokenizer.json (default: $EMBEDDING_MODEL_DIR or build/models/embedding,"
        " filled by `python -m tools.fetch_models`)",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N")
    parser.add_argument("--strict", action="store_true", help="any bad line fails the whole run")
    return parser


def _client(args: argparse.Namespace) -> QdrantClient:
    if args.qdrant_url:
        api_key = os.environ.get(args.api_key_env) or None
        if api_key:
            check_key_transport(args.qdrant_url, what="--qdrant-url")
        return QdrantClient(url=args.qdrant_url, api_key=api_key, timeout=QDRANT_TIMEOUT_S)
    path = args.qdrant_path or DEFAULT_QDRANT_PATH
    path.mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(path))


def _print_report(report: IngestReport) -> None:
    for error in report.bad_lines:
        print(f"skipped {error}", file=sys.stderr)
    bad = len(report.bad_lines)
    print(f"documents: {report.documents}  chunks: {report.chunks}  bad lines: {bad}")
    for name, count in report.per_collection.items():
        print(f"  {name}: {count.documents} documents, {count.chunks} chunks")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.batch_size < 1:
        print("--batch-size must be at least 1", file=sys.stderr)
        return EXIT_UNREADABLE
    if not args.file.is_file():
        print(f"cannot read {args.file}: no such file", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        embedder = OnnxEmbedder(args.embedding_model_dir)
    except (ModelLoadError, OSError) as exc:
        hint = "run `python -m tools.fetch_models` or pass --embedding-model-dir"
        print(f"cannot load the embedding model: {exc} ({hint})", file=sys.stderr)
        return EXIT_UNREADABLE
    chunker = Chunker(embedder.tokenizer, max_length=embedder.max_length)
    try:
        client = _client(args)
    except ValueError as exc:  # an API key over plain http to another machine
        print(f"refusing to connect: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except RuntimeError as exc:  # embedded Qdrant's folder lock: another process has it open
        print(
            f"cannot open the local Qdrant store: {exc} Stop `make local` first, "
            "or ingest into a Qdrant server with --qdrant-url.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    with tqdm(unit="chunk", desc="ingest", disable=None) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            report = ingest_file(
                args.file,
                client=client,
                embedder=embedder,
                chunker=chunker,
                batch_size=args.batch_size,
                strict=args.strict,
                progress=progress,
            )
        except (OSError, UnicodeDecodeError) as exc:
            print(f"cannot read {args.file}: {exc}", file=sys.stderr)
            return EXIT_UNREADABLE
        except IngestError as exc:
            print(f"{args.file}: {exc}; nothing was written (--strict)", file=sys.stderr)
            return EXIT_FAILED
        except (ResponseHandlingException, UnexpectedResponse) as exc:
            print(
                f"Qdrant failed: {exc}. Nothing already stored was lost (a document's old chunks "
                "are removed only after its new ones are written); run the ingest again.",
                file=sys.stderr,
            )
            return EXIT_FAILED
        finally:
            client.close()
    _print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
