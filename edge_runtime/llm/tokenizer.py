"""Text to token ids and back, through the checkpoint's `tokenizer.json`.

Why a wrapper: the `tokenizers` library is optional per checkpoint (without a
tokenizer.json the engine takes token ids), and streaming needs incremental decoding
that never emits half a UTF-8 character (`StreamDecoder`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge_runtime.errors import CheckpointError

log = logging.getLogger(__name__)


class LlmTokenizer:
    """A `tokenizers.Tokenizer` loaded from a checkpoint directory."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on bad files
            raise CheckpointError(f"{path} is not a valid tokenizer.json: {exc}") from exc

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> LlmTokenizer | None:
        """The checkpoint's tokenizer, or None when it ships no tokenizer.json."""
        path = Path(directory) / "tokenizer.json"
        return cls(path) if path.is_file() else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text: str = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        return text


class StreamDecoder:
    """Turns a growing list of token ids into text pieces, holding back partial characters."""

    def __init__(self, tokenizer: LlmTokenizer) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        text = self._tok.decode(self._ids)
        if text.endswith("\ufffd"):
            return ""  # an incomplete multi-byte character: wait for the next token
        piece = text[self._emitted :]
        self._emitted = len(text)
        return piece

    @property
    def text(self) -> str:
        return self._tok.decode(self._ids)


__all__ = ["LlmTokenizer", "StreamDecoder"]
