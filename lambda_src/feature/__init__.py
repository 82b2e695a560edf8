"""The feature side: chunking and ingest into Qdrant. Never bundled into the Lambda."""
