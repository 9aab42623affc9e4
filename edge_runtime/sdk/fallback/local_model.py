"""`LocalModel`: answer on this device, in this process, with onnxruntime.

The cluster exists because one device is too small or too slow for the model, so
"run it here" must ask first whether it fits. The model's peak memory is estimated
with the planner's own formula (`partitioner.memory.SegmentMemory`: weights plus the
peak of live activations, at the request's actual input shapes). If the whole model
fits this device's budget it answers in full; otherwise the deepest early exit whose
sub-model fits answers, marked `degraded` with a note saying why, which is better
than no answer when the cluster is gone. A model without a fitting exit is refused
with `FallbackError` before anything is loaded.

The chosen session is built once per model (by sha256) and reused; a sub-model is
cut by the partitioner (`build_shard` over nodes [0, exit)), written to a private
temporary directory and loaded from there. Building it reads the model's weights
once, so it briefly needs about the model file's size in memory.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.backends.base import Backend
from edge_runtime.errors import DeployError, FallbackError, InputError
from edge_runtime.sdk.fallback.targets import Answer, ModelInfo
from edge_runtime.sdk.inputs import check_inputs
from edge_runtime.units import parse_size
from partitioner.errors import PartitionError
from partitioner.extract import build_shard
from partitioner.graph import ModelGraph
from partitioner.memory import SegmentMemory
from partitioner.pipeline import stage_memory
from partitioner.plan import Stage

log = logging.getLogger(__name__)

NAME = "local"
# Without an explicit budget, this share of the memory available when the fallback is
# first needed: the app itself, and whatever else runs here, keep the rest.
DEFAULT_BUDGET_SHARE = 0.5
# Sub-models whose weights exceed this keep them in an external data file (protobuf
# cannot hold 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30
# Estimates kept per (model, input shapes): a few batch sizes per model is the norm.
MAX_ESTIMATES = 64


@dataclass(frozen=True)
class Candidate:
    """One way to answer: the whole model (`exit` None) or the sub-model up to an exit."""

    exit: str | None
    end: int  # the sub-model is the graph's nodes [0, end)
    need_bytes: int  # its estimated peak memory


@dataclass(frozen=True)
class LocalChoice:
    """What `LocalModel` would run for a request, and why."""

    candidate: Candidate
    whole_bytes: int  # the whole model's estimated peak memory
    budget_bytes: int
    dims: tuple[tuple[str, int], ...] = ()  # the request's symbolic input sizes ("x:0", n)

    @property
    def degraded(self) -> bool:
        return self.candidate.exit is not None

    def note(self) -> str:
        return (f"whole model needs {self.whole_bytes / 1e6:.1f} MB, budget "
                f"{self.budget_bytes / 1e6:.1f} MB; answered at exit {self.candidate.exit}")


@dataclass(frozen=True)
class _Estimate:
    whole: Candidate
    exits: tuple[Candidate, ...]  # early exits, shallowest first


def default_budget() -> int:
    """`DEFAULT_BUDGET_SHARE` of the memory psutil says is available now."""
    import psutil

    return int(psutil.virtual_memory().available * DEFAULT_BUDGET_SHARE)


def _shape_dims(model: ModelInfo, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The request's size of every symbolic input dimension, as `ModelGraph` dims."""
    dims: dict[str, int] = {}
    for spec in model.inputs:
        array = inputs.get(spec.name)
        if array is None:
            continue
        for axis, dim in enumerate(spec.shape):
            if not isinstance(dim, int):
                dims[f"{spec.name}:{axis}"] = int(array.shape[axis])
    return dims


def _analyse(model: ModelInfo, dims: Mapping[str, int]) -> ModelGraph:
    batch = next((size for key, size in dims.items() if key.endswith(":0")), 1)
    return ModelGraph.from_onnx(model.path, max(batch, 1), dims=dims)


