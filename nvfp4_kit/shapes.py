"""Linear-layer shapes (N, K) of common models, for tuning, precompiling and benchmarks."""

from __future__ import annotations

from .formats import BLOCK_SIZE

__all__ = ["MODEL_SHAPES", "parse_shapes"]

# (N, K) of each linear in one decoder layer, unsharded (TP=1); qkv and gate_up fused.
MODEL_SHAPES: dict[str, dict[str, tuple[int, int]]] = {
    "llama-3.1-8b": {
        "qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
    },
    "llama-3.1-70b": {
        "qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192), "down": (8192, 28672),
    },
}


def parse_shapes(spec: str) -> dict[str, tuple[int, int]]:
    """"llama-3.1-8b" (a preset), or "name=NxK,..." / "NxK,..." -> {name: (N, K)}."""
    if spec in MODEL_SHAPES:
        return dict(MODEL_SHAPES[spec])
    shapes = {}
    for item in spec.split(","):
        name, _, dims = item.rpartition("=")
        try:
            n, k = (int(v) for v in dims.lower().split("x"))
        except ValueError:
            presets = ", ".join(MODEL_SHAPES)
            raise ValueError(f"shapes: {item!r} is neither a preset ({presets}) nor NxK") from None
        if n < 1 or k < 1 or k % BLOCK_SIZE:
            raise ValueError(f"shapes: {item!r}: N and K must be positive and K a multiple of {BLOCK_SIZE}")
        shapes[name or f"{n}x{k}"] = (n, k)
    return shapes
