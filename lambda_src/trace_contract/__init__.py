"""What the business Lambda writes into a trace event and the forwarder reads (docs/CONTRACTS.md,
schema 1). Its own package because it is bundled into both Lambdas, which share no other code."""

from enum import StrEnum


class SpanName(StrEnum):
    """The spans of one request, in pipeline order; a str, so it is the JSON value as is."""

    SELF_QUERY = "self_query"
    QUERY_EXPANSION = "query_expansion"
    EMBED = "embed"
    SEARCH = "search"
    RERANK = "rerank"
    PROMPT = "prompt"
    GENERATE = "generate"
