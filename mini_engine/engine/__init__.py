"""mini_engine.engine: see the modules; each file owns one role."""

__all__: list[str] = []
