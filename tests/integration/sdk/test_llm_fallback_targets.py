"""The two LLM fallback targets, against real engines and a real server.

`LocalCheckpoint` runs the engine in-process and must give `transformers`' own greedy
tokens, from ids (same vocabulary) or from text (its own tokenizer). `OpenAICompatible`
streams from `transformers serve` (Hugging Face's OpenAI-compatible server, a real
process on loopback) and must give the text of `transformers`' greedy decode, through
the chat template in chat mode. What that server cannot show (API keys, OpenAI's error
JSON, a server that never answers) is shown against raw sockets on loopback.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import support.hf_checkpoints as hf
from edge_runtime.errors import ConfigError, FallbackError
from edge_runtime.llm import LlmTokenizer, load_local_engine
from edge_runtime.llm.engine import TokenEvent
from edge_runtime.sdk.fallback.local_llm import CACHE_SUBDIR, LocalCheckpoint
from edge_runtime.sdk.fallback.openai_http import OpenAICompatible, sse_data
from edge_runtime.sdk.fallback.targets import GenerationRequest, LlmFallback
from partitioner.tensor import ACTIVATION_RESERVE_BYTES
from support.openai_server import serving_missing, transformers_serve, with_chat_template

TINYLM = Path(__file__).resolve().parents[3] / "examples" / "tinylm" / "checkpoint"
PROMPT = "Permission is hereby granted"
EOS_TINYLM = 257


def text_ids(text: str) -> list[int]:
    tok = LlmTokenizer.from_checkpoint(TINYLM)
    assert tok is not None
    return tok.encode(text)


def decode(ids: list[int]) -> str:
    tok = LlmTokenizer.from_checkpoint(TINYLM)
    assert tok is not None
    return tok.decode(ids)


def ids_of(events: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in events]


# ---------------------------------------------------------------- LocalCheckpoint


@pytest.fixture(scope="module")
def tinylm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCheckpoint]:
    """The byte-level tinylm as a fallback: another vocabulary (259) than the tiny
    random checkpoints the "cluster" would run (200)."""
    local = LocalCheckpoint(TINYLM, cache_dir=tmp_path_factory.mktemp("fallback-llm"))
    yield local
    local.close()


def test_local_greedy_ids_equal_transformers_and_the_engine(
    checkpoint: Callable[[str], Path],
    greedy: Callable[[str, tuple[int, ...], int], list[int]],
    tmp_path: Path,
) -> None:
    llama = checkpoint("llama")
    prompt = (1, 5, 17, 42, 99, 7)
    local = LocalCheckpoint(llama, cache_dir=tmp_path / "fallback")
    assert isinstance(local, LlmFallback)
    assert (local.name, local.cloud, local.degraded) == ("local:llama", False, True)
    try:
        events = list(local.stream(GenerationRequest(prompt, None, 12), timeout_s=60))
    finally:
        local.close()
    engine, runner = load_local_engine(llama, cache_dir=tmp_path / "direct", max_context=512)
    try:
        direct = engine.generate(list(prompt), 12)
    finally:
        runner.close()
    assert ids_of(events) == greedy("llama", prompt, 12) == list(direct.token_ids)
    assert [e.index for e in events] == list(range(len(events)))
    assert all(a.seconds <= b.seconds for a, b in itertools.pairwise(events))


def test_local_checkpoint_over_its_memory_budget_streams_and_answers_the_same(
    checkpoint: Callable[[str], Path],
    greedy: Callable[[str, tuple[int, ...], int], list[int]],
    tmp_path: Path,
) -> None:
    llama = checkpoint("llama")
    prompt = (1, 5, 17, 42, 99, 7)
    weights = sum(f.stat().st_size for f in llama.glob("*.safetensors"))
    # the activation reserve and a small KV cache, plus room for about half the weights
    budget = ACTIVATION_RESERVE_BYTES + (1 << 17) + weights // 2
    local = LocalCheckpoint(llama, cache_dir=tmp_path / "fallback", memory_budget=budget,
                            max_context=64)
    try:
        events = list(local.stream(GenerationRequest(prompt, None, 8), timeout_s=60))
        stats = local.window_stats()
    finally:
        local.close()
    assert ids_of(events) == greedy("llama", prompt, 8)
    assert stats and not stats[0].resident and stats[0].loads > 0  # it streamed
    too_small = LocalCheckpoint(llama, cache_dir=tmp_path / "fallback", memory_budget=1024)
    with pytest.raises(FallbackError, match="cannot load"):
        list(too_small.stream(GenerationRequest(prompt, None, 2), timeout_s=60))


def test_local_text_prompt_is_encoded_by_its_own_tokenizer(tinylm: LocalCheckpoint) -> None:
    # ids of another vocabulary (the cluster's), the text is what counts; the cluster's
    # stop id 116 is a byte here ('t') and must not stop this checkpoint
    request = GenerationRequest((150, 199, 3), PROMPT, 24, stop=(116,))
    events = list(tinylm.stream(request, timeout_s=60))
    expected = hf.reference_greedy(TINYLM, text_ids(PROMPT), 24)
    assert 116 in expected[:-1]
    assert ids_of(events) == expected
    assert "".join(e.text for e in events) == decode(expected)
    assert tinylm.name == "local:checkpoint"


def test_local_stop_ids_apply_to_id_prompts_and_stop_strings_to_text(
    tinylm: LocalCheckpoint,
) -> None:
    full = hf.reference_greedy(TINYLM, text_ids(PROMPT), 40)
    by_id = list(tinylm.stream(GenerationRequest(tuple(text_ids(PROMPT)), None, 40,
                                                 stop=(116,)), timeout_s=60))
    assert ids_of(by_id) == full[: full.index(116) + 1]
    by_text = list(tinylm.stream(GenerationRequest((), PROMPT, 40, stop=("Library", 2)),
                                 timeout_s=60))
    text = decode(full)
    assert "".join(e.text for e in by_text) == text[: text.index("Library") + len("Library")]


def test_local_ids_outside_its_vocabulary_need_text(tinylm: LocalCheckpoint) -> None:
    with pytest.raises(FallbackError, match="cannot be mapped without text") as info:
        tinylm.stream(GenerationRequest((5, 300, 1000), None, 8), timeout_s=60)
    assert info.value.target == tinylm.name
    assert "[0, 259)" in str(info.value)


def test_local_missing_checkpoint_is_a_clear_fallback_error(tmp_path: Path) -> None:
    local = LocalCheckpoint(tmp_path / "no-such-checkpoint", cache_dir=tmp_path)
    with pytest.raises(FallbackError, match=r"no-such-checkpoint does not exist") as info:
        local.stream(GenerationRequest((1, 2), "hi", 4), timeout_s=10)
    assert info.value.target == "local:no-such-checkpoint"


def test_local_default_cache_is_the_users_and_close_releases(
    checkpoint: Callable[[str], Path], private_user_cache: Path,
) -> None:
    local = LocalCheckpoint(checkpoint("llama"))
    assert local.cache_dir == private_user_cache / CACHE_SUBDIR
    first = ids_of(list(local.stream(GenerationRequest((1, 5, 9), None, 6), timeout_s=60)))
    assert any(local.cache_dir.iterdir())
    local.close()
    again = ids_of(list(local.stream(GenerationRequest((1, 5, 9), None, 6), timeout_s=60)))
    local.close()
    assert again == first


def test_local_generation_past_its_timeout_fails(tinylm: LocalCheckpoint) -> None:
    events = tinylm.stream(GenerationRequest((), PROMPT, 8), timeout_s=0.0)
    with pytest.raises(FallbackError, match=r"did not finish within 0\.0 s"):
        next(events)


# ---------------------------------------------------------------- OpenAICompatible


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`transformers serve` on tinylm (with a chat template); yields (base_url, model)."""
    missing = serving_missing()
    if missing is not None:
        pytest.fail(missing)
    root = tmp_path_factory.mktemp("openai-server")
    model_dir = with_chat_template(TINYLM, root / "tinylm")
    with transformers_serve(model_dir, root / "serve.log") as base_url:
        yield base_url, str(model_dir)


