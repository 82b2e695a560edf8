"""UUIDv7 ids (Python 3.11 has no uuid.uuid7)."""

from __future__ import annotations

import time
import uuid

from rag.domain.ids import new_id, uuid7


def test_uuid7_has_version_variant_and_the_current_time() -> None:
    before_ms = time.time_ns() // 1_000_000
    value = uuid7()
    after_ms = time.time_ns() // 1_000_000

    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before_ms <= value.int >> 80 <= after_ms + 1


def test_ids_from_one_process_are_unique_and_strictly_increasing() -> None:
    ids = [uuid7() for _ in range(5000)]

    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_new_id_is_the_canonical_string() -> None:
    text = new_id()

    assert str(uuid.UUID(text)) == text
    assert uuid.UUID(text).version == 7
