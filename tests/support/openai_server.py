"""A real OpenAI-compatible server for tests: `transformers serve` on a local checkpoint.

Why this server: it is Hugging Face's own, so what it streams can be checked against
`transformers`' greedy decode of the same checkpoint, and it needs nothing but the
`transformers[serving]` extra (fastapi, uvicorn, openai, accelerate). It runs on the
CPU, offline, on 127.0.0.1 with a port the kernel picks (read back from uvicorn's log,
so two runs never race for a port), pinned to the one checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# Imports of torch, transformers and fastapi plus the model load, on a busy 2-core machine.
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
_LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")
SERVE = [sys.executable, "-c", "from transformers.cli.transformers import main; main()"]

# A minimal chat template: `transformers serve` needs one for /v1/chat/completions, and
# the byte-level tinylm checkpoint ships none.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def serving_missing() -> str | None:
    """Why `transformers serve` cannot run in this environment, or None if it can."""
    missing = []
    for module in ("fastapi", "uvicorn", "openai", "accelerate"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        return (f"`transformers serve` needs {', '.join(missing)}: install the test extras "
                "(transformers[serving])")
    return None


def with_chat_template(checkpoint: Path, directory: Path) -> Path:
    """A copy of `checkpoint` in `directory` (links to its files) with `CHAT_TEMPLATE`."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in checkpoint.iterdir():
        target = directory / path.name
        if path.is_file() and not target.exists():
            target.symlink_to(path.resolve())
    (directory / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return directory


@contextlib.contextmanager
def transformers_serve(checkpoint: Path, log_path: Path) -> Iterator[str]:
    """`transformers serve CHECKPOINT` on a free loopback port; yields its base URL
    (`http://127.0.0.1:PORT/v1`). The model name to request is `str(checkpoint)`."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*SERVE, "serve", str(checkpoint), "--host", "127.0.0.1", "--port", "0",
             "--device", "cpu", "--dtype", "float32", "--log-level", "info"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            base_url = _wait_ready(process, log_path)
            yield base_url
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_ready(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {process.returncode}:\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"transformers serve did not start in {START_TIMEOUT_S:.0f} s:\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}")
        found = _LISTENING.search(log_path.read_bytes())
        if found:
            base = f"http://127.0.0.1:{int(found.group(1))}"
            with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:
                if json.loads(answer.read()).get("status") == "ok":
                    return f"{base}/v1"
        time.sleep(0.1)


__all__ = ["CHAT_TEMPLATE", "serving_missing", "transformers_serve", "with_chat_template"]
