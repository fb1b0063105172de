"""mini_engine.models: see the modules; each file owns one role."""

__all__: list[str] = []
