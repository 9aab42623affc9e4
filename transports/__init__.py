"""transports package."""

__all__: list[str] = []
