"""The one inline-PTX call form every hand-written instruction in the kit's kernels uses."""

from __future__ import annotations

from cutlass._mlir.dialects import llvm

__all__ = ["inline_ptx"]


def inline_ptx(result_type, operands: list, text: str, constraints: str, *, side_effects: bool):
    """llvm.inline_asm of PTX `text` (AT&T operand syntax, no stack realignment). side_effects=True
    keeps LLVM from reordering, merging or dropping it (stores, atomics, ordered loads)."""
    return llvm.inline_asm(
        result_type,
        operands,
        text,
        constraints,
        has_side_effects=side_effects,
        is_align_stack=False,
        asm_dialect=llvm.AsmDialect.AD_ATT,
    )
