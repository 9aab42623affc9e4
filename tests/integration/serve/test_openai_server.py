"""The OpenAI-compatible server against the official `openai` client, on real agents.

One local cluster of two agents serves the committed tinylm checkpoint for the whole
module; every reference text is the SDK's own greedy `llm.generate` on the same
deployment, computed before the scheduler thread takes the deployment over. Three
uvicorn servers run in threads over it: the main one (the plain fallback chat
template, an API key), one whose chat template comes from a copy of the checkpoint
with a `chat_template` in its tokenizer_config.json, and one whose scheduler is never
started (its queue only fills: queueing, 429 and a client leaving while queued). The
last test runs `edge-runtime serve` as a real process and stops it with SIGTERM
mid-stream.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette

import edge_runtime as er
from edge_runtime.llm.engine import Generation
from edge_runtime.sdk.scheduler import GenerationScheduler
from edge_runtime.serve import ServedModel, create_app, load_chat_template
from edge_runtime.serve.server import background

ROOT = Path(__file__).parents[3]
TINYLM = ROOT / "examples" / "tinylm" / "checkpoint"
CLI = [sys.executable, "-m", "edge_runtime.cli.main"]
KEY = "test-key-1234"
CONTEXT = 256
PROMPT = "Permission is hereby granted"
STOP = "Library"  # a word of PROMPT's greedy continuation (checked in the fixture)
SPACE = 32  # the byte-level token of " ", standing in for an EOS tinylm never emits
LONG = "Hello"  # its greedy continuation runs 200 tokens without an EOS (checked)
LONG_TOKENS = 200
CONCURRENT = ["The Software", "copies of the", "THE SOFTWARE IS", "Permission is"]
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Permission is hereby"}]
# what the two chat templates make of QUESTION (the rendering itself is tested against
# transformers in tests/unit/serve/test_chat_template.py)
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
            "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
RENDERED_TEMPLATE = "<bos><|user|>Permission is hereby<eos><|assistant|>"
RENDERED_PLAIN = "User: Permission is hereby\nAssistant:"


@dataclass(frozen=True)
class ThreadServer:
    """`app` served by `edge_runtime.serve.server.background` from a thread of this process."""

    app: Starlette
    url: str  # http://127.0.0.1:PORT

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def client(self, api_key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0,
                             timeout=60)


def _serve(stack: ExitStack, app: Starlette) -> ThreadServer:
    return ThreadServer(app, stack.enter_context(background(app)))


@dataclass
class Served:
    main: ThreadServer  # plain template, API key
    chat: ThreadServer  # the copy's chat template, no key
    idle: ThreadServer  # a scheduler that never runs (max_queue 1)
    space_eos: ThreadServer  # the main scheduler, told that " " is the model's EOS
    scheduler: GenerationScheduler
    refs: dict[str, Generation]
    prompt_ids: list[int]  # PROMPT encoded


def _with_template(directory: Path) -> Path:
    """A copy of tinylm whose tokenizer_config.json holds `TEMPLATE`."""
    shutil.copytree(TINYLM, directory)
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "chat_template": TEMPLATE}))
    return directory


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    chat_dir = _with_template(tmp_path_factory.mktemp("chat") / "tinylm-chat")
    with er.local_cluster(2, log_level="WARNING") as cluster:
        llm = cluster.deploy_llm(TINYLM, max_context=CONTEXT, max_batch=4)  # batched steps

        def greedy(prompt: str | list[int], n: int, **kw: Any) -> Generation:
            result = llm.generate(prompt, n, **kw)
            assert isinstance(result, Generation)
            return result

        eos = list(llm.config.eos_token_ids)
        refs = {"prompt": greedy(PROMPT, 24), "long": greedy(LONG, LONG_TOKENS),
                "stop": greedy(PROMPT, 24, stop=[*eos, STOP]),
                "plain": greedy(RENDERED_PLAIN, 16), "template": greedy(RENDERED_TEMPLATE, 16),
                "space": greedy(PROMPT, 24, stop=[SPACE]),
                **{p: greedy(p, 20) for p in CONCURRENT}}
        assert STOP in refs["prompt"].text and refs["stop"].finish_reason == "stop"
        assert refs["space"].finish_reason == "stop" and len(refs["space"].token_ids) < 24
        assert len(refs["long"].token_ids) == LONG_TOKENS and refs["long"].finish_reason == "length"
        assert llm.engine.tokenizer is not None
        prompt_ids = llm.engine.tokenizer.encode(PROMPT)
        plain = ServedModel.of(llm)  # before the scheduler's thread owns the deployment
        templated = ServedModel.of(llm, "tinylm-chat", load_chat_template(chat_dir))
        scheduler = GenerationScheduler(llm).start()
        idle = GenerationScheduler(llm, max_queue=1)  # never started
        try:
            with ExitStack() as stack:
                main, chat, idle_server, space_eos = (
                    _serve(stack, create_app(scheduler, plain, api_key=KEY)),
                    _serve(stack, create_app(scheduler, templated)),
                    _serve(stack, create_app(idle, plain)),
                    _serve(stack, create_app(scheduler, replace(plain, eos_token_ids=(SPACE,)))))
                yield Served(main, chat, idle_server, space_eos, scheduler, refs, prompt_ids)
        finally:
            idle.close(cancel=True, timeout_s=1)
            scheduler.close(cancel=True, timeout_s=10)
            llm.unload()


def raw(server: ThreadServer, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A request without the openai client (for what it would not send)."""
    conn = http.client.HTTPConnection(*server.address, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- the happy paths ---

def test_models_lists_the_checkpoint_by_its_directory_name(served: Served) -> None:
    assert [m.id for m in served.main.client().models.list()] == ["checkpoint"]
    assert [m.id for m in served.chat.client().models.list()] == ["tinylm-chat"]


def test_completion_equals_generate_with_usage(served: Served) -> None:
    ref = served.refs["prompt"]
    client = served.main.client()
    for prompt in (PROMPT, served.prompt_ids):  # text, then token ids
        done = client.completions.create(model="checkpoint", prompt=prompt, max_tokens=24,
                                         temperature=0)
        assert done.choices[0].text == ref.text
        assert done.choices[0].finish_reason == ref.finish_reason == "length"
        assert done.usage is not None
        assert (done.usage.prompt_tokens, done.usage.completion_tokens,
                done.usage.total_tokens) == (len(ref.prompt_ids), 24, len(ref.prompt_ids) + 24)
        assert done.id.startswith("cmpl-") and done.model == "checkpoint"


def test_streamed_completion_equals_generate(served: Served) -> None:
    ref = served.refs["prompt"]
    chunks = list(served.main.client().completions.create(
        model="checkpoint", prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == ref.text and len(pieces) > 5  # it did stream
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert not chunks[-1].choices and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 24


def test_chat_completion_uses_the_plain_template_without_one(served: Served) -> None:
    ref = served.refs["plain"]
    client = served.main.client()
    done = client.chat.completions.create(model="checkpoint", messages=QUESTION,
                                          max_tokens=16, temperature=0)
    assert done.choices[0].message.content == ref.text
    assert done.choices[0].message.role == "assistant"
    assert done.usage is not None and done.usage.prompt_tokens == len(ref.prompt_ids)
    stream = client.chat.completions.create(model="checkpoint", messages=QUESTION,
                                            max_completion_tokens=16, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == ref.finish_reason


def test_chat_completion_uses_the_checkpoints_template(served: Served) -> None:
    ref = served.refs["template"]
    done = served.chat.client("no key needed").chat.completions.create(
        model="tinylm-chat", messages=QUESTION, max_tokens=16, temperature=0)
    assert done.choices[0].message.content == ref.text
    # <bos> and <eos> are one special token each: the rendered text was encoded as
    # transformers encodes a chat (no second BOS), to exactly the reference's ids
    assert done.usage is not None and done.usage.prompt_tokens == len(ref.prompt_ids)
    assert ref.prompt_ids[0] == 256 and served.refs["plain"].text != ref.text


def test_stop_sequences_end_the_text_before_them(served: Served) -> None:
    cut = served.refs["stop"].text
    assert cut.endswith(STOP) or STOP in cut[-len(STOP) - 8:]  # the engine stops on it
    expected = cut[:cut.index(STOP)]
    client = served.main.client()
    done = client.completions.create(model="checkpoint", prompt=PROMPT, max_tokens=24,
                                     temperature=0, stop=[STOP, "never-appears"])
    assert done.choices[0].text == expected and done.choices[0].finish_reason == "stop"
    assert done.usage is not None
    assert done.usage.completion_tokens == len(served.refs["stop"].token_ids)
    chunks = list(client.completions.create(model="checkpoint", prompt=PROMPT, max_tokens=24,
                                            temperature=0, stop=STOP, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert all(STOP[:2] not in c.choices[0].text for c in chunks[-2:])
    assert chunks[-1].choices[0].finish_reason == "stop"
    missed = client.completions.create(model="checkpoint", prompt=PROMPT, max_tokens=24,
                                       temperature=0, stop="zzz")
    assert missed.choices[0].text == served.refs["prompt"].text
    assert missed.choices[0].finish_reason == "length"


def test_the_models_eos_still_stops_when_the_client_gives_stop_sequences(
        served: Served) -> None:
    ref = served.refs["space"]
    client = served.space_eos.client()
    for stop in (None, "zzz"):
        done = client.completions.create(model="checkpoint", prompt=PROMPT, max_tokens=24,
                                         temperature=0, stop=stop)
        assert done.choices[0].text == ref.text and done.choices[0].finish_reason == "stop"


def test_four_concurrent_streams_each_equal_their_own_generation(served: Served) -> None:
    got: dict[str, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(CONCURRENT))

    def stream(prompt: str) -> None:
        try:
            client = served.main.client()
            start.wait(10)
            chunks = client.completions.create(model="checkpoint", prompt=prompt, max_tokens=20,
                                               temperature=0, stream=True)
            got[prompt] = "".join(c.choices[0].text for c in chunks)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=stream, args=(p,)) for p in CONCURRENT]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert got == {p: served.refs[p].text for p in CONCURRENT}


# --- clients that leave ---

def _open_stream(server: ThreadServer, body: dict[str, Any]) -> tuple[
        http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(body),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    return conn, response


def _data(response: http.client.HTTPResponse) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream, as they come."""
    while True:
        line = response.readline()
        if not line:
            return
        if line.startswith(b"data: "):
            yield line[6:].decode().strip()


def test_a_client_that_disconnects_mid_stream_cancels_its_generation(
        served: Served) -> None:
    conn, response = _open_stream(served.main, {
        "model": "checkpoint", "prompt": LONG, "max_tokens": LONG_TOKENS, "temperature": 0,
        "stream": True})
    events = _data(response)
    first = json.loads(next(events))
    for _ in range(3):
        next(events)
    assert conn.sock is not None
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    handle = served.main.app.state.inflight.get(first["id"])
    assert handle is not None
    wait_for(handle.done, 10)
    assert handle.finish_reason == "cancelled"  # stopped before its 200 tokens
    wait_for(lambda: served.scheduler.running == 0 and served.scheduler.queued == 0)
    assert served.main.app.state.inflight.snapshot() == {}
    done = served.main.client().completions.create(model="checkpoint", prompt=PROMPT,
                                                   max_tokens=24, temperature=0)
    assert done.choices[0].text == served.refs["prompt"].text


def test_a_full_queue_answers_429_and_a_queued_client_that_leaves_is_cancelled(
        served: Served) -> None:
    host, port = served.idle.address
    body = json.dumps({"model": "checkpoint", "prompt": PROMPT, "max_tokens": 4}).encode()
    waiting = socket.create_connection((host, port))  # queued: this scheduler never runs
    waiting.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                    b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    inflight = served.idle.app.state.inflight
    wait_for(lambda: len(inflight.snapshot()) == 1)
    (handle,) = inflight.snapshot().values()
    with pytest.raises(openai.RateLimitError) as refused:
        served.idle.client().completions.create(model="checkpoint", prompt=PROMPT, max_tokens=4)
    assert refused.value.status_code == 429 and refused.value.code == "queue_full"
    assert "retry later" in refused.value.message
    waiting.close()
    wait_for(lambda: handle.cancelled and inflight.snapshot() == {}, 5)


# --- errors ---

def test_a_wrong_or_missing_api_key_is_401(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        served.main.client("wrong-key").models.list()
    assert wrong.value.status_code == 401 and wrong.value.code == "invalid_api_key"
    status, body, headers = raw(served.main, "GET", "/v1/models")
    assert status == 401 and headers.get("www-authenticate") == "Bearer"
    assert body["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in body["error"]["message"]


def test_malformed_json_is_400_in_openais_error_shape(served: Served) -> None:
    status, body, _ = raw(served.main, "POST", "/v1/chat/completions", b'{"model": "checkpoint",',
                          {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert status == 400
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in body["error"]["message"]


def test_a_prompt_longer_than_the_context_is_400(served: Served) -> None:
    client = served.main.client()
    with pytest.raises(openai.BadRequestError) as long_ids:
        client.completions.create(model="checkpoint", prompt=[65] * (CONTEXT + 10), max_tokens=4)
    assert long_ids.value.code == "context_length_exceeded"
    assert f"maximum context length is {CONTEXT} tokens" in long_ids.value.message
    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model="checkpoint", prompt=PROMPT, max_tokens=CONTEXT)
    assert too_many.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as long_chat:  # chat: no room left to answer
        client.chat.completions.create(model="checkpoint", messages=[
            {"role": "user", "content": "a" * CONTEXT}])
    assert long_chat.value.code == "context_length_exceeded"
    assert long_chat.value.param == "messages"


def test_an_unknown_model_is_404_and_bad_parameters_are_400(served: Served) -> None:
    client = served.main.client()
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=4)
    assert unknown.value.code == "model_not_found" and "'checkpoint'" in unknown.value.message
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        client.completions.create(model="checkpoint", prompt=PROMPT, max_tokens=4, n=2)
    with pytest.raises(openai.BadRequestError, match="'temperature' must be a number"):
        client.chat.completions.create(model="checkpoint", messages=QUESTION,
                                       temperature=5)


# --- the command ---

def test_serve_refuses_a_batch_size_below_one(tmp_path: Path) -> None:
    out = subprocess.run([*CLI, "serve", str(TINYLM), "--max-batch", "0"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert "--max-batch must be at least 1" in out.stderr


def test_serve_command_drains_its_stream_on_sigterm_then_tears_down(served: Served) -> None:
    proc = subprocess.Popen([*CLI, "serve", str(TINYLM), "--local", "2", "--port", "0",
                             "--max-context", str(CONTEXT), "--api-key", KEY,
                             "--max-batch", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens and the model is deployed
        assert line.startswith("serving checkpoint at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
        agents = psutil.Process(proc.pid).children(recursive=True)
        assert len(agents) >= 2
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/completions", body=json.dumps({
            "model": "checkpoint", "prompt": LONG, "max_tokens": LONG_TOKENS,
            "temperature": 0, "stream": True}),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        response = conn.getresponse()
        events = _data(response)
        before = [next(events)]
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            socket.create_connection((host, int(port)), timeout=5).close()
        after = list(events)  # the stream in flight runs to its end
        conn.close()
        assert after[-1] == "[DONE]" and len(after) > 20
        chunks = [json.loads(d) for d in before + after[:-1]]
        assert "".join(c["choices"][0]["text"] for c in chunks) == served.refs["long"].text
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert proc.wait(30) == 0
        stderr = proc.stderr.read() if proc.stderr else ""
        assert "stopped" in stderr and "Traceback" not in stderr
        assert "incomplete" not in stderr  # the unload reached both agents
        _, alive = psutil.wait_procs(agents, timeout=15)
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
