"""UUIDv7 (RFC 9562) ids for traces and spans; Python 3.11's `uuid` has no `uuid7`.

Time-ordered ids sort by creation in Opik and let a redelivered trace event keep its ids.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_RAND_A_BITS = 12
_RAND_B_BITS = 62
_lock = threading.Lock()
_last_ms = -1
_last_rand_a = 0


def uuid7() -> uuid.UUID:
    """A UUIDv7: 48-bit Unix ms, version 7, 12-bit counter, variant 0b10, 62 random bits.

    Within one millisecond `rand_a` counts up from a random start (RFC 9562 method 1 "fixed-length
    dedicated counter"), so ids made by one process are strictly increasing.
    """
    global _last_ms, _last_rand_a
    ms = time.time_ns() // 1_000_000
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << _RAND_B_BITS) - 1)
    with _lock:
        if ms <= _last_ms and _last_rand_a < (1 << _RAND_A_BITS) - 1:
            ms, rand_a = _last_ms, _last_rand_a + 1
        elif ms <= _last_ms:  # counter exhausted: borrow the next millisecond
            ms, rand_a = _last_ms + 1, 0
        else:
            rand_a = int.from_bytes(os.urandom(2), "big") >> 5  # 11 bits: leaves counter headroom
        _last_ms, _last_rand_a = ms, rand_a
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def new_id() -> str:
    return str(uuid7())
