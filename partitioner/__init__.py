"""partitioner package."""

__all__: list[str] = []
