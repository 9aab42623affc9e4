"""`edge-runtime bench llm --peer-dllama DIR`: distributed-llama in the same rounds as ours.

Why: issue 12's comparison (8 pinned nodes, fp32 and 4-bit) means something only when
both systems run side by side on the same machine in one run, on the same checkpoint
shape and cores; separate runs on a shared machine differ by more than the gap. So
each round of `bench llm`, after our variants, runs distributed-llama's counterparts:
at each agent count that is a power of two (dllama's rule; others are skipped with a
note), fp32 as f32 weights and sync, q4 as q40 weights with q80 sync. The checkpoint
the suite wrote is converted once with DIR's own `converter/convert-hf.py` (cached
beside it, f32 and q40 converted at once), node i is pinned to agent i's cores, the
workers are stopped by pid after each run, and the table shows each peer figure
beside ours with the ratio ours ÷ peer. distributed-llama has no encryption.

The recipe (flags, tokenizer, prompts) is ../shared/peers/README.md's; its tokenizer
and prompt are not ours, so they come in as `--peer-tokenizer` and `--peer-prompt`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from edge_runtime.bench.peer_dllama_cmd import (
    PeerVariant,
    convert_command,
    model_file_name,
    node_cpus,
    peer_variants,
    root_command,
    worker_command,
)
from edge_runtime.bench.peer_dllama_output import DllamaRun, PeerRunError, tokenizer_vocab_size
from edge_runtime.bench.peer_dllama_procs import convert, free_ports, run_root, workers
from edge_runtime.errors import ConfigError

_OURS = {"f32": "fp32", "q40": "q4"}  # peer weights -> our row's "weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peer-dllama", type=Path, default=None, metavar="DIR",
                        help="a distributed-llama source tree with `dllama` built in it "
                        "(make dllama): run it each round beside ours at the same node "
                        "counts (powers of two) and formats (fp32 -> f32, q4 -> q40 + q80 "
                        "sync), pinned like --pin, on the checkpoint converted with "
                        "DIR/converter; needs --peer-tokenizer and --peer-prompt")
    parser.add_argument("--peer-tokenizer", type=Path, default=None, metavar="FILE",
                        help="dllama tokenizer for the checkpoint's vocabulary (reference "
                        "shape: ../shared/peers/dllama_tokenizer_synth.t)")
    parser.add_argument("--peer-prompt", type=Path, default=None, metavar="FILE",
                        help="text file with distributed-llama's prompt, --prompt-tokens "
                        "tokens long in its tokenizer (../shared/peers/prompt16.txt)")
    parser.add_argument("--peer-python", default=sys.executable,
                        help="python with torch and safetensors, for dllama's converter "
                        "(default: this one)")
    parser.add_argument("--peer-timeout", type=float, default=300.0,
                        help="seconds allowed per distributed-llama run and per conversion")


def _required_file(path: Path | None, option: str, what: str) -> Path:
    if path is None or not path.is_file():
        raise ConfigError(f"{option}: {path or 'not given'} is not a file; give {what}")
    return path.resolve()


class PeerDllama:
    """distributed-llama's variants of one `bench llm` run: `run_round` after each of
    our rounds, `report` once our table is printed."""

    def __init__(self, args: argparse.Namespace, source: Path, tokenizer: Path, prompt: str,
                 models: dict[str, Path], variants: list[PeerVariant], notes: list[str],
                 log_dir: Path) -> None:
        self.args, self.source, self.models = args, source, models
        self.tokenizer, self.prompt = tokenizer, prompt
        self.variants, self.notes, self.log_dir = variants, notes, log_dir
        self.runs: dict[str, list[DllamaRun]] = {v.name: [] for v in variants}
        self.failures: dict[str, str] = {}

    def cpus(self, nodes: int) -> list[str | None]:
        if not self.args.pin:
            return [None] * nodes
        return list(node_cpus(nodes, self.args.threads, sorted(os.sched_getaffinity(0))))

    def commands(self, variant: PeerVariant, ports: list[int]
                 ) -> tuple[list[str], list[list[str]]]:
        """The root's command line and one per worker (node i on agent i's cores)."""
        binary, threads = self.source / "dllama", self.args.threads
        cpus = self.cpus(variant.nodes)
        steps = self.args.prompt_tokens + self.args.new_tokens
        root = root_command(binary, self.models[variant.weights], self.tokenizer, variant,
                            self.prompt, steps, ports, threads, cpus[0])
        return root, [worker_command(binary, port, threads, cpu)
                      for port, cpu in zip(ports, cpus[1:], strict=True)]

    def run_round(self, rnd: int) -> None:
        """Each peer variant once: start its workers, run the root, stop the workers."""
        for variant in self.variants:
            if variant.name in self.failures:
                continue
            ports = free_ports(variant.nodes - 1)
            root, worker_lines = self.commands(variant, ports)
            tag = f"{variant.nodes}n-{variant.weights}-r{rnd + 1}"
            try:
                with workers(worker_lines, ports, self.log_dir / tag):
                    run = run_root(root, self.log_dir / f"{tag}.log", self.args.peer_timeout)
            except PeerRunError as error:
                self.failures[variant.name] = str(error)
                print(f"round {rnd + 1}/{self.args.repeats} {variant.name}: failed: {error}",
                      flush=True)
                continue
            self.runs[variant.name].append(run)
            print(f"round {rnd + 1}/{self.args.repeats} {variant.name}: prefill "
                  f"{run.prefill_ms()} ms, median {run.median_ms():.1f} ms/token Pred+Sync "
                  f"(wall {run.wall_median_ms():.1f})", flush=True)

    def report(self, ours: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Print each peer variant beside our resident rows with the same agents and
        weights (ours ÷ peer) and return the JSON of the peer's rows."""
        rows = peer_rows(self.runs, self.variants)
        print("\ndistributed-llama beside ours (same rounds; its ms/token = median Pred+Sync "
              "after the first token, wall = median interval between its token lines; "
              "ratio = ours ÷ its ms/token; it has no encryption):")
        for variant in self.variants:
            row = rows.get(variant.name)
            if row is None:
                why = self.failures.get(variant.name, "no round ran")
                print(f"  {variant.name}: no run ({why[:160]})")
                continue
            print(f"  {variant.name:34} {row['ms_per_token']:7.1f} ms/token (wall "
                  f"{row['wall_ms_per_token']:.1f}, its mean {row['mean_ms_per_token']:.1f}), "
                  f"prefill {row['prefill_ms']:.0f} ms")
            row["ours"] = {}
            for name, mine in ours.items():
                if (mine["agents"] == variant.nodes and not mine["streamed"]
                        and mine["weights"] == _OURS[variant.weights]):
                    ratio = _ratio(mine["ms_per_token"], row["ms_per_token"])
                    wall = _ratio(mine["ms_per_token"], row["wall_ms_per_token"])
                    row["ours"][name] = {"ms_per_token": mine["ms_per_token"],
                                         "ratio": ratio, "ratio_to_wall": wall}
                    print(f"    {name:32} {mine['ms_per_token']:7.1f} ms/token   ours ÷ peer "
                          f"{ratio:.2f}x (÷ wall {wall:.2f}x)")
        for note in self.notes:
            print(f"  {note}")
        for row in rows.values():
            if row["prompt_tokens"] not in (None, self.args.prompt_tokens):
                print(f"  note: its prompt was {row['prompt_tokens']} tokens in its tokenizer "
                      f"(ours {self.args.prompt_tokens}); give --peer-prompt of that length")
                break
        return {"source": str(self.source), "tokenizer": str(self.tokenizer),
                "models": {k: str(v) for k, v in self.models.items()}, "notes": self.notes,
                "variants": rows, "failures": self.failures, "logs": str(self.log_dir)}


