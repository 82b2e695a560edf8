"""URLs that may carry credentials: how to show them, and when they may carry a key at all."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"
_SECRET_PARAM = re.compile(
    r"key|token|secret|passw|pwd|auth|credential|signature|^sig$|session", re.IGNORECASE
)
"""Query parameter names whose values are hidden (api_key, access_token, X-Amz-Signature...)."""


def redact_url(url: str) -> str:
    """`url` fit to print or log: the userinfo's password and the values of secret-looking
    query parameters become `***`. Anything that does not parse as a URL is returned as is."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
        query = urlencode(
            [
                (name, REDACTED if _SECRET_PARAM.search(name) else value)
                for name, value in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return url


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_key_transport(url: str, *, what: str) -> None:
    """Raise ValueError when an API key would travel to `url` in clear: plain http is allowed
    only to this machine (loopback), where nothing crosses a network."""
    if urlsplit(url).scheme.lower() != "https" and not is_loopback(url):
        raise ValueError(
            f"{what} {redact_url(url)} is not https:// while an API key is set: the key would "
            "cross the network in clear (plain http is allowed to localhost only)"
        )
