"""`edge-runtime serve`: an OpenAI-compatible HTTP API over an LLM deployment.

`create_app(scheduler, ServedModel.of(llm))` is the Starlette app (`app`); `schemas`
parses requests and builds answers; `chat` lays out chat messages with the
checkpoint's template; `server` runs it on uvicorn and shuts down in order on SIGTERM.
"""

from edge_runtime.serve.app import create_app
from edge_runtime.serve.chat import PLAIN_TEMPLATE, ChatTemplate, load_chat_template
from edge_runtime.serve.served import Inflight, ServedModel
from edge_runtime.serve.server import bind, serve, serve_deployment, url_of

__all__ = ["PLAIN_TEMPLATE", "ChatTemplate", "Inflight", "ServedModel", "bind",
           "create_app", "load_chat_template", "serve", "serve_deployment", "url_of"]
