"""The LLM engine: Llama-family checkpoints split tensor-parallel, with a sliding layer window.

Public API (see docs/llm.md):
- `LlmConfig`, `Checkpoint`: read and validate a Hugging Face checkpoint directory.
- `convert_share`, `SliceSet`: one device's per-block slice files in a cache directory.
- `LayerWindow`: the byte-budgeted block window with read-ahead.
- `TensorWorker`: one device's forward step, with injected allreduce / gather.
- `LocalRunner`, `load_local_engine`: N workers in N threads of this process.
- `LlmEngine`: prefill, decode, sampling, stop tokens, streaming.
- `Q4MatMul`: 4-bit weights via onnxruntime (`quantize="q4"` on workers and runners).
- `write_synthetic_checkpoint`: random Llama checkpoints of any size for benchmarks.
"""

from edge_runtime.llm.checkpoint import Checkpoint, expected_tensors
from edge_runtime.llm.config import LlmConfig, RopeConfig
from edge_runtime.llm.engine import Generation, LlmEngine, Runner, TokenEvent
from edge_runtime.llm.local import (
    LocalRunner,
    RelativeSpeed,
    ThreadCollective,
    load_local_engine,
    window_budget,
)
from edge_runtime.llm.quant import Q4MatMul
from edge_runtime.llm.sampling import SamplingParams, sample
from edge_runtime.llm.slices import BlockSpec, SliceSet, convert_share, load_slices
from edge_runtime.llm.synthetic import SyntheticShape, write_synthetic_checkpoint
from edge_runtime.llm.tokenizer import LlmTokenizer, StreamDecoder
from edge_runtime.llm.window import LayerWindow, WindowStats
from edge_runtime.llm.worker import TensorWorker

__all__ = [
    "BlockSpec",
    "Checkpoint",
    "Generation",
    "LayerWindow",
    "LlmConfig",
    "LlmEngine",
    "LlmTokenizer",
    "LocalRunner",
    "Q4MatMul",
    "RelativeSpeed",
    "RopeConfig",
    "Runner",
    "SamplingParams",
    "SliceSet",
    "StreamDecoder",
    "SyntheticShape",
    "TensorWorker",
    "ThreadCollective",
    "TokenEvent",
    "WindowStats",
    "convert_share",
    "expected_tensors",
    "load_local_engine",
    "load_slices",
    "sample",
    "window_budget",
    "write_synthetic_checkpoint",
]