def _estimate(graph: ModelGraph) -> _Estimate:
    params, live = stage_memory(graph)
    memory = SegmentMemory(params, live)
    n = len(graph.nodes)
    exits = tuple(Candidate(head.name, head.position, memory.stage_bytes(0, head.position))
                  for head in graph.exits if not head.final and 0 < head.position < n)
    return _Estimate(Candidate(None, n, memory.stage_bytes(0, n)), exits)


def _choose(estimate: _Estimate, budget: int) -> Candidate | None:
    if estimate.whole.need_bytes <= budget:
        return estimate.whole
    fitting = [c for c in estimate.exits if c.need_bytes <= budget]
    return max(fitting, key=lambda c: c.end) if fitting else None


def _sub_model_stage(graph: ModelGraph, candidate: Candidate) -> Stage:
    """The one stage [0, end): the model inputs it reads in, every model output made there
    out (the exit and any earlier ones, as the cluster answers when that exit fires)."""
    nodes = graph.nodes[: candidate.end]
    consumed = {x for node in nodes for x in node.inputs}
    produced = graph.produced_between(0, candidate.end)
    inputs = tuple(t for t in graph.model_inputs if t in consumed)
    outputs = tuple(o for o in graph.model_outputs if o in produced)
    return Stage(index=0, device=NAME, device_index=0, node_start=0, node_end=candidate.end,
                 inputs=inputs, forward=(), outputs=outputs, exit=candidate.exit,
                 memory_bytes=candidate.need_bytes,
                 input_specs=tuple(graph.spec(t) for t in inputs),
                 output_specs=tuple(graph.spec(t) for t in outputs))