def hf_chat_ids(model_dir: str, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    ids: list[int] = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return ids


def test_openai_completions_stream_transformers_greedy_text(server: tuple[str, str]) -> None:
    base_url, model = server
    target = OpenAICompatible(base_url, model, cloud=False)
    assert isinstance(target, LlmFallback)
    assert (target.name, target.cloud, target.degraded) == (
        f"openai:{model}@{base_url}", False, True)
    events = list(target.stream(GenerationRequest((7, 8), PROMPT, 20, seed=3), timeout_s=30))
    expected = hf.reference_greedy(TINYLM, text_ids(PROMPT), 20)
    assert len(expected) == 20 and EOS_TINYLM not in expected  # so max_tokens is what ends it
    assert "".join(e.text for e in events) == decode(expected)
    assert all(e.token_id == -1 and e.text for e in events)
    assert [e.index for e in events] == list(range(len(events)))


def test_openai_chat_stream_goes_through_the_chat_template(server: tuple[str, str]) -> None:
    base_url, model = server
    target = OpenAICompatible(base_url, model, chat=True)
    events = list(target.stream(GenerationRequest((), PROMPT, 16), timeout_s=30))
    expected = hf.reference_greedy(TINYLM, hf_chat_ids(model, PROMPT), 16)
    assert "".join(e.text for e in events) == decode(expected)
    plain = hf.reference_greedy(TINYLM, text_ids(PROMPT), 16)
    assert decode(expected) != decode(plain)  # the template did change the prompt


def test_openai_stop_strings_are_sent_and_stop_ids_dropped(server: tuple[str, str]) -> None:
    base_url, model = server
    target = OpenAICompatible(base_url, model)
    request = GenerationRequest((), PROMPT, 40, stop=(116, "Library"))
    text = "".join(e.text for e in target.stream(request, timeout_s=30))
    full = decode(hf.reference_greedy(TINYLM, text_ids(PROMPT), 40))
    # transformers keeps the stop string in its output (OpenAI's API would cut it)
    assert text == full[: full.index("Library") + len("Library")]


def test_openai_api_key_is_ignored_by_a_keyless_server(server: tuple[str, str]) -> None:
    base_url, model = server
    target = OpenAICompatible(base_url, model, api_key="sk-not-checked")
    text = "".join(e.text for e in target.stream(GenerationRequest((), PROMPT, 6), 30))
    assert text == decode(hf.reference_greedy(TINYLM, text_ids(PROMPT), 6))


def test_openai_wrong_model_is_the_servers_message_fast(server: tuple[str, str]) -> None:
    base_url, _ = server
    target = OpenAICompatible(base_url, "no-such-model")
    t0 = time.monotonic()
    with pytest.raises(FallbackError, match=r"HTTP 400 .*pinned to .*no-such-model") as info:
        target.stream(GenerationRequest((), PROMPT, 4), timeout_s=30)
    assert time.monotonic() - t0 < 2.0
    assert info.value.target == f"openai:no-such-model@{base_url}"


def test_openai_server_down_is_refused_fast() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = OpenAICompatible(f"http://127.0.0.1:{port}/v1", "m")
    t0 = time.monotonic()
    with pytest.raises(FallbackError, match="refused: is the server running"):
        target.stream(GenerationRequest((), PROMPT, 4), timeout_s=30)
    assert time.monotonic() - t0 < 2.0


def test_openai_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        target = OpenAICompatible(f"http://127.0.0.1:{port}/v1", "m", timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(FallbackError, match=r"did not answer within 0\.5 s"):
            target.stream(GenerationRequest((), PROMPT, 4), timeout_s=30)
        assert 0.4 < time.monotonic() - t0 < 3.0


def one_http_answer(status: str, body: bytes) -> tuple[int, dict[str, bytes], threading.Thread]:
    """A loopback socket that reads one HTTP request and answers it; the request's head
    and body land in the returned dict."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    seen: dict[str, bytes] = {}

    def serve() -> None:
        with listener, listener.accept()[0] as conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(rest) < length:
                rest += conn.recv(65536)
            seen.update(head=head, body=rest)
            conn.sendall(b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json"
                         b"\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], seen, thread


def test_openai_bearer_key_and_openai_error_json() -> None:
    error = {"error": {"message": "Incorrect API key provided: sk-bad",
                       "type": "invalid_request_error"}}
    port, seen, thread = one_http_answer("401 Unauthorized", json.dumps(error).encode())
    target = OpenAICompatible(f"http://127.0.0.1:{port}/v1/", "gpt-x", api_key="sk-bad")
    request = GenerationRequest((1,), PROMPT, 5, temperature=0.7, top_k=40, top_p=0.9, seed=11,
                                stop=(2, "\n\n"))
    with pytest.raises(FallbackError, match=r"HTTP 401 .*Incorrect API key provided: sk-bad"):
        target.stream(request, timeout_s=10)
    thread.join(5)
    lines = seen["head"].decode().split("\r\n")
    assert lines[0] == "POST /v1/completions HTTP/1.1"
    assert "Authorization: Bearer sk-bad" in lines
    assert json.loads(seen["body"]) == {
        "model": "gpt-x", "prompt": PROMPT, "max_tokens": 5, "temperature": 0.7,
        "top_p": 0.9, "stream": True, "seed": 11, "stop": ["\n\n"]}


def test_openai_needs_text_and_an_http_url() -> None:
    target = OpenAICompatible("http://127.0.0.1:9/v1", "m")
    with pytest.raises(FallbackError, match="needs the prompt as text"):
        target.stream(GenerationRequest((1, 2, 3), None, 4), timeout_s=5)
    with pytest.raises(ConfigError, match="not an http"):
        OpenAICompatible("127.0.0.1:8000/v1", "m")


def test_sse_data_joins_lines_and_skips_comments() -> None:
    raw = [b": keep-alive\n", b"data: {\"a\":\n", b"data: 1}\r\n", b"\n", b"event: x\n",
           b"data:[DONE]\n", b"\n"]
    assert list(sse_data(raw)) == ['{"a":\n1}', "[DONE]"]
