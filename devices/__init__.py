"""devices package."""

__all__: list[str] = []
