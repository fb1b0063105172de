"""Linear layers: bf16 (torch) and NVFP4 (nvfp4_kit.ops), each one checkpoint linear or a fused group.

A fused layer (qkv = [q_proj; k_proj; v_proj], gate_up = [gate_proj; up_proj]) concatenates its
shards' rows. For NVFP4 the shards' packed weights and e4m3 block scales concatenate as they are; each
shard has its own global scale (weight_scale_2), so the fused layer multiplies by a per-output-channel
alpha [N] built from them and stays exact when they differ. W4A4 needs ONE activation global scale per
fused GEMM: we use the max of the shards' input_scale (as vLLM does), so no shard's activations
saturate; the shards that calibrated a smaller scale see slightly coarser activation blocks.

Loading protocol (used by loader.py): `load(shard, kind, tensor)` for each checkpoint tensor, kinds
"weight" (bf16 [N,K] or NVFP4 uint8 [N,K/2]), "weight_scale" (e4m3 [N,K/16]), "weight_scale_2",
"input_scale" (fp32 scalars); then `finalize()` checks completeness and prepares the kit weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear"]

_SCALAR_KINDS = ("weight_scale_2", "input_scale")


class Linear(nn.Module):
    """y = x @ W.T. `names[i]` is shard i's checkpoint module name (used in error messages)."""

    def __init__(self, in_features: int, out_features: list[int], names: list[str], *,
                 quantized: bool, dtype: torch.dtype, device: torch.device,
                 backend: str = "auto", mode: str | None = None, quantize_on_load: bool = False):
        super().__init__()
        if quantized and in_features % 16:
            raise ValueError(f"{names[0]}: in_features={in_features} is not a multiple of 16 (NVFP4)")
        self.in_features = in_features
        self.out_features = list(out_features)
        self.names = list(names)
        self.quantized = quantized
        self.dtype = dtype
        self.backend, self.mode, self.quantize_on_load = backend, mode, quantize_on_load
        self.offsets = [sum(out_features[:i]) for i in range(len(out_features) + 1)]
        n, k = self.offsets[-1], in_features
        self.pw = None  # nvfp4_kit PreparedWeight after finalize()
        self._loaded: set[tuple[int, str]] = set()
        self.file_names: dict[str, str] = {}  # kind -> the checkpoint format's name (for messages)
        if quantized:
            self.w_packed = torch.empty(n, k // 2, dtype=torch.uint8, device=device)
            self.w_scale = torch.empty(n, k // 16, dtype=torch.float8_e4m3fn, device=device)
            self.scalars: dict[tuple[int, str], torch.Tensor] = {}
            self.weight = None
        else:
            self.weight = nn.Parameter(torch.empty(n, k, dtype=dtype, device=device), requires_grad=False)

    @property
    def num_shards(self) -> int:
        return len(self.out_features)

    def required_kinds(self) -> tuple[str, ...]:
        if not self.quantized or self.quantize_on_load:
            return ("weight",)
        return ("weight", "weight_scale", "weight_scale_2")

    # ------------------------------------------------------------------------------------ loading
    def _expect(self, name: str, t: torch.Tensor, shape: tuple, dtypes: tuple) -> None:
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {tuple(shape)}")
        if t.dtype not in dtypes:
            raise ValueError(f"{name}: dtype {t.dtype}, expected {' or '.join(map(str, dtypes))}")

    def load(self, shard: int, kind: str, t: torch.Tensor, *, reciprocal: bool = False) -> None:
        """reciprocal: the file holds 1 / the scale (compressed-tensors' global scales)."""
        name = f"{self.names[shard]}.{self.file_names.get(kind, kind)}"
        lo, hi = self.offsets[shard], self.offsets[shard + 1]
        rows, k = hi - lo, self.in_features
        if (shard, kind) in self._loaded:
            raise ValueError(f"{name}: appears twice in the checkpoint")
        floats = (torch.bfloat16, torch.float16, torch.float32)
        if not self.quantized or (self.quantize_on_load and kind == "weight"):
            if kind != "weight":
                raise ValueError(f"{name}: unexpected in a bf16 layer")
            self._expect(name, t, (rows, k), floats)
            if self.quantized:  # --quantization nvfp4: quantize this shard as ModelOpt would
                from nvfp4_kit import reference

                q = reference.quantize_weight(t.to(self.w_packed.device, torch.float32))
                self.w_packed[lo:hi].copy_(q["weight"])
                self.w_scale[lo:hi].copy_(q["weight_scale"])
                self.scalars[(shard, "weight_scale_2")] = q["weight_scale_2"].float().cpu()
            else:
                self.weight.data[lo:hi].copy_(t)
        elif kind == "weight":
            self._expect(name, t, (rows, k // 2), (torch.uint8,))
            self.w_packed[lo:hi].copy_(t)
        elif kind == "weight_scale":
            self._expect(name, t, (rows, k // 16), (torch.float8_e4m3fn,))
            self.w_scale[lo:hi].copy_(t)
        elif kind in _SCALAR_KINDS:
            if t.numel() != 1 or t.dtype not in floats:
                raise ValueError(f"{name}: expected one float32 value, got {t.dtype} {tuple(t.shape)}")
            raw = t.reshape(()).float().cpu()
            value = 1.0 / raw if reciprocal else raw
            if not torch.isfinite(value) or value <= 0:
                inverse = f" (its reciprocal {value.item()} is the scale)" if reciprocal else ""
                raise ValueError(f"{name}: {raw.item()} must give a finite scale > 0{inverse}")
            self.scalars[(shard, kind)] = value
        else:
            raise ValueError(f"{name}: unexpected tensor kind {kind!r}")
        self._loaded.add((shard, kind))

    def missing(self) -> list[str]:
        """Checkpoint tensors this layer still needs."""
        return [f"{self.names[s]}.{self.file_names.get(kind, kind)}" for s in range(self.num_shards)
                for kind in self.required_kinds() if (s, kind) not in self._loaded]

    def finalize(self) -> None:
        """Checks completeness and, for NVFP4, builds the fused alpha and prepares the kit weight."""
        missing = self.missing()
        if missing:
            raise ValueError(f"{missing[0]}: missing from the checkpoint ({len(missing)} in this layer)")
        self._loaded.clear()
        if not self.quantized:
            return
        ws2 = [self.scalars[(s, "weight_scale_2")] for s in range(self.num_shards)]
        ins = [self.scalars.get((s, "input_scale")) for s in range(self.num_shards)]
        if len(set(float(x) for x in ws2)) == 1:
            weight_scale_2 = ws2[0].reshape(1)
        else:  # per-output-channel: each shard's rows keep their own global scale
            weight_scale_2 = torch.cat(
                [x.reshape(1).expand(n) for x, n in zip(ws2, self.out_features, strict=True)])
        input_scale = None
        if all(x is not None for x in ins):
            input_scale = torch.stack(ins).max().reshape(1)
        elif any(x is not None for x in ins):  # a fused layer's shards must agree (W4A4 or not)
            absent = next(s for s, x in enumerate(ins) if x is None)
            raise ValueError(f"{self.names[absent]}.input_scale: missing from the checkpoint (the other "
                             f"shards of this fused layer have one)")
        self.set_prepared(self.w_packed, self.w_scale, weight_scale_2, input_scale)

    def set_prepared(self, w_packed, w_scale, weight_scale_2, input_scale) -> None:
        from nvfp4_kit import ops

        self.input_scale = input_scale  # what W4A4 quantizes activations with (check.py reads it)
        self.weight_scale_2 = weight_scale_2
        name = "+".join(self.names)
        try:
            self.pw = ops.prepare_weight(
                w_packed, w_scale, weight_scale_2, input_scale, backend=self.backend, mode=self.mode,
                name=name,
            )
        except ValueError as exc:  # e.g. W4A4 without an input_scale: say which layer
            raise ValueError(f"{name}: {exc}") from None
        # The prepared weight holds what the kernels read; drop the load buffers if it copied them.
        self.w_packed = self.w_scale = None
        self.scalars = {}

    # ------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantized:
            return F.linear(x, self.weight)
        from nvfp4_kit import ops

        if x.dtype in (torch.bfloat16, torch.float16):
            return ops.linear(x, self.pw)
        # fp32 engine (CPU check): the kit's API takes bf16 activations and returns bf16.
        return ops.linear(x.to(torch.bfloat16), self.pw).to(x.dtype)

    def extra_repr(self) -> str:
        kind = f"nvfp4 {self.pw.mode} {self.pw.backend.value}" if self.pw is not None else (
            "nvfp4" if self.quantized else str(self.dtype))
        return f"in={self.in_features}, out={self.out_features}, {kind}, shards={self.names}"
