"""The command lines that run distributed-llama beside `edge-runtime bench llm`.

Why pure functions apart from the processes: the recipe (../shared/peers/README.md,
distributed-llama 8d624a7) fixes every flag, and a wrong flag silently measures
something else (f32 sync for a 4-bit model, an unpinned worker); building the lines
here lets tests read them exactly. Node i runs on the cores `bench llm --pin` gives
agent i, so the two systems use the same cores; dllama splits its layers over a
power-of-two number of nodes only, so other counts are skipped with a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_runtime.bench.pinning import agent_cores

SEED = 42  # the recipe's sampler seed

# our weight format (deploy_llm's quantize: None = fp32) -> dllama weights, sync buffers
_TYPES: dict[str | None, tuple[str, str]] = {None: ("f32", "f32"), "q4": ("q40", "q80")}


@dataclass(frozen=True)
class PeerVariant:
    """One distributed-llama configuration run each round: `nodes` processes (the root
    and nodes − 1 workers), `weights` (f32 or q40) and `sync` (its buffer float type)."""

    nodes: int
    weights: str
    sync: str

    @property
    def name(self) -> str:
        return f"distributed-llama {self.nodes} node(s) {self.weights}"


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def peer_types(fmt: str | None) -> tuple[str, str]:
    """(weights, buffer float type) of dllama for one of our formats: fp32 -> f32 + f32
    sync; q4 -> q40 weights + q80 sync (its 8-bit activations)."""
    if fmt not in _TYPES:
        raise ValueError(f"no distributed-llama counterpart for weight format {fmt!r}")
    return _TYPES[fmt]


def peer_variants(counts: list[int], formats: list[str | None]
                  ) -> tuple[list[PeerVariant], list[str]]:
    """The peer's variants for our agent counts × formats (format-major, like ours),
    and a note per count it cannot run (not a power of two)."""
    notes = [f"distributed-llama skipped at {n} nodes: it needs a power of two"
             for n in counts if not is_power_of_two(n)]
    runnable = [n for n in counts if is_power_of_two(n)]
    out = [PeerVariant(n, *peer_types(fmt)) for fmt in formats for n in runnable]
    return out, notes


def node_cpus(nodes: int, threads: int, cores: list[int]) -> list[str]:
    """taskset's CPU list per node: node i gets the cores `bench.pinning.agent_cores`
    gives agent i, so each node runs where the agent it is compared with ran."""
    return [",".join(map(str, mine)) for mine in agent_cores(nodes, threads, cores)]


def _pinned(cpus: str | None, command: list[str]) -> list[str]:
    return command if cpus is None else ["taskset", "-c", cpus, *command]


def worker_command(binary: Path, port: int, threads: int, cpus: str | None) -> list[str]:
    """`dllama worker` listening on 127.0.0.1:port (it serves roots until stopped)."""
    return _pinned(cpus, [str(binary), "worker", "--host", "127.0.0.1", "--port", str(port),
                          "--nthreads", str(threads)])


def root_command(binary: Path, model: Path, tokenizer: Path, variant: PeerVariant,
                 prompt: str, steps: int, worker_ports: list[int], threads: int,
                 cpus: str | None) -> list[str]:
    """`dllama inference` as the recipe runs it; `steps` = prompt tokens + new tokens
    (its last position); `--workers` goes last because it takes every following word."""
    command = [str(binary), "inference", "--model", str(model), "--tokenizer", str(tokenizer),
               "--buffer-float-type", variant.sync, "--nthreads", str(threads),
               "--prompt", prompt, "--steps", str(steps), "--seed", str(SEED)]
    if worker_ports:
        command += ["--workers", *(f"127.0.0.1:{p}" for p in worker_ports)]
    return _pinned(cpus, command)


def model_file_name(name: str, weights: str) -> str:
    """What `convert-hf.py CKPT WEIGHTS NAME` writes into its working directory."""
    return f"dllama_model_{name}_{weights}.m"


def convert_command(python: str, source: Path, checkpoint: Path, weights: str,
                    name: str) -> list[str]:
    """`python converter/convert-hf.py CKPT f32|q40 NAME` (run in the output directory)."""
    return [python, str(source / "converter" / "convert-hf.py"), str(checkpoint), weights, name]


__all__ = ["SEED", "PeerVariant", "convert_command", "is_power_of_two", "model_file_name",
           "node_cpus", "peer_types", "peer_variants", "root_command", "worker_command"]
