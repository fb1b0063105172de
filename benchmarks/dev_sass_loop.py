"""Dev tool (static, no GPU): the SASS of the decode kernel's chunk loop, counted.

At decode the mma.sync consumer's instruction issue is what a chunk's time is made of (4 warps per CTA,
2-3 CTAs per SM, ~200-250 instructions per warp and 64 x 128 weight chunk; benchmarks/notes_gemm.md
v17), so the loop's instruction count is a number worth tracking between GPU runs. This compiles the
mma.sync kernel (bn 8 or 16, or bn 32 built on mma.sync) for sm_90a (CuTe DSL on the CPU), assembles its PTX
with ptxas, disassembles it, and counts the instructions from the full-barrier wait before the
first HMMA to the loop's branch after the last of the chunk's HMMAs (8 per token block of 8), by
opcode.

    CUTE_DSL_ARCH=sm_90a python benchmarks/dev_sass_loop.py [--bin DIR] [--dsmem 4] [--bn 16|32]

--bin: a directory with ptxas and nvdisasm (default: the triton wheel's, if triton is installed).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def _tool_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    try:
        import triton
    except ImportError:
        raise SystemExit("no --bin given and triton is not installed (it ships ptxas and nvdisasm)") from None
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def kernel_ptx(bn: int, dsmem_split: int) -> str:
    """The mma.sync kernel of bn 8 or 16 (the shipped stages) or bn 32 (which ships on wgmma, with
    5 stages: built here on mma.sync to compare loops)."""
    import cutlass.cute as cute

    from nvfp4_kit.kernels import gemm_sm90 as G
    from nvfp4_kit.kernels.gemm_sm90_kernel import Sm90W4A16Kernel

    split = {"dsmem_split": dsmem_split} if dsmem_split > 1 else {}
    kernel = Sm90W4A16Kernel(bn, 1, {8: 8, 16: 7, 32: 5}[bn], 2, True, sync_mma=True, **split)
    return cute.compile(kernel, *G._compile_args()).__ptx__


def sass_of(ptx: str, tools: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        # the DSL emits the newest PTX ISA version; older ptxas builds read the same text as 8.7
        src.write_text(re.sub(r"^\.version 9\.\d+", ".version 8.7", ptx, flags=re.M))
        subprocess.run([str(tools / "ptxas"), "-arch=sm_90a", str(src), "-o", str(cubin)], check=True)
        return subprocess.run(
            [str(tools / "nvdisasm"), "-c", str(cubin)], check=True, capture_output=True, text=True
        ).stdout


def chunk_loop(sass: str, n_mma: int) -> list[str]:
    """Opcodes of the loop around the first run of a chunk's n_mma HMMAs: from the TRYWAIT before
    it to the first branch after the last of them."""
    ops = [(m.group(3), line) for line in sass.splitlines() if (m := _INSTR.search(line))]
    hmma = [i for i, (op, _) in enumerate(ops) if op.startswith("HMMA")]
    if len(hmma) < n_mma:
        raise SystemExit(f"fewer than {n_mma} HMMAs: not the mma.sync kernel?")
    start = max(i for i in range(hmma[0]) if ops[i][0].startswith("SYNCS.PHASECHK"))
    end = next(i for i in range(hmma[n_mma - 1], len(ops)) if ops[i][0] == "BRA")
    return [op for op, _ in ops[start : end + 1]]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", help="directory with ptxas and nvdisasm")
    p.add_argument("--dsmem", type=int, default=1, help="dsmem_split of the kernel (1: the stream-K one)")
    p.add_argument("--bn", type=int, default=8, choices=(8, 16, 32), help="token tile (32: on mma.sync)")
    a = p.parse_args()
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
    os.environ["CUTE_DSL_KEEP"] = "ptx"  # (read when cutlass is first imported)
    dump = tempfile.TemporaryDirectory()  # where the DSL also writes the PTX file
    os.environ["CUTE_DSL_DUMP_DIR"] = dump.name
    loop = chunk_loop(sass_of(kernel_ptx(a.bn, a.dsmem), _tool_dir(a.bin)), 8 * (a.bn // 8))
    by_op = collections.Counter(op.split(".")[0] for op in loop)
    print(
        f"bn{a.bn} mma.sync decode chunk loop (dsmem_split {a.dsmem}): {len(loop)} SASS instructions "
        "per warp and chunk"
    )
    print("  " + ", ".join(f"{op} {n}" for op, n in by_op.most_common()))


if __name__ == "__main__":
    main()
