"""Per-collection chunking, reproducing the LLM Engineer's Handbook's feature pipeline.

Reproduced from `llm_engineering/application/preprocessing/` (chunking_data_handlers.py and
operations/chunking.py), without langchain:

- articles: sentence-based. Text is split into sentences with the Handbook's regex (a split after
  `.`, `?` or `!` followed by whitespace, not after abbreviations like `e.g.` or `Mr.`), and
  sentences are packed greedily into chunks of at most `max_length` characters (1000).
- posts (250 chars, 25 tokens overlap) and repositories (1500 chars, 100 tokens overlap): by size.
  First paragraphs (split on blank lines) are packed greedily into sections of at most `chunk_size`
  characters, a longer paragraph standing alone (langchain's `RecursiveCharacterTextSplitter` with
  `separators=["\\n\\n"]`, no overlap); then each section is cut into windows of the embedding
  model's tokens with `chunk_overlap` tokens shared between neighbours
  (`SentenceTransformersTokenTextSplitter`).

Deliberate differences, each because the Handbook's behaviour loses or garbles text:
- The Handbook's articles use min_length = max_length = 1000 and drop any chunk under min_length:
  that is most chunks, and every article under 1000 characters. Here no chunk is dropped (and none
  merged past max_length, which keeps it inside the embedder's window); min_length is gone.
- Token windows are cut out of the original text by character offsets instead of being decoded
  from token ids, so chunks keep their case and spacing (decoding lower-cases for this model).
- A token window is the model's max length minus [CLS] and [SEP] (254 for all-MiniLM-L6-v2), so
  a whole chunk fits in the embedder; the Handbook's 256 + 2 special tokens were truncated.
- The Handbook's cleaning step (which also drops every character but letters, digits and .,!?)
  is not applied: whitespace is normalised, code and URLs are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from tokenizers import Tokenizer

DocumentKind = Literal["articles", "posts", "repositories"]

# The Handbook's sentence splitter (after .?! + whitespace, not inside "e.g." or after "Mr.").
_SENTENCE_END = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?|\!)\s")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SPECIAL_TOKENS_PER_TEXT = 2  # [CLS] ... [SEP]


@dataclass(frozen=True)
class SentenceRule:
    """Sentence packing for articles."""

    max_length: int


@dataclass(frozen=True)
class SizeRule:
    """Paragraph packing, then token windows, for posts and repositories."""

    chunk_size: int
    chunk_overlap: int


RULES: dict[DocumentKind, SentenceRule | SizeRule] = {
    "articles": SentenceRule(max_length=1000),
    "posts": SizeRule(chunk_size=250, chunk_overlap=25),
    "repositories": SizeRule(chunk_size=1500, chunk_overlap=100),
}
"""Sizes from the Handbook's handlers (articles without min_length, see the module docstring)."""


def normalise_whitespace(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row; text otherwise kept."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def chunk_article(text: str, *, max_length: int) -> list[str]:
    """Whole sentences packed up to `max_length` characters; a longer sentence stands alone."""
    chunks: list[str] = []
    current = ""
    for raw in _SENTENCE_END.split(text):
        sentence = raw.strip()
        if not sentence:
            continue
        if not current or len(current) + 1 + len(sentence) <= max_length:
            current = f"{current} {sentence}" if current else sentence
            continue
        chunks.append(current)
        current = sentence
    if current:
        chunks.append(current)
    return chunks


def pack_paragraphs(text: str, *, chunk_size: int) -> list[str]:
    sections: list[str] = []
    current = ""
    for raw in _PARAGRAPH_BREAK.split(text):
        paragraph = raw.strip()
        if not paragraph:
            continue
        if current and len(current) + 2 + len(paragraph) <= chunk_size:
            current = f"{current}\n\n{paragraph}"
            continue
        if current:
            sections.append(current)
        current = paragraph
    if current:
        sections.append(current)
    return sections


class Chunker:
    """Chunks documents per collection; token windows use the embedding model's tokenizer."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        max_length: int,
        rules: dict[DocumentKind, SentenceRule | SizeRule] = RULES,
    ):
        # A private copy: the window cutter needs the whole text, untruncated and unpadded.
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.max_length = max_length
        self.tokens_per_chunk = max_length - _SPECIAL_TOKENS_PER_TEXT
        self.rules = rules

    def chunk(self, kind: DocumentKind, text: str) -> list[str]:
        text = normalise_whitespace(text)
        rule = self.rules[kind]
        if isinstance(rule, SentenceRule):
            return chunk_article(text, max_length=rule.max_length)
        return [
            window
            for section in pack_paragraphs(text, chunk_size=rule.chunk_size)
            for window in self.token_windows(section, overlap=rule.chunk_overlap)
        ]

    def token_windows(self, text: str, *, overlap: int) -> list[str]:
        """Windows of `tokens_per_chunk` tokens, `overlap` tokens shared, cut from `text`."""
        if overlap >= self.tokens_per_chunk:
            raise ValueError(f"overlap {overlap} must be below {self.tokens_per_chunk} tokens")
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        if not offsets:
            return [text] if text.strip() else []
        windows: list[str] = []
        step = self.tokens_per_chunk - overlap
        start = 0
        while True:
            end = min(start + self.tokens_per_chunk, len(offsets))
            windows.append(text[offsets[start][0] : offsets[end - 1][1]])
            if end == len(offsets):
                return windows
            start += step
