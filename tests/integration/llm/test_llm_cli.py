"""`edge-runtime generate` as a real command, and the demo's generation step, on the
trained tinylm checkpoint; text compared with the same checkpoint run in one process."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import edge_runtime as er
from edge_runtime.demo import Console, DemoContext, DemoOptions
from edge_runtime.demo.generation import GenerateText, find_checkpoint
from edge_runtime.llm import load_local_engine

ROOT = Path(__file__).parents[3]
TINYLM = ROOT / "examples" / "tinylm" / "checkpoint"
CLI = [sys.executable, "-m", "edge_runtime.cli.main"]
PROMPT = "Permission is hereby granted"


def one_process(tmp: Path, prompt: str, n: int) -> str:
    engine, runner = load_local_engine(TINYLM, cache_dir=tmp, max_context=128)
    try:
        return engine.generate(prompt, n).text
    finally:
        runner.close()


def test_generate_streams_text_and_prints_the_summary(tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "generate", str(TINYLM), "--local", "2", "--prompt", PROMPT,
         "--max-new-tokens", "16", "--max-context", "128"],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == PROMPT + one_process(tmp_path, PROMPT, 16)
    assert re.fullmatch(
        r"16 tokens: time to first token \d+ ms, [\d.]+ ms/token, [\d.]+ tokens/s; "
        r"peak RSS agent0 \d+ MiB, agent1 \d+ MiB", lines[-1]), lines[-1]
    assert "tensor-parallel over 2 agent(s)" in out.stderr


def test_generate_reports_bad_input_without_a_traceback(tmp_path: Path) -> None:
    out = subprocess.run([*CLI, "generate", str(tmp_path / "absent"), "--prompt", "x"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert "error: no checkpoint directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_demo_generation_step(cluster: er.LocalCluster, tmp_path: Path) -> None:
    assert find_checkpoint() == TINYLM.resolve()
    stream = io.StringIO()
    ctx = DemoContext(console=Console(stream), options=DemoOptions(), cluster=cluster)
    with ctx.exit_stack:
        GenerateText().run(ctx)
    report = ctx.results["generation"]
    assert report["text"] == one_process(tmp_path, PROMPT, report["tokens"])
    text = stream.getvalue()
    assert PROMPT + report["text"].replace("\n", " ") in text
    assert "identical to the same checkpoint run in one process" in text
    assert ctx.summary[-1][0] == "text generation"
    assert all(st["deployments"] == {} for st in cluster.status().values())  # unloaded




def test_generate_with_4bit_weights() -> None:
    """`--quantize q4` reaches the agents (they report 4-bit shares) and still writes text;
    a budget that cannot hold the 4-bit share is refused with a one-line error."""
    out = subprocess.run(
        [*CLI, "generate", str(TINYLM), "--local", "2", "--prompt", PROMPT, "--quantize", "q4",
         "--max-new-tokens", "16", "--max-context", "128"],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "tensor-parallel over 2 agent(s), 4-bit weights" in out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(PROMPT) and len(lines[0]) > len(PROMPT)
    assert lines[-1].startswith("16 tokens: time to first token")
    out = subprocess.run(
        [*CLI, "generate", str(TINYLM), "--prompt", PROMPT, "--quantize", "q4",
         "--memory-budget", "33MB", "--max-context", "128"],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 1
    assert "can neither load its 4-bit share resident" in out.stderr
    assert "Traceback" not in out.stderr
