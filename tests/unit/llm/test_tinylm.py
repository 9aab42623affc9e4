"""The committed tinylm example generates readable text, token for token as transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

import support.hf_checkpoints as hf
from edge_runtime.llm import LlmTokenizer, RelativeSpeed, load_local_engine

TINYLM = Path(__file__).resolve().parents[3] / "examples" / "tinylm" / "checkpoint"
PROMPT = "Permission is hereby granted"


def test_tokenizer_is_byte_level() -> None:
    tok = LlmTokenizer.from_checkpoint(TINYLM)
    assert tok is not None
    text = "Héllo, world!\n  x"
    assert tok.encode(text) == list(text.encode())
    assert tok.decode(list(text.encode())) == text


@pytest.mark.parametrize("workers", [1, 3])
def test_greedy_text_matches_transformers_and_reads(workers: int, tmp_path: Path) -> None:
    engine, runner = load_local_engine(
        TINYLM,
        cache_dir=tmp_path,
        devices=[RelativeSpeed(f"d{i}", 1.0 + i) for i in range(workers)],
        max_context=128,
    )
    try:
        got = engine.generate(PROMPT, 48)
        streamed = "".join(e.text for e in engine.stream(PROMPT, 48))
    finally:
        runner.close()
    expected = hf.reference_greedy(TINYLM, list(PROMPT.encode()), 48)
    assert list(got.token_ids) == expected
    assert streamed == got.text
    words = got.text.split()
    assert len(words) >= 6
    assert sum(w.strip(",.()").isalpha() for w in words) / len(words) > 0.8
    assert any(w in {"the", "of", "and", "to"} for w in words)