def _ratio(ours: float, peer: float) -> float:
    """ours ÷ peer; NaN where the peer's figure is 0 (under its 1 ms resolution) or NaN."""
    return ours / peer if peer > 0 else float("nan")


def peer_rows(runs: dict[str, list[DllamaRun]], variants: list[PeerVariant]
              ) -> dict[str, dict[str, Any]]:
    """Medians over rounds per peer variant (the per-token figures of all rounds pooled,
    as our table pools its intervals)."""
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        done = runs.get(v.name) or []
        if not done:
            continue
        after = [t for r in done for t in r.token_ms()[1:]]
        wall = [t for r in done for t in r.wall_intervals_ms()]
        means = [r.mean_pred_ms for r in done if r.mean_pred_ms is not None]
        rows[v.name] = {
            "nodes": v.nodes, "weights": v.weights, "sync": v.sync, "rounds": len(done),
            "ms_per_token": float(statistics.median(after)) if after else float("nan"),
            "wall_ms_per_token": float(statistics.median(wall)) if wall else float("nan"),
            "mean_ms_per_token": float(statistics.median(means)) if means else float("nan"),
            "per_round_ms_per_token": [r.median_ms() for r in done],
            "prefill_ms": float(statistics.median(r.prefill_ms() for r in done)),
            "prompt_tokens": done[0].eval_tokens, "new_tokens": done[0].pred_tokens,
            "sent_kb_per_token": done[0].sent_kb_per_token,
            "recv_kb_per_token": done[0].recv_kb_per_token,
        }
    return rows


