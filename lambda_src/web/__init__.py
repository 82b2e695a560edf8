"""The HTTP layer: one ASGI (FastAPI) app over `rag.domain.pipeline`, served by uvicorn in local mode
and behind the AWS Lambda Web Adapter in AWS. Nothing in `rag/` sees a request."""
