"""distributed-llama beside `bench llm`: reading its output, its node rule, its command lines.

The parsed outputs are real: captured from `dllama inference` (distributed-llama
8d624a7) on a tiny vocab-32000 checkpoint, 2 nodes f32, and from a root given a missing
model. The run of the real binary is in tests/integration/bench/test_peer_dllama_real.py.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import pytest

from edge_runtime.bench import peer_dllama
from edge_runtime.bench.peer_dllama_cmd import (
    PeerVariant,
    convert_command,
    is_power_of_two,
    model_file_name,
    node_cpus,
    peer_types,
    peer_variants,
    root_command,
    worker_command,
)
from edge_runtime.bench.peer_dllama_output import (
    PeerRunError,
    is_pred_line,
    parse_inference_output,
    tokenizer_vocab_size,
)
from edge_runtime.bench.pinning import agent_cores
from edge_runtime.errors import ConfigError

DATA = Path(__file__).parent / "data"
TWO_NODES = (DATA / "dllama_inference_2nodes_f32.txt").read_text()
# Pred + Sync per token in that file, read off its 20 Pred lines
TOKENS = [26, 4, 27, 36, 53, 28, 5, 12, 28, 22, 49, 3, 49, 70, 27, 0, 16, 8, 11, 59]


def test_parses_every_token_line_and_the_summary() -> None:
    run = parse_inference_output(TWO_NODES)
    assert run.token_ms() == TOKENS
    assert run.pred_ms[:4] == (0, 0, 0, 3) and run.sync_ms[:4] == (26, 4, 27, 33)
    assert run.eval_ms == (2 + 35,) and run.prefill_ms() == 37
    assert (run.eval_tokens, run.pred_tokens, run.mean_pred_ms) == (16, 20, 27.62)
    assert (run.sent_kb_per_token, run.recv_kb_per_token) == (2, 64)
    # the median after the first token: 19 values, the 10th smallest
    assert run.median_ms() == sorted(TOKENS[1:])[9] == 27.0
    assert run.arrivals == () and run.wall_intervals_ms() == []


def test_wall_intervals_come_from_arrival_times() -> None:
    arrivals = tuple(1.0 + 0.010 * i + (0.005 if i == 7 else 0.0) for i in range(20))
    run = parse_inference_output(TWO_NODES, arrivals)
    wall = run.wall_intervals_ms()
    assert len(wall) == 19 and wall[6] == pytest.approx(15.0) and wall[7] == pytest.approx(5.0)
    assert run.wall_median_ms() == pytest.approx(10.0)
    with pytest.raises(PeerRunError, match="19 arrival times for 20 Pred lines"):
        parse_inference_output(TWO_NODES, arrivals[:-1])


def test_a_failed_root_is_a_typed_error_with_its_words() -> None:
    text = (DATA / "dllama_inference_missing_model.txt").read_text()
    with pytest.raises(PeerRunError, match="Cannot open model file"):
        parse_inference_output(text)


def test_only_token_lines_are_timed() -> None:
    lines = TWO_NODES.encode().splitlines()
    assert sum(is_pred_line(line) for line in lines) == 20
    assert not any(is_pred_line(line) for line in lines if b"Eval" in line)


def test_node_counts_must_be_powers_of_two() -> None:
    assert [n for n in range(0, 17) if is_power_of_two(n)] == [1, 2, 4, 8, 16]
    variants, notes = peer_variants([1, 3, 4, 6, 8], [None, "q4"])
    assert [v.name for v in variants] == [
        "distributed-llama 1 node(s) f32", "distributed-llama 4 node(s) f32",
        "distributed-llama 8 node(s) f32", "distributed-llama 1 node(s) q40",
        "distributed-llama 4 node(s) q40", "distributed-llama 8 node(s) q40"]
    assert notes == ["distributed-llama skipped at 3 nodes: it needs a power of two",
                     "distributed-llama skipped at 6 nodes: it needs a power of two"]


def test_formats_map_to_weights_and_sync() -> None:
    assert peer_types(None) == ("f32", "f32")
    assert peer_types("q4") == ("q40", "q80")
    with pytest.raises(ValueError):
        peer_types("q8")


def test_nodes_get_the_cores_pinned_agents_get() -> None:
    cores = list(range(16))
    # the first core takes the host's interrupts: left out while there are cores to spare
    assert node_cpus(4, 1, cores) == ["1", "2", "3", "4"]
    assert node_cpus(2, 2, cores) == ["1,2", "3,4"]
    assert node_cpus(8, 2, cores) == ["0,1", "2,3", "4,5", "6,7", "8,9", "10,11", "12,13",
                                      "14,15"]  # no core to spare: all of them, from 0
    assert node_cpus(3, 1, [4, 6]) == ["4", "6", "4"]  # wraps
    assert node_cpus(2, 1, [4, 6, 9]) == ["6", "9"]
    assert node_cpus(3, 1, cores) == [",".join(map(str, c)) for c in agent_cores(3, 1, cores)]


def test_command_lines_follow_the_recipe() -> None:
    q4 = PeerVariant(4, "q40", "q80")
    root = root_command(Path("/d/dllama"), Path("/m/x_q40.m"), Path("/t.t"), q4,
                        "Permission is", 36, [9001, 9002, 9003], 1, "0")
    assert root == ["taskset", "-c", "0", "/d/dllama", "inference", "--model", "/m/x_q40.m",
                    "--tokenizer", "/t.t", "--buffer-float-type", "q80", "--nthreads", "1",
                    "--prompt", "Permission is", "--steps", "36", "--seed", "42",
                    "--workers", "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    one = root_command(Path("/d/dllama"), Path("/m/x_f32.m"), Path("/t.t"),
                       PeerVariant(1, "f32", "f32"), "p", 36, [], 1, None)
    assert one[:1] == ["/d/dllama"] and "--workers" not in one
    assert one[6:8] == ["--buffer-float-type", "f32"]
    assert worker_command(Path("/d/dllama"), 9001, 1, "3") == [
        "taskset", "-c", "3", "/d/dllama", "worker", "--host", "127.0.0.1", "--port", "9001",
        "--nthreads", "1"]
    assert convert_command("/py", Path("/d"), Path("/c/ck"), "q40", "ck") == [
        "/py", "/d/converter/convert-hf.py", "/c/ck", "q40", "ck"]
    assert model_file_name("ck", "q40") == "dllama_model_ck_q40.m"


def _tokenizer(path: Path, vocab: int) -> Path:
    """A dllama tokenizer header as converter/tokenizer-writer.py writes it."""
    data = struct.pack("8i", 3, vocab - 2, 0, 1, 1, vocab, 2, 8)
    path.write_bytes(struct.pack("2i", 0x567124, 8 + len(data)) + data)
    return path


def test_tokenizer_vocabulary_is_read_from_its_header(tmp_path: Path) -> None:
    assert tokenizer_vocab_size(_tokenizer(tmp_path / "t.t", 32000)) == 32000
    (tmp_path / "bad.t").write_bytes(b"not a tokenizer at all")
    assert tokenizer_vocab_size(tmp_path / "bad.t") is None
    shared = Path(__file__).resolve().parents[4] / "shared/peers/dllama_tokenizer_synth.t"
    if shared.is_file():  # the real one, where this checkout sits beside ../shared
        assert tokenizer_vocab_size(shared) == 32000


def _args(tmp_path: Path, **over: object) -> argparse.Namespace:
    from edge_runtime.cli import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["llm", "--pin", "--peer-dllama", str(tmp_path / "dl"),
                              "--peer-tokenizer", str(tmp_path / "t.t"),
                              "--peer-prompt", str(tmp_path / "p.txt")])
    for key, value in over.items():
        setattr(args, key, value)
    return args


def test_bench_llm_takes_the_peer_options_and_checks_them(tmp_path: Path) -> None:
    args = _args(tmp_path)
    assert args.peer_dllama == tmp_path / "dl" and args.peer_timeout == 300.0
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"vocab_size": 32000}))
    with pytest.raises(ConfigError, match="dllama missing"):
        peer_dllama.prepare(args, ckpt, [2], [None])
    (tmp_path / "dl" / "converter").mkdir(parents=True)
    (tmp_path / "dl" / "dllama").write_text("")
    (tmp_path / "dl" / "converter" / "convert-hf.py").write_text("")
    with pytest.raises(ConfigError, match="--peer-tokenizer"):
        peer_dllama.prepare(args, ckpt, [2], [None])
    _tokenizer(tmp_path / "t.t", 16000)
    (tmp_path / "p.txt").write_text("Permission is hereby granted\n")
    with pytest.raises(ConfigError, match="16000 tokens, the checkpoint has 32000"):
        peer_dllama.prepare(args, ckpt, [2], [None])
    assert peer_dllama.prepare(_args(tmp_path, peer_dllama=None), ckpt, [2], [None]) is None


def test_report_puts_each_peer_row_beside_our_matching_rows(tmp_path: Path) -> None:
    args = _args(tmp_path, prompt_tokens=16, new_tokens=20, threads=1, repeats=1)
    variant, broken = PeerVariant(2, "f32", "f32"), PeerVariant(2, "q40", "q80")
    peer = peer_dllama.PeerDllama(args, tmp_path, tmp_path / "t.t", "p",
                                  {"f32": tmp_path / "m.m"}, [variant, broken],
                                  ["distributed-llama skipped at 3 nodes: it needs a power of two"],
                                  tmp_path / "logs")
    peer.runs[variant.name].append(parse_inference_output(TWO_NODES))
    peer.failures["distributed-llama 2 node(s) q40"] = "PeerRunError: it broke"
    ours = {"2 agent(s) resident curve": {"agents": 2, "streamed": False, "weights": "fp32",
                                          "ms_per_token": 54.0},
            "2 agent(s) resident q4 curve": {"agents": 2, "streamed": False, "weights": "q4",
                                             "ms_per_token": 20.0},
            "2 agent(s) window 0.25": {"agents": 2, "streamed": True, "weights": "fp32",
                                       "ms_per_token": 300.0},
            "1 agent(s) resident": {"agents": 1, "streamed": False, "weights": "fp32",
                                    "ms_per_token": 90.0}}
    out = peer.report(ours)
    row = out["variants"]["distributed-llama 2 node(s) f32"]
    assert row["ms_per_token"] == 27.0 and row["prompt_tokens"] == 16
    assert row["ours"] == {"2 agent(s) resident curve": {
        "ms_per_token": 54.0, "ratio": 2.0, "ratio_to_wall": pytest.approx(float("nan"),
                                                                           nan_ok=True)}}
    assert "distributed-llama 2 node(s) q40" not in out["variants"]
    assert out["failures"] == {"distributed-llama 2 node(s) q40": "PeerRunError: it broke"}


def test_a_peer_under_its_1ms_resolution_gives_no_ratio_instead_of_a_crash(
        tmp_path: Path) -> None:
    args = _args(tmp_path, prompt_tokens=16, new_tokens=20, threads=1, repeats=1)
    variant = PeerVariant(1, "f32", "f32")
    peer = peer_dllama.PeerDllama(args, tmp_path, tmp_path / "t.t", "p",
                                  {"f32": tmp_path / "m.m"}, [variant], [], tmp_path / "logs")
    one = parse_inference_output((DATA / "dllama_inference_1node_f32.txt").read_text())
    assert one.median_ms() == 0.0 and one.mean_pred_ms == 0.72  # tiny shape: whole ms round to 0
    peer.runs[variant.name].append(one)
    out = peer.report({"1 agent(s) resident": {"agents": 1, "streamed": False,
                                               "weights": "fp32", "ms_per_token": 2.0}})
    ratio = out["variants"][variant.name]["ours"]["1 agent(s) resident"]["ratio"]
    assert ratio != ratio  # NaN
