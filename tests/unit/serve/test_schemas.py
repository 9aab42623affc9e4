"""Request parsing (what a bad parameter's 400 says), stop-sequence trimming, and the
answers' JSON layout, checked against the `openai` package's own response types."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from edge_runtime.errors import (
    AgentUnavailableError,
    ClusterUnavailableError,
    ConfigError,
    GenerationError,
    QueueFullError,
)
from edge_runtime.serve import schemas as s
from edge_runtime.serve.app import api_error

BASE: dict[str, Any] = {"model": "m", "prompt": "hello"}
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def refusal(body: dict[str, Any], chat: bool = False) -> s.ApiError:
    with pytest.raises(s.ApiError) as caught:
        (s.parse_chat if chat else s.parse_completion)(body)
    assert caught.value.status == 400
    return caught.value


def test_a_minimal_completion_gets_openai_defaults() -> None:
    req = s.parse_completion(BASE)
    assert req == s.CompletionRequest("m", "hello", s.Sampling())
    assert req.sampling.temperature == 1.0 and req.sampling.top_p == 1.0
    assert req.sampling.max_tokens is None and not req.sampling.stream


@pytest.mark.parametrize(("prompt", "parsed"), [
    ("text", "text"), ([1, 2, 3], (1, 2, 3)), (["text"], "text"), ([[4, 5]], (4, 5))])
def test_prompt_forms(prompt: object, parsed: object) -> None:
    assert s.parse_completion({**BASE, "prompt": prompt}).prompt == parsed


@pytest.mark.parametrize(("prompt", "says"), [
    (["a", "b"], "holds 2 prompts; this server takes one per request"),
    ([[1], [2]], "holds 2 prompts"),
    ("", "'prompt' is empty"),
    ([], "non-empty list of token ids"),
    ([1, True], "non-empty list of token ids"),
    ({"text": "a"}, "non-empty string or a non-empty list of token ids"),
])
def test_bad_prompts(prompt: object, says: str) -> None:
    error = refusal({**BASE, "prompt": prompt})
    assert says in error.message and error.param == "prompt"


@pytest.mark.parametrize(("field", "value", "says"), [
    ("model", None, "'model' is required and must be a non-empty string"),
    ("temperature", 3, "'temperature' must be a number in [0, 2], got 3"),
    ("temperature", "hot", "'temperature' must be a number in [0, 2], got 'hot'"),
    ("temperature", True, "'temperature' must be a number"),
    ("top_p", 0, "'top_p' must be in (0, 1]; for greedy decoding set 'temperature' to 0"),
    ("top_p", 1.5, "'top_p' must be a number in (0, 1], got 1.5"),
    ("max_tokens", 0, "'max_tokens' must be an integer >= 1, got 0"),
    ("max_tokens", 2.5, "'max_tokens' must be an integer >= 1, got 2.5"),
    ("seed", -1, "'seed' must be an integer >= 0, got -1"),
    ("top_k", -2, "'top_k' must be an integer >= -1, got -2"),
    ("n", 2, "'n' must be 1: this server returns one choice per request, got 2"),
    ("stop", ["a", "b", "c", "d", "e"], "list of at most 4 non-empty strings"),
    ("stop", "", "'stop' must be a non-empty string"),
    ("stop", [1], "'stop' must be a non-empty string"),
    ("stream", "yes", "'stream' must be true or false, got 'yes'"),
    ("stream_options", {"include_usage": True}, "only allowed when 'stream' is true"),
    ("logprobs", 3, "'logprobs' is not supported by this server; leave it out"),
    ("echo", True, "'echo' is not supported"),
    ("best_of", 2, "'best_of' is not supported"),
    ("presence_penalty", 0.5, "'presence_penalty' is not supported"),
    ("logit_bias", {"5": 1}, "'logit_bias' is not supported"),
    ("response_format", {"type": "json_object"}, "'response_format' other than"),
])
def test_bad_parameters_are_named(field: str, value: object, says: str) -> None:
    error = refusal({**BASE, field: value})
    assert says in error.message
    assert error.param == field
    assert error.body() == {"error": {"message": error.message, "type": "invalid_request_error",
                                      "param": field, "code": None}}


def test_neutral_values_of_unsupported_fields_pass() -> None:
    body = {**BASE, "n": 1, "logprobs": None, "echo": False, "best_of": 1, "suffix": None,
            "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
            "response_format": {"type": "text"}, "top_k": -1, "unknown_field": 7}
    assert s.parse_completion(body).sampling.top_k == 0


def test_sampling_fields_are_read() -> None:
    req = s.parse_completion({**BASE, "max_tokens": 7, "temperature": 0, "top_p": 0.5,
                              "top_k": 3, "seed": 11, "stop": "\n", "stream": True,
                              "stream_options": {"include_usage": True}})
    assert req.sampling == s.Sampling(7, 0.0, 0.5, 3, 11, ("\n",), True, True)
    assert s.parse_completion({**BASE, "stop": ["a", "a", "b"]}).sampling.stop == ("a", "b")


def test_chat_messages() -> None:
    req = s.parse_chat({**CHAT, "max_tokens": 9, "max_completion_tokens": 5, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "text", "text": "b"}], "name": "ann"},
        {"role": "assistant", "content": None}]})
    assert req.sampling.max_tokens == 5  # max_completion_tokens wins, as in OpenAI's API
    assert [m.template_input() for m in req.messages] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb", "name": "ann"},
        {"role": "assistant"}]


@pytest.mark.parametrize(("messages", "says"), [
    (None, "'messages' is required and must be a non-empty list"),
    ([], "'messages' is required"),
    (["hi"], "messages[0] must be an object with 'role' and 'content'"),
    ([{"role": "robot", "content": "x"}], "messages[0].role must be one of system, developer"),
    ([{"role": "user"}], "messages[0].content is required for role 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[1].content: only text parts are supported, got 'image_url'"),
    ([{"role": "user", "content": 5}], "must be a string, a list of text parts or null"),
])
def test_bad_messages(messages: object, says: str) -> None:
    error = refusal({**CHAT, "messages": messages}, chat=True)
    assert says in error.message and error.param == "messages"


def test_malformed_bodies() -> None:
    with pytest.raises(s.ApiError, match="not valid JSON") as caught:
        s.parse_body(b'{"model": ')
    assert caught.value.status == 400
    with pytest.raises(s.ApiError, match="must be a JSON object, got list"):
        s.parse_body(b"[1, 2]")
    assert s.parse_body(b'{"a": 1}') == {"a": 1}


def test_stop_text_cuts_before_the_stop_and_never_shows_part_of_one() -> None:
    stop = s.StopText(("END", "\n\n"))
    shown = [stop.push(p) for p in ["Hello E", "N", "ough. Then E", "ND more"]]
    assert shown == ["Hello ", "", "ENough. Then ", ""]
    assert stop.stopped and stop.flush() == "" and stop.push("x") == ""
    stop = s.StopText(("abc",))
    assert [stop.push(p) for p in ["xa", "b"]] == ["x", ""]
    assert not stop.stopped and stop.flush() == "ab"  # the generation ended on a partial
    stop = s.StopText(("b", "ab"))
    assert stop.push("xxab") == "xx"  # the earliest stop sequence cuts
    assert s.StopText(()).push("anything") == "anything"


def test_answers_parse_as_the_openai_package_types() -> None:
    counts = s.usage(5, 3)
    assert counts == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    done = Completion.model_validate(s.completion_body("cmpl-1", 1, "m", "hi", "stop", counts))
    assert done.choices[0].text == "hi" and done.usage is not None and done.usage.total_tokens == 8
    # a streamed piece has finish_reason null, which the type (made for whole answers)
    # does not allow; the client builds chunks without validating them
    chunk = s.completion_chunk("cmpl-1", 1, "m", "h", None)
    assert set(chunk) <= set(Completion.model_fields)
    assert chunk["choices"][0] == {"index": 0, "text": "h", "logprobs": None,
                                   "finish_reason": None}
    chat = ChatCompletion.model_validate(s.chat_body("c-1", 1, "m", "yo", "length", counts))
    assert chat.choices[0].message.content == "yo" and chat.choices[0].finish_reason == "length"
    first = ChatCompletionChunk.model_validate(
        s.chat_chunk("c-1", 1, "m", {"role": "assistant", "content": ""}, None))
    assert first.choices[0].delta.role == "assistant"
    last = s.chat_chunk("c-1", 1, "m", {}, "stop")
    tail = ChatCompletionChunk.model_validate(s.usage_chunk(last, counts))
    assert tail.choices == [] and tail.usage is not None and tail.usage.completion_tokens == 3
    listed = s.models_body("tinylm", 7)
    assert [Model.model_validate(m).id for m in listed["data"]] == ["tinylm"]
    assert s.sse({"a": "é"}) == 'data: {"a": "é"}\n\n'.encode()
    assert s.sse("[DONE]") == b"data: [DONE]\n\n"


@pytest.mark.parametrize(("error", "status", "code"), [
    (QueueFullError("full"), 429, "queue_full"),
    (ClusterUnavailableError("all down"), 503, "cluster_unavailable"),
    (AgentUnavailableError("agent0 gone"), 503, "cluster_unavailable"),
    (GenerationError("prompt too long"), 400, None),
    (ConfigError("the scheduler is shutting down"), 503, "shutting_down"),
    (s.ApiError(404, "no such model", code="model_not_found"), 404, "model_not_found"),
    (RuntimeError("boom"), 500, None),
])
def test_errors_map_to_openai_statuses(error: Exception, status: int, code: str | None) -> None:
    answer = api_error(error)
    assert (answer.status, answer.code) == (status, code)
    if isinstance(error, RuntimeError):  # internals are not shown to clients
        assert "boom" not in answer.message
    else:
        assert answer.message == str(error)