def converted_models(args: argparse.Namespace, source: Path, checkpoint: Path,
                     weights: list[str]) -> dict[str, Path]:
    """dllama model files of `checkpoint` per weight type, converted (all at once) where
    not cached beside the checkpoint or older than its safetensors."""
    cache = checkpoint.parent / "dllama-models"
    cache.mkdir(parents=True, exist_ok=True)
    newest = max(f.stat().st_mtime for f in checkpoint.glob("*.safetensors"))
    models = {w: cache / model_file_name(checkpoint.name, w) for w in weights}
    todo = {path: convert_command(args.peer_python, source, checkpoint.resolve(), w,
                                  checkpoint.name)
            for w, path in models.items()
            if not path.is_file() or path.stat().st_mtime < newest}
    if todo:
        t0 = time.perf_counter()
        convert(todo, cache, args.peer_timeout)
        print(f"distributed-llama models {', '.join(p.name for p in todo)} converted in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return models


def prepare(args: argparse.Namespace, checkpoint: Path, counts: list[int],
            formats: list[str | None]) -> PeerDllama | None:
    """The peer for this run (converting the checkpoint if needed), or None without
    --peer-dllama. A conversion that fails is a ConfigError saying what it printed."""
    source: Path | None = getattr(args, "peer_dllama", None)
    if source is None:
        return None
    source = source.resolve()
    for need, what in ((source / "dllama", "the built binary (run `make dllama` there)"),
                       (source / "converter" / "convert-hf.py", "its converter/")):
        if not need.is_file():
            raise ConfigError(f"--peer-dllama {source}: {need.name} missing; need {what}")
    tokenizer = _required_file(args.peer_tokenizer, "--peer-tokenizer",
                               "distributed-llama's tokenizer file for this vocabulary")
    prompt = _required_file(args.peer_prompt, "--peer-prompt", "a text file with the prompt")
    text = prompt.read_text().rstrip("\n")  # as the recipe's "$(cat FILE)"
    vocab = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
    if tokenizer_vocab_size(tokenizer) != vocab:
        raise ConfigError(f"--peer-tokenizer {tokenizer}: vocabulary of "
                          f"{tokenizer_vocab_size(tokenizer)} tokens, the checkpoint has {vocab} "
                          "(dllama would sample past its logits); use --reference with the "
                          "shared tokenizer, or a tokenizer of this vocabulary")
    if args.pin and shutil.which("taskset") is None:
        raise ConfigError("--peer-dllama with --pin pins its nodes with taskset, which is not "
                          "installed here; install util-linux or leave out --pin")
    variants, notes = peer_variants(counts, formats)
    for note in notes:
        print(note, flush=True)
    try:
        models = converted_models(args, source, checkpoint,
                                  list(dict.fromkeys(v.weights for v in variants)))
    except PeerRunError as error:
        raise ConfigError(f"--peer-dllama: converting {checkpoint} failed (is torch and "
                          f"safetensors in --peer-python?): {error}") from error
    return PeerDllama(args, source, tokenizer, text, models, variants, notes,
                      checkpoint.parent / "dllama-logs" / time.strftime("%Y%m%d-%H%M%S"))


__all__ = ["PeerDllama", "add_arguments", "converted_models", "peer_rows", "prepare"]
