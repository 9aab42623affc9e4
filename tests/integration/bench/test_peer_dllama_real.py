"""The real distributed-llama beside `bench llm`: converter, workers, root, parse, stop.

Runs only where a built `dllama` exists (EDGE_RUNTIME_DLLAMA_DIR, or the checkout's
.devrun/dllama/src after `make dllama`), with its tokenizer and prompt for the reference
vocabulary (EDGE_RUNTIME_DLLAMA_PEERS, default ../shared/peers) and torch for its
converter; CI has none of these, so it skips there saying which is missing. The
checkpoint is tiny (hidden 128, 2 layers) but keeps the 32000-token vocabulary the
tokenizer is for.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from edge_runtime.bench import peer_dllama
from edge_runtime.bench.peer_dllama_cmd import PeerVariant, root_command, worker_command
from edge_runtime.bench.peer_dllama_output import PeerRunError
from edge_runtime.bench.peer_dllama_procs import free_ports, listening_ports, run_root, workers
from edge_runtime.llm.synthetic import SyntheticShape, write_synthetic_checkpoint

REPO = Path(__file__).resolve().parents[3]
SOURCE = Path(os.environ.get("EDGE_RUNTIME_DLLAMA_DIR", REPO / ".devrun/dllama/src"))
PEERS = Path(os.environ.get("EDGE_RUNTIME_DLLAMA_PEERS", REPO.parent / "shared/peers"))
TOKENIZER, PROMPT = PEERS / "dllama_tokenizer_synth.t", PEERS / "prompt16.txt"
TINY = SyntheticShape(hidden=128, intermediate=256, layers=2, heads=4, kv_heads=4, vocab=32000)

missing = [why for why, ok in (
    (f"no built dllama in {SOURCE} (make dllama there)", (SOURCE / "dllama").is_file()),
    (f"no dllama tokenizer/prompt in {PEERS}", TOKENIZER.is_file() and PROMPT.is_file()),
    ("no torch for dllama's converter", importlib.util.find_spec("torch") is not None),
    ("no /proc/net/tcp", Path("/proc/net/tcp").is_file()),
) if not ok]
pytestmark = [pytest.mark.skipif(bool(missing), reason="; ".join(missing)), pytest.mark.slow]


def _dllama_pids() -> set[int]:
    """Processes running this checkout's dllama binary."""
    out = set()
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and str(SOURCE / "dllama").encode() in argv:
            out.add(int(proc.name))
    return out


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    peer_dllama.add_arguments(parser)
    args = parser.parse_args(["--peer-dllama", str(SOURCE), "--peer-tokenizer", str(TOKENIZER),
                              "--peer-prompt", str(PROMPT), "--peer-python", sys.executable])
    args.pin, args.threads, args.prompt_tokens, args.new_tokens, args.repeats = \
        True, 1, 16, 20, 1
    return args


def test_one_round_at_one_and_two_nodes_fp32_and_q4(tmp_path: Path) -> None:
    ckpt = write_synthetic_checkpoint(tmp_path / "synthetic-tiny", TINY)
    before = _dllama_pids()
    peer = peer_dllama.prepare(_args(), ckpt, [1, 2, 3], [None, "q4"])
    assert peer is not None
    assert peer.notes == ["distributed-llama skipped at 3 nodes: it needs a power of two"]
    assert sorted(p.name for p in peer.models.values()) == [
        "dllama_model_synthetic-tiny_f32.m", "dllama_model_synthetic-tiny_q40.m"]
    peer.run_round(0)
    assert peer.failures == {}
    for runs in peer.runs.values():
        (run,) = runs
        assert (run.eval_tokens, run.pred_tokens, len(run.token_ms())) == (16, 20, 20)
        assert len(run.wall_intervals_ms()) == 19 and min(run.wall_intervals_ms()) > 0
    two = peer.runs["distributed-llama 2 node(s) q40"][0]
    assert two.recv_kb_per_token > 0  # a worker really took part
    assert _dllama_pids() == before  # every worker stopped
    out = peer.report({"2 agent(s) resident q4": {"agents": 2, "streamed": False,
                                                  "weights": "q4", "ms_per_token": 10.0}})
    assert set(out["variants"]) == {v.name for v in peer.variants}
    assert "2 agent(s) resident q4" in out["variants"]["distributed-llama 2 node(s) q40"]["ours"]
    stamp = {p: p.stat().st_mtime_ns for p in peer.models.values()}
    again = peer_dllama.prepare(_args(), ckpt, [2], [None, "q4"])
    assert again is not None and {p: p.stat().st_mtime_ns for p in again.models.values()} == stamp


def test_workers_listen_then_stop_and_a_broken_root_says_why(tmp_path: Path) -> None:
    ports = free_ports(1)
    command = worker_command(SOURCE / "dllama", ports[0], 1, None)
    with workers([command], ports, tmp_path / "logs") as procs:
        assert ports[0] in listening_ports() and procs[0].poll() is None
        root = root_command(SOURCE / "dllama", tmp_path / "absent.m", TOKENIZER,
                            PeerVariant(2, "f32", "f32"), "hi", 36, ports, 1, None)
        with pytest.raises(PeerRunError, match="Cannot open model file"):
            run_root(root, tmp_path / "root.log", 60)
    assert procs[0].returncode is not None and ports[0] not in listening_ports()
