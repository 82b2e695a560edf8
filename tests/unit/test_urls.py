"""Credentials in URLs: redacted wherever a URL is shown; an API key only over TLS.

Userinfo (`user:password@`) is part of a URL's authority (RFC 3986 section 3.2.1, which also
deprecates passwords there); presigned AWS URLs carry `X-Amz-Signature` / `X-Amz-Credential` /
`X-Amz-Security-Token` query parameters (https://docs.aws.amazon.com/AmazonS3/latest/API/
sigv4-query-string-auth.html). Qdrant Cloud sends its key in the `api-key` header of every
request (https://qdrant.tech/documentation/cloud/authentication/), so over http it is in clear.
"""

from __future__ import annotations

import pytest

from rag.settings import Settings, SettingsError
from rag.urls import check_key_transport, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://admin:hunter2@llm.example:8080/v1", "http://admin:***@llm.example:8080/v1"),
        ("https://tok3n@q.example:6333", "https://***@q.example:6333"),
        (
            "https://s3.example/o?X-Amz-Credential=AKIA1&X-Amz-Signature=abc&part=2",
            "https://s3.example/o?X-Amz-Credential=***&X-Amz-Signature=***&part=2",
        ),
        ("http://h:1/?api_key=s3cr3t&access_token=t0k", "http://h:1/?api_key=***&access_token=***"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_redact_url_hides_passwords_and_secret_query_values(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("url", ["http://qdrant.example:6333", "http://10.0.0.5:6333"])
def test_a_key_is_refused_over_plain_http_beyond_this_machine(url: str) -> None:
    with pytest.raises(ValueError, match="https"):
        check_key_transport(url, what="QDRANT_URL")


@pytest.mark.parametrize(
    "url", ["https://x.cloud.qdrant.io:6333", "http://localhost:6333", "http://[::1]:6333"]
)
def test_a_key_is_allowed_over_https_or_to_loopback(url: str) -> None:
    check_key_transport(url, what="QDRANT_URL")


def test_local_settings_refuse_a_qdrant_key_over_http_and_do_not_echo_it() -> None:
    with pytest.raises(SettingsError, match=r"QDRANT_URL.*https") as error:
        Settings.from_env(
            {"QDRANT_URL": "http://u:pw@qdrant.example:6333", "QDRANT_API_KEY": "the-key"}
        )
    assert "the-key" not in str(error.value) and "pw@" not in str(error.value)
    # Without a key, or to loopback, plain http stays allowed
    Settings.from_env({"QDRANT_URL": "http://qdrant.example:6333"})
    Settings.from_env({"QDRANT_URL": "http://127.0.0.1:6333", "QDRANT_API_KEY": "k"})


def test_the_local_server_banner_shows_no_credentials() -> None:
    # Given LLM, Qdrant and Opik URLs that carry credentials (loopback, so nothing is reached)
    from tools.local_server import banner, local_setup, opik_sink, prepare_store

    env = {
        "LLM_URL": "http://llm-user:llm-pass@127.0.0.1:9/?api_key=llm-key",
        "QDRANT_URL": "http://q-user:q-pass@127.0.0.1:9",
        "QDRANT_API_KEY": "q-header-key",
        "OPIK_URL_OVERRIDE": "http://o-user:o-pass@127.0.0.1:9/api?token=o-token",
        "EMBEDDING_MODEL_DIR": "/nonexistent",
    }
    setup = local_setup(env)
    settings = Settings.from_env(setup.env)
    opik = opik_sink(setup.env)
    assert opik is not None
    try:
        # When the start banner is printed
        text = banner(
            "http://127.0.0.1:8000", settings, prepare_store(settings, setup), setup, opik[1], False
        )
    finally:
        opik[0].close()

    # Then the three URLs are named, with no password, key or token
    for shown in ("127.0.0.1:9/?api_key=***", "q-user:***@127.0.0.1:9", "o-user:***@127.0.0.1"):
        assert shown in text
    for secret in ("llm-pass", "llm-key", "q-pass", "q-header-key", "o-pass", "o-token"):
        assert secret not in text
