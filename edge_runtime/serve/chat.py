"""Chat messages to prompt text through the checkpoint's own chat template.

Why the checkpoint's template: a chat model answers well only when its conversation
is laid out exactly as in its training (role markers, BOS/EOS, the assistant header
it continues from). Hugging Face ships that layout as a Jinja template
(`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`) and renders it
in a sandbox; this module renders it the same way — `ImmutableSandboxedEnvironment`
with `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a
`{% generation %}` tag, `raise_exception`, `strftime_now`, a `tojson` that does not
escape HTML, the special tokens (`bos_token`, `eos_token`, ...) as variables and
`add_generation_prompt` — so the text equals transformers'
`apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`.

A checkpoint without a template gets `PLAIN_TEMPLATE`: one ``Role: content`` line per
message, then ``Assistant:`` for the model to continue; e.g.

    System: Be brief.
    User: Hi
    Assistant:

Templates come from checkpoint files, which may come from anywhere: the sandbox keeps
them from reaching Python internals, and a template that fails on a request's
messages (its `raise_exception`, say, for roles that do not alternate) is a
`GenerationError` for that request, not a server fault.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edge_runtime.errors import CheckpointError, GenerationError

log = logging.getLogger(__name__)

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""The documented layout for checkpoints that ship no chat template."""

# The named special tokens transformers passes to every template (its
# `SPECIAL_TOKENS_ATTRIBUTES`), read from tokenizer_config.json.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers marks the assistant's
    tokens with it (for training masks); for rendering it is its body."""

    tags = {"generation"}  # noqa: RUF012 -- jinja2.ext.Extension declares it so

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` in a template, and nothing else of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore-prefixed names (a way towards internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature trick: `self` may be a key
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"a chat template cannot store {name!r} on a namespace: rename it")


def _environment() -> ImmutableSandboxedEnvironment:
    """The environment transformers renders chat templates in (same options, globals
    and filters), so a template renders here as it does there."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _Namespace
    return env


class ChatTemplate:
    """A compiled chat template and the special tokens it is rendered with."""

    def __init__(self, source: str, *, origin: str = "given",
                 special_tokens: Mapping[str, str] | None = None) -> None:
        self.source = source
        self.origin = origin  # where it came from, for the startup line and errors
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise CheckpointError(f"the chat template in {origin} does not parse: {error} "
                                  f"(line {error.lineno}); fix or remove it") from None

    @property
    def is_plain(self) -> bool:
        return self.source == PLAIN_TEMPLATE

    def render(self, messages: Sequence[Mapping[str, Any]], *,
               add_generation_prompt: bool = True) -> str:
        """The prompt text of `messages` (dicts with `role` and `content`; keys whose
        value is None are dropped, as transformers does)."""
        plain = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return self._template.render(messages=plain, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except Exception as error:  # the template is the checkpoint's code, run on the input
            raise GenerationError(f"the chat template ({self.origin}) could not render "
                                  f"these messages: {error}") from None


def _token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _config_template(config: Mapping[str, Any], path: Path) -> str | None:
    """`chat_template` of tokenizer_config.json: a string, or a list of named templates
    (the one named "default" is used, as transformers does without tools)."""
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        if isinstance(chosen, str):
            return chosen
        raise CheckpointError(f"{path} lists chat templates {sorted(map(str, named))} but "
                              "none named 'default'; name one 'default'")
    raise CheckpointError(f"{path}: chat_template is a {type(value).__name__}, expected a "
                          "string or a list of {name, template}")


def load_chat_template(checkpoint: str | Path) -> ChatTemplate:
    """The checkpoint's chat template: `chat_template.jinja` first (transformers gives
    it priority), then `tokenizer_config.json`'s `chat_template`, else `PLAIN_TEMPLATE`.
    The special tokens come from tokenizer_config.json either way."""
    directory = Path(checkpoint)
    config_path = directory / "tokenizer_config.json"
    config: dict[str, Any] = {}
    if config_path.is_file():
        try:
            loaded = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{config_path} is not readable JSON: {error}") from None
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{config_path} is not a JSON object")
        config = loaded
    tokens = {name: text for name in SPECIAL_TOKEN_NAMES
              if (text := _token_text(config.get(name))) is not None}
    jinja_path = directory / "chat_template.jinja"
    if jinja_path.is_file():
        return ChatTemplate(jinja_path.read_text(encoding="utf-8"), origin=str(jinja_path),
                            special_tokens=tokens)
    source = _config_template(config, config_path)
    if source is not None:
        return ChatTemplate(source, origin=str(config_path), special_tokens=tokens)
    log.info("%s has no chat template: using the plain Role: content layout", directory)
    return ChatTemplate(PLAIN_TEMPLATE, origin="the plain fallback template",
                        special_tokens=tokens)


__all__ = ["PLAIN_TEMPLATE", "ChatTemplate", "load_chat_template"]
