"""Serving benchmark parts behind `python -m mini_engine.bench` (mini_engine/bench.py): random dataset,
streaming OpenAI client, closed-loop runner, vLLM-style metrics, server launcher, report and plot.
Nothing here imports the engine: it measures any OpenAI-compatible server."""

__all__ = ["client", "dataset", "launch", "metrics", "plot", "report", "runner"]
