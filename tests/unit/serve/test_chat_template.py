"""Chat templates render exactly as transformers' `apply_chat_template` renders them.

Each template is written into the tokenizer_config.json of a temporary checkpoint
directory (with the tinylm tokenizer.json beside it); the reference is
`AutoTokenizer.from_pretrained(dir).apply_chat_template(messages, tokenize=False,
add_generation_prompt=True)` — the library the templates are written for — and ours
is `load_chat_template(dir).render(messages)`.
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.errors import CheckpointError, GenerationError
from edge_runtime.serve.chat import PLAIN_TEMPLATE, load_chat_template

TINYLM = Path(__file__).parents[3] / "examples" / "tinylm" / "checkpoint"

# Qwen2's ChatML layout, with its default system turn.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# Mistral/Llama-2's [INST] layout: bos/eos tokens, and raise_exception on roles.
INST = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}")

# Zephyr's multi-line layout, indented: depends on trim_blocks and lstrip_blocks.
ZEPHYR = """{% for message in messages %}
    {% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
    {% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
    {% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
    {% endif %}
    {% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
    {% endif %}
{% endfor %}"""

# namespace, loop controls, tojson without HTML escaping, a {% generation %} block.
TOOLS_STYLE = """{%- set ns = namespace(system='') -%}
{%- for m in messages -%}
    {%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] -%}
        {%- continue -%}{%- endif -%}
    {%- if m['role'] == 'assistant' -%}{% generation %}<a>{{ m['content'] }}</a>{% endgeneration %}
    {%- else -%}<u>{{ m['content'] | tojson }}</u>{%- endif -%}
    {%- if loop.index > 6 -%}{%- break -%}{%- endif -%}
{%- endfor -%}
{%- if ns.system -%}<s>{{ ns.system }}</s>{%- endif -%}
{%- if add_generation_prompt -%}<a>{%- endif -%}"""

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And <b>\"3+3\"</b> & 'more'?"}],
]
SYSTEM = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]


def checkpoint_dir(root: Path, template: Any, *, jinja_file: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINYLM / "tokenizer.json", root / "tokenizer.json")
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                              "bos_token": "<bos>",
                              "eos_token": {"content": "<eos>", "special": True,
                                            "__type": "AddedToken"},
                              "pad_token": "<pad>"}
    if template is not None:
        config["chat_template"] = template
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    if jinja_file is not None:
        (root / "chat_template.jinja").write_text(jinja_file)
    return root


@cache
def _auto_tokenizer(directory: str) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(directory)


def hf_render(directory: Path, messages: list[dict[str, Any]]) -> str:
    text = _auto_tokenizer(str(directory)).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize("name", ["CHATML", "INST", "ZEPHYR", "TOOLS_STYLE"])
def test_templates_render_as_transformers_does(tmp_path: Path, name: str) -> None:
    directory = checkpoint_dir(tmp_path / name, globals()[name])
    template = load_chat_template(directory)
    assert template.origin.endswith("tokenizer_config.json")
    conversations = [*CONVERSATIONS] if name == "INST" else [*CONVERSATIONS, SYSTEM]
    for messages in conversations:
        ours = template.render(messages)
        assert ours == hf_render(directory, messages)
    if name == "INST":  # bos and eos reached the template
        assert template.render(CONVERSATIONS[1]).startswith("<bos>[INST] What")
        assert "4<eos>" in template.render(CONVERSATIONS[1])


def test_raise_exception_is_a_generation_error_as_it_is_an_error_in_transformers(
        tmp_path: Path) -> None:
    directory = checkpoint_dir(tmp_path, INST)
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(GenerationError, match="roles must alternate"):
        load_chat_template(directory).render(bad)
    jinja2 = pytest.importorskip("jinja2")
    with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
        hf_render(directory, bad)


def test_chat_template_jinja_file_wins_and_named_lists_use_default(tmp_path: Path) -> None:
    directory = checkpoint_dir(tmp_path / "file", CHATML, jinja_file=ZEPHYR)
    template = load_chat_template(directory)
    assert template.origin.endswith("chat_template.jinja")
    assert template.render(SYSTEM) == hf_render(directory, SYSTEM)
    assert template.render(SYSTEM).startswith("<|system|>")

    named = [{"name": "tool_use", "template": INST}, {"name": "default", "template": CHATML}]
    directory = checkpoint_dir(tmp_path / "named", named)
    assert load_chat_template(directory).render(SYSTEM) == hf_render(directory, SYSTEM)

    checkpoint_dir(tmp_path / "nodefault", [{"name": "tool_use", "template": INST}])
    with pytest.raises(CheckpointError, match="none named 'default'"):
        load_chat_template(tmp_path / "nodefault")


def test_no_template_falls_back_to_the_documented_plain_layout(tmp_path: Path) -> None:
    template = load_chat_template(TINYLM)  # the committed tinylm ships no template
    assert template.is_plain and template.source == PLAIN_TEMPLATE
    assert template.render(SYSTEM) == (
        "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Bye\nAssistant:")
    assert template.render(SYSTEM, add_generation_prompt=False).endswith("User: Bye\n")


def test_a_template_that_does_not_parse_or_escapes_the_sandbox_is_refused(
        tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not parse"):
        load_chat_template(checkpoint_dir(tmp_path / "syntax", "{% for m in messages %}"))
    escape = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(GenerationError, match="could not render"):
        load_chat_template(checkpoint_dir(tmp_path / "escape", escape)).render(SYSTEM)
    sneaky = "{% set ns = namespace() %}{% set ns._x = 1 %}{{ ns._x }}"
    with pytest.raises(GenerationError, match="cannot store '_x'"):
        load_chat_template(checkpoint_dir(tmp_path / "ns", sneaky)).render(SYSTEM)
