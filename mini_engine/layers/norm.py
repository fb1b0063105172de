"""RMSNorm with the residual add fused in (torch on CPU; one Triton kernel per call on CUDA).

forward(x, residual) returns (norm(x + residual), x + residual) as HF Llama computes them: the sum is
rounded to the activation dtype first (it is the residual stream), the norm runs in fp32. On CUDA the
kernel updates `residual` in place, which saves the add's launch and an allocation per layer.
"""

from __future__ import annotations

import torch
from torch import nn

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch path serves
    triton = None

__all__ = ["RMSNorm"]

if triton is not None:

    @triton.jit
    def _rmsnorm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, n_cols, eps, stride_x, stride_r, stride_o,
                        HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
            s = (x + r).to(res_ptr.dtype.element_ty)  # the residual stream keeps the activation dtype
            tl.store(res_ptr + row * stride_r + cols, s, mask=mask)
            x = s.to(tl.float32)
        var = tl.sum(x * x, axis=0) / n_cols
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y = x * tl.rsqrt(var + eps) * w
        tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """x: (T, hidden). Returns norm(x) if residual is None, else (norm(x + residual), x + residual)."""
        if x.is_cuda and triton is not None and x.shape[0] > 0:
            return self._forward_triton(x, residual)
        if residual is not None:
            x = x + residual
            residual = x
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        y = self.weight * y.to(x.dtype)
        return y if residual is None else (y, residual)

    def _forward_triton(self, x: torch.Tensor, residual: torch.Tensor | None):
        out = torch.empty_like(x)
        n = x.shape[-1]
        block = triton.next_power_of_2(n)
        res = residual if residual is not None else x
        _rmsnorm_kernel[(x.shape[0],)](
            x, res, self.weight, out, n, self.eps, x.stride(0), res.stride(0), out.stride(0),
            HAS_RES=residual is not None, BLOCK=block, num_warps=min(16, max(1, block // 256)),
        )
        if residual is None:
            return out
        return out, residual