class LocalModel:
    """A fallback that runs the model (or its deepest fitting early exit) on this device.

    `memory_budget`: bytes or a size such as ``"512MB"``; default half the memory
    available when the fallback is first used. `threads`: onnxruntime's intra-op
    threads (default: onnxruntime's own choice). Runs are one at a time (the budget is
    one run's); a local run cannot be cut short, so `infer`'s `timeout_s` is not
    enforced here.
    """

    def __init__(self, memory_budget: int | str | None = None, *,
                 threads: int | None = None) -> None:
        self._budget = None if memory_budget is None else parse_size(memory_budget)
        self._threads = threads
        self._lock = threading.Lock()
        self._estimates: dict[tuple[str, tuple[tuple[str, int], ...]], _Estimate] = {}
        self._sessions: dict[str, tuple[Candidate, Backend]] = {}
        self._workdir: Path | None = None

    @property
    def name(self) -> str:
        return NAME

    @property
    def cloud(self) -> bool:
        return False

    @property
    def budget_bytes(self) -> int:
        """The budget in bytes (the default is fixed the first time it is needed)."""
        if self._budget is None:
            self._budget = default_budget()
            log.info("local fallback budget: %.1f MB (half of available memory)",
                     self._budget / 1e6)
        return self._budget

    def choose(self, model: ModelInfo, inputs: Mapping[str, np.ndarray]) -> LocalChoice:
        """What would answer these inputs here; `FallbackError` if nothing fits."""
        with self._lock:
            return self._choice(model, inputs)[0]

    def infer(self, model: ModelInfo, inputs: Mapping[str, np.ndarray],
              timeout_s: float) -> Answer:
        del timeout_s  # onnxruntime cannot be interrupted mid-run
        # One run at a time: the budget holds one run's activations, not several.
        with self._lock:
            choice, graph = self._choice(model, inputs)
            backend = self._session(model, choice, graph)
            feeds = {spec.name: np.asarray(inputs[spec.name]) for spec in backend.inputs}
            try:
                outputs = backend.run(feeds)
            except InputError as error:
                raise FallbackError(str(error), target=NAME) from error
            except Exception as error:  # onnxruntime raises its own untyped errors
                raise FallbackError(f"onnxruntime failed on {model.name}: {error}",
                                    target=NAME) from error
        if not choice.degraded:
            return Answer(outputs=outputs, served_by=NAME)
        return Answer(outputs=outputs, served_by=NAME, degraded=True,
                      exit=choice.candidate.exit, notes=(choice.note(),))

    def close(self) -> None:
        """Release every session and delete the sub-models written for them."""
        with self._lock:
            for _, backend in self._sessions.values():
                backend.close()
            self._sessions.clear()
            self._estimates.clear()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    # ---- internals (called under the lock) ---------------------------------------------

    def _choice(self, model: ModelInfo,
                inputs: Mapping[str, np.ndarray]) -> tuple[LocalChoice, ModelGraph | None]:
        try:
            arrays = check_inputs(model.inputs, inputs)
        except InputError as error:
            raise FallbackError(str(error), target=NAME) from error
        dims = _shape_dims(model, arrays)
        key = (model.sha256, tuple(sorted(dims.items())))
        graph: ModelGraph | None = None
        estimate = self._estimates.get(key)
        if estimate is None:
            try:
                graph = _analyse(model, dims)
            except PartitionError as error:
                raise FallbackError(f"cannot analyse {model.name}: {error}",
                                    target=NAME) from error
            estimate = _estimate(graph)
            if len(self._estimates) >= MAX_ESTIMATES:
                self._estimates.pop(next(iter(self._estimates)))
            self._estimates[key] = estimate
        budget = self.budget_bytes
        candidate = _choose(estimate, budget)
        if candidate is None:
            raise FallbackError(self._refusal(model, estimate, budget), target=NAME)
        return LocalChoice(candidate, estimate.whole.need_bytes, budget, key[1]), graph

    @staticmethod
    def _refusal(model: ModelInfo, estimate: _Estimate, budget: int) -> str:
        need = f"{model.name} needs about {estimate.whole.need_bytes / 1e6:.1f} MB"
        if estimate.exits:
            first = estimate.exits[0]
            need += (f" and even its first exit {first.exit} "
                     f"{first.need_bytes / 1e6:.1f} MB")
        else:
            need += " and has no early exit to answer from"
        return (f"{need}, over this device's budget of {budget / 1e6:.1f} MB; raise "
                "LocalModel(memory_budget=...) or free memory")

    def _session(self, model: ModelInfo, choice: LocalChoice,
                 graph: ModelGraph | None) -> Backend:
        candidate = choice.candidate
        cached = self._sessions.get(model.sha256)
        if cached is not None and cached[0] == candidate:
            return cached[1]
        if cached is not None:  # another batch size moved the choice: keep one session
            cached[1].close()
            del self._sessions[model.sha256]
        from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend

        try:
            if candidate.exit is None:
                path = model.path
            else:
                if graph is None:  # the estimate was cached; the shard needs the graph
                    graph = _analyse(model, dict(choice.dims))
                path = self._write_sub_model(model, candidate, graph)
            backend: Backend = OnnxRuntimeBackend(path, threads=self._threads)
        except (DeployError, PartitionError, OSError) as error:
            raise FallbackError(f"cannot load {model.name} here: {error}",
                                target=NAME) from error
        log.info("local fallback loaded %s%s (about %.1f MB)", model.name,
                 f" up to exit {candidate.exit}" if candidate.exit else "",
                 candidate.need_bytes / 1e6)
        self._sessions[model.sha256] = (candidate, backend)
        return backend

    def _write_sub_model(self, model: ModelInfo, candidate: Candidate,
                         graph: ModelGraph) -> Path:
        import onnx

        proto = onnx.load(str(model.path), load_external_data=True)
        shard = build_shard(graph, proto, _sub_model_stage(graph, candidate))
        del proto
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="edge-runtime-local-"))
        path = self._workdir / f"{model.sha256[:16]}-{candidate.exit}.onnx"
        weights = sum(len(t.raw_data) for t in shard.graph.initializer)
        if weights > EXTERNAL_DATA_BYTES:
            onnx.save_model(shard, str(path), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=path.name + ".data",
                            size_threshold=1024)
        else:
            onnx.save_model(shard, str(path))
        return path


__all__ = ["Candidate", "LocalChoice", "LocalModel"]
