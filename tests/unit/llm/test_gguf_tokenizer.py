"""The tokenizer rebuilt from a GGUF vocabulary against transformers' from the same file.

SentencePiece-style vocabularies (llama, and the Gemma 2/3 and Phi-3 variants) and
byte-level BPE (qwen2 / qwen3, Qwen's split regex): the same ids for text with spaces,
newlines, digits, non-ASCII (byte fallback), special tokens written in the text; the same
decoded text; BOS added as the file says; the chat template carried into
tokenizer_config.json and rendered by the server's loader.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import support.gguf_files as gf
from edge_runtime.llm import LlmTokenizer
from edge_runtime.llm.gguf import GgufFile, build_tokenizer, convert_gguf
from edge_runtime.llm.gguf.tokenizer import merges_from_scores
from edge_runtime.serve import load_chat_template

TEXTS = ["Hello world", "the cat is on the 123 world!", " hello  you\n\nthe", "Ünïcödé ☃ 12",
         "", "<s>hi</s>", "<|im_start|>user\nhello<|im_end|>", "   leading", "a    b\tc"]
ARCHS = ("llama", "gemma2", "gemma3", "phi3", "qwen2", "qwen3")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf_vocab")


@pytest.mark.parametrize("arch", ARCHS)
def test_encoding_equals_transformers(arch: str, files: Path) -> None:
    path = gf.write_vocab_only(files / f"{arch}.gguf", arch, gf.vocab_for(arch))
    ours = build_tokenizer(GgufFile(path))
    ref = gf.transformers_tokenizer(path)
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == ref.encode(text), text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    assert ours.encode("Hello").ids[0] == (1 if arch not in ("qwen2", "qwen3") else
                                           ours.token_to_id("H"))  # BOS as the file says


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_converted_checkpoint_tokenizes_and_templates_like_the_file(arch: str, files: Path
                                                                     ) -> None:
    path = gf.write_gguf(files / f"{arch}-F32.gguf", arch, "F32")
    directory = convert_gguf(path)
    ours = LlmTokenizer.from_checkpoint(directory)
    assert ours is not None
    ref = gf.transformers_tokenizer(path)
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text)
    template = load_chat_template(directory)
    rendered = template.render([{"role": "user", "content": "hi"}])
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_merges_follow_scores() -> None:
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    merges = merges_from_scores(tokens, [0, 0, 0, -2.0, -1.0, -3.0])
    assert merges[:2] == [("b", "c"), ("a", "b")]  # higher score first
    assert set(merges[2:]) == {("a", "bc"), ("ab", "c")}
