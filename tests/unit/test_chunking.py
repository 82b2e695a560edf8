"""Chunking rules per collection (the Handbook's feature pipeline, see feature.chunking)."""

from __future__ import annotations

import pytest

from devkit.tiny_models import DEFAULT_WORDS, build_tokenizer
from feature.chunking import RULES, Chunker, SizeRule, chunk_article, pack_paragraphs

MAX_LENGTH = 32  # a small model window keeps the token windows visible in short texts


@pytest.fixture
def chunker() -> Chunker:
    return Chunker(build_tokenizer(), max_length=MAX_LENGTH)


def _sentences(n: int) -> str:
    return " ".join(f"Sentence number {i} talks about Qdrant and vectors." for i in range(n))


def test_articles_pack_whole_sentences_up_to_max_length() -> None:
    # Given an article of 60 sentences of ~50 characters
    text = _sentences(60)
    # When chunked with the articles rule
    chunks = chunk_article(text, max_length=1000)
    # Then every chunk is whole sentences, at most 1000 characters, and no text is lost
    assert len(chunks) > 1
    assert all(len(c) <= 1000 for c in chunks)
    assert all(c.startswith("Sentence number") and c.endswith(".") for c in chunks)
    assert " ".join(chunks) == text


def test_articles_do_not_split_after_abbreviations() -> None:
    text = "Mr. Smith uses e.g. Qdrant. It works! Does it scale? Yes."
    chunks = chunk_article(text, max_length=20)
    assert chunks[0] == "Mr. Smith uses e.g. Qdrant."


def test_short_articles_and_tails_are_kept_not_dropped() -> None:
    # Given an article under the Handbook's min_length, and one whose last sentence is alone
    short = "Short but useful."
    long = "A" * 995 + ". The end."
    # When chunked, Then nothing is dropped
    assert chunk_article(short, max_length=1000) == [short]
    assert chunk_article(long, max_length=1000) == ["A" * 995 + ".", "The end."]


def test_paragraphs_are_packed_up_to_chunk_size_and_long_ones_stand_alone() -> None:
    paragraphs = ["a" * 100, "b" * 100, "c" * 300, "d" * 40]
    sections = pack_paragraphs("\n\n".join(paragraphs), chunk_size=250)
    assert sections == [f"{'a' * 100}\n\n{'b' * 100}", "c" * 300, "d" * 40]


def test_posts_are_cut_into_overlapping_token_windows(chunker: Chunker) -> None:
    # Given a paragraph of 70 words that are one token each
    words = [DEFAULT_WORDS[i % len(DEFAULT_WORDS)] for i in range(70)]
    # When cut into windows with 5 tokens of overlap
    chunks = chunker.token_windows(" ".join(words), overlap=5)
    # Then each window holds max_length - 2 tokens, starting 25 tokens after the previous one
    per_window, step = MAX_LENGTH - 2, MAX_LENGTH - 2 - 5
    assert [c.split() for c in chunks] == [
        words[start : start + per_window] for start in range(0, 70 - 5, step)
    ]


def test_token_windows_keep_the_original_text(chunker: Chunker) -> None:
    # Given mixed-case text with punctuation (decoding token ids would lower-case it)
    text = "Qdrant, by Paul: FAST & Rust-based!"
    # Then a single window is the text itself
    assert chunker.token_windows(text, overlap=2) == [text]


@pytest.mark.parametrize(
    ("kind", "size"),
    [("posts", 250), ("repositories", 1500)],
)
def test_size_rules_follow_the_handbook(kind: str, size: int) -> None:
    rule = RULES[kind]  # type: ignore[index]
    assert isinstance(rule, SizeRule)
    assert rule.chunk_size == size


def test_each_collection_chunks_differently(chunker: Chunker) -> None:
    # Given the same multi-paragraph text
    paragraph = "Qdrant stores vectors. It is written in Rust. Paul wrote about it."
    text = "\n\n".join([paragraph] * 6)
    # When chunked as each kind
    articles = chunker.chunk("articles", text)
    posts = chunker.chunk("posts", text)
    repositories = Chunker(build_tokenizer(), max_length=256).chunk("repositories", text)
    # Then articles pack sentences, posts pack small sections, repositories keep big ones
    assert len(articles) == 1  # ~400 characters fit one 1000-character chunk
    assert len(posts) > len(repositories)
    assert repositories == [text]


def test_whitespace_is_normalised_but_text_kept() -> None:
    text = "line one   \r\nline two\r\n\r\n\r\n\r\nnext paragraph {code: [1, 2]}"
    assert Chunker(build_tokenizer(), max_length=256).chunk("posts", text) == [
        "line one\nline two\n\nnext paragraph {code: [1, 2]}"
    ]
