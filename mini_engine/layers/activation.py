"""SiLU-and-multiply for the gated MLP: (T, 2I) = [gate | up] -> silu(gate) * up, (T, I)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

__all__ = ["SiluAndMul"]

if triton is not None:

    @triton.jit
    def _silu_mul_kernel(x_ptr, out_ptr, n, stride_x, stride_o, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n
        g = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + row * stride_x + n + cols, mask=mask, other=0.0).to(tl.float32)
        y = g / (1.0 + tl.exp(-g)) * u
        tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1] // 2
        if x.is_cuda and triton is not None and x.shape[0] > 0:
            out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
            block = 1024
            _silu_mul_kernel[(x.shape[0], triton.cdiv(n, block))](
                x, out, n, x.stride(0), out.stride(0), BLOCK=block, num_warps=4
            )
            return out
        return F.silu(x[..., :n]) * x[..., n:]
