"""A .gguf file deployed on REAL agents: `deploy_llm`, and `edge-runtime generate`.

Two agent processes of the shared local cluster; the GGUF is converted once on the app
side and the converted files are sent to the agents (`send_checkpoint=True`), which
verify them by digest as for any checkpoint. fp32 logits within 1e-3 of transformers
loading the same file, and the greedy continuation of a text prompt identical to its
`generate(do_sample=False)`. A file the engine cannot run is refused before any agent
loads anything.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
import support.gguf_files as gf
from edge_runtime.errors import CheckpointError
from edge_runtime.llm import load_local_engine
from edge_runtime.llm.gguf import convert_gguf

PROMPT = "Hello world, the cat"
NEW_TOKENS = 12
CLI = [sys.executable, "-m", "edge_runtime.cli.main"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf_agents")


@pytest.mark.parametrize(("arch", "qtype"), [("qwen2", "Q4_K"), ("llama", "Q6_K")])
def test_gguf_over_two_agents_matches_transformers(
        arch: str, qtype: str, files: Path, cluster: er.LocalCluster) -> None:
    path = gf.write_gguf(files / f"{arch}-{qtype}.gguf", arch, qtype)
    names = [a.name for a in cluster.agents][:2]
    llm = cluster.deploy_llm(path, devices=names, max_context=48, send_checkpoint=True)
    try:
        assert llm.agents == tuple(names)
        assert llm.checkpoint.name == f"{arch}-{qtype}"
        ids = gf.transformers_tokenizer(path).encode(PROMPT)
        ref = gf.transformers_logits(path, ids)
        assert np.abs(llm.logits(ids) - ref).max() <= 1e-3
        gen = llm.generate(PROMPT, NEW_TOKENS)
        expected = gf.transformers_greedy(path, ids, NEW_TOKENS)
        assert list(gen.token_ids) == expected and len(expected) >= 6
        text = gf.transformers_tokenizer(path).decode(expected, skip_special_tokens=True)
        assert gen.text == text.rstrip("\ufffd")  # a trailing partial character is held back
    finally:
        llm.unload()


def test_unsupported_gguf_is_refused_before_any_agent_loads(
        files: Path, cluster: er.LocalCluster) -> None:
    path = gf.write_gguf(files / "iq.gguf", "llama", "Q8_0",
                         types={"blk.0.attn_v.weight": "IQ4_NL"})
    before = {name: st["deployments"] for name, st in cluster.status().items()}
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="IQ4_NL"):
        cluster.deploy_llm(path, max_context=48)
    assert time.monotonic() - start < 10
    assert {name: st["deployments"] for name, st in cluster.status().items()} == before


def test_cli_generate_takes_a_gguf_file(files: Path, tmp_path: Path) -> None:
    path = gf.write_gguf(files / "llama-Q4_0.gguf", "llama", "Q4_0")
    out = subprocess.run(
        [*CLI, "generate", str(path), "--local", "2", "--prompt", PROMPT,
         "--max-new-tokens", "10", "--max-context", "48"],
        capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    engine, runner = load_local_engine(convert_gguf(path), cache_dir=tmp_path, max_context=48)
    try:
        expected = engine.generate(PROMPT, 10).text
    finally:
        runner.close()
    assert out.stdout.splitlines()[0] == PROMPT + expected
    assert "llama-Q4_0 tensor-parallel over 2 agent(s)" in out.stderr
