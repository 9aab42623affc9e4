"""Human sizes ("512MB", "1.5GiB") as bytes, shared by the CLI, the agent and the SDK."""

from __future__ import annotations

import re

from edge_runtime.errors import ConfigError

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40,
}  # fmt: skip


def parse_size(text: str | int) -> int:
    """Bytes in a human size: 512MB, 1GB, 1.5GiB, 2048 (decimal units unless `i`)."""
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"size must be non-negative, got {text}")
        return text
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(f"cannot read size {text!r}: write e.g. 512MB, 1GB or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[unit])


__all__ = ["parse_size"]
