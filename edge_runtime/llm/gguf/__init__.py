"""GGUF input: a llama.cpp `.gguf` file converted into an ordinary checkpoint directory.

Public API:
- `resolve_checkpoint(path)`: a directory stays itself; a .gguf file becomes its cached,
  converted checkpoint directory (config.json, model.safetensors, tokenizer.json,
  tokenizer_config.json).
- `resolve_config(path)`: for planning, a .gguf becomes a config.json of its metadata
  (no weights converted).
- `convert_gguf(path, cache_dir=None, progress=None)`: the conversion itself.
- `is_gguf(path)`, `GgufFile`: recognise and read a file.
- `hf_config(gguf)`: the HF config dict of its metadata; `build_tokenizer(gguf)`.
- `q4_0_to_matmulnbits(blocks)`: Q4_0 blocks as the engine's 4-bit codes, losslessly.
"""

from edge_runtime.llm.gguf.config_map import hf_config, supported_architectures
from edge_runtime.llm.gguf.convert import (
    convert_gguf,
    default_gguf_cache,
    resolve_checkpoint,
    resolve_config,
    stderr_progress,
)
from edge_runtime.llm.gguf.reader import GgufFile, is_gguf
from edge_runtime.llm.gguf.repack import q4_0_to_matmulnbits
from edge_runtime.llm.gguf.tensors import SUPPORTED_TYPES
from edge_runtime.llm.gguf.tokenizer import build_tokenizer

__all__ = ["SUPPORTED_TYPES", "GgufFile", "build_tokenizer", "convert_gguf", "default_gguf_cache",
           "hf_config", "is_gguf", "q4_0_to_matmulnbits", "resolve_checkpoint", "resolve_config",
           "stderr_progress", "supported_architectures"]
