"""Demo step part: the deployment answers one request through the OpenAI-compatible API.

The same deployment the text step used is put behind a `GenerationScheduler` and the
`edge-runtime serve` app, served from a thread on a free loopback port for exactly one
HTTP request (plain urllib, as any client would), then everything is stopped: nothing
is left running. The answer must equal the text the SDK produced.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from edge_runtime.sdk.scheduler import GenerationScheduler
from edge_runtime.serve import ServedModel, create_app
from edge_runtime.serve.server import background

REQUEST_S = 60.0


def one_http_completion(llm: Any, prompt: str, max_tokens: int) -> tuple[str, str]:
    """(the endpoint's URL, the text it answered) for one greedy completion."""
    model = ServedModel.of(llm)  # before the scheduler's thread owns the deployment
    scheduler = GenerationScheduler(llm).start()
    try:
        with background(create_app(scheduler, model)) as url:
            body = json.dumps({"model": model.name, "prompt": prompt,
                               "max_tokens": max_tokens, "temperature": 0}).encode()
            request = urllib.request.Request(f"{url}/v1/completions", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=REQUEST_S) as reply:
                answer = json.loads(reply.read())
    finally:
        scheduler.close(cancel=True)
    return f"{url}/v1/completions", str(answer["choices"][0]["text"])


__all__ = ["one_http_completion"]
