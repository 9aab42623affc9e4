"""edge-runtime: run one model across a handful of edge devices."""

__version__ = "0.1.0"

__all__ = ["__version__"]
