"""End-to-end correctness: mini_engine vs transformers' LlamaForCausalLM (fp32) on the same weights.

    python -m mini_engine.check --preset tiny                       # synthesizes bf16 + NVFP4, all modes
    python -m mini_engine.check --model DIR --modes w4a16,w4a4      # an NVFP4 checkpoint
    python -m mini_engine.check --model DIR --modes bf16,w4a16      # a bf16 one (w4a16 quantizes on load)

For each mode the engine generates greedily for a few prompts (continuous batching with a small token
budget, so chunked prefill and mixed prefill/decode steps are exercised) while a hook records the
logits it sampled from. The reference then runs teacher-forced on prompt + the engine's tokens, in
fp32, with the checkpoint's weights dequantized by nvfp4_kit.reference (W = e2m1 * sf * weight_scale_2).
The kit's linear API takes and returns bf16, so the reference rounds each NVFP4 linear's input and
output to bf16 too (without that, W4A4 is not comparable: a one-ulp difference at a quantizer input
flips an e2m1 code, and RMSNorm amplifies it). W4A4: the bf16 input is then fake-quantized with
reference.quantize_dequantize under the global scale the engine uses, 1/input_scale, where a fused
GEMM (qkv, gate_up) takes the max of its shards' input_scale.

Noise floor: the reference also runs again in other legal precisions of the same math, and
floor = max |variant - ref| / s over them is what an exact implementation can differ by on this
model: (a) its NVFP4 GEMMs accumulated in float64 instead of float32 (another summation order, as any
kernel has); (b) each NVFP4 linear's fp32 input jittered by a few ulps (2^-20 relative) before its
bf16 rounding, as another fp32 implementation of norms, rope and attention differs (approximate
rsqrt/exp, another reduction order); (c) for a bf16 engine, its residual stream rounded to bf16
after every decoder layer (what a bf16 engine keeps). W4A4 is the sensitive mode: a one-ulp bf16
change at a quantizer input can move an e2m1 code, and the change compounds over layers. On deep
random-weight models the floor is large (the 8B preset's 32 layers, W4A4: ~0.9).
Above INCONCLUSIVE_FLOOR (0.25) the comparison cannot tell a right engine from a wrong one: the mode
is reported INCONCLUSIVE (not a pass); check a shallower model of the same shapes instead
(make_checkpoint --num-layers). Whatever the floor, each NVFP4 linear is also compared with the
reference on the engine's own inputs by the GPU tests (tests/mini_engine/test_gpu.py).

Criteria, per generated position, with s = max |reference logit| at that position and
tol_eff = max(tol, 2 * floor):
- logits: max |engine - reference| <= tol_eff * s   (tol per engine dtype and mode: TOLERANCES)
- tokens: engine token == reference argmax, or a flip with margin ref[argmax] - ref[engine token]
  < delta = 2 * tol_eff * s (two logits each within tol_eff*s can swap only then); flips are listed.
Exit status 1 when any mode fails or is inconclusive.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["TOLERANCES", "INCONCLUSIVE_FLOOR", "ModeResult", "run_mode", "main"]

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a land far away, there lived a",
    "1, 2, 3, 4, 5,",
]
# (engine dtype, mode) -> tol. fp32 bf16: summation order only. NVFP4 on the fp32 CPU engine: the
# kit's linear takes and returns bf16, so each quantized GEMM rounds its input and output to bf16.
TOLERANCES = {
    ("float32", "bf16"): 1e-3,
    ("float32", "w4a16"): 1e-2,
    ("float32", "w4a4"): 1e-2,
    ("bfloat16", "bf16"): 6e-2,
    ("bfloat16", "w4a16"): 6e-2,
    ("bfloat16", "w4a4"): 6e-2,
}
# A noise floor above this (tol_eff >= 0.5: half the largest logit) accepts almost any engine.
INCONCLUSIVE_FLOOR = 0.25
_FUSED = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


@dataclass
class ModeResult:
    mode: str
    engine_dtype: str
    positions: int = 0
    exact: int = 0
    flips: list[tuple[int, int, float, float]] = field(default_factory=list)  # prompt, pos, margin, delta
    bad_flips: int = 0
    max_rel_err: float = 0.0
    tol: float = 0.0
    noise_floor: float = 0.0  # max |ref variant - ref| / s: what exact math may differ by
    floor_variant: str = ""  # the reference variant that set the floor
    error: str | None = None

    @property
    def tol_eff(self) -> float:
        return max(self.tol, 2 * self.noise_floor)

    @property
    def inconclusive(self) -> bool:
        return self.error is None and self.noise_floor > INCONCLUSIVE_FLOOR

    @property
    def passed(self) -> bool:
        ok = self.error is None and self.bad_flips == 0 and self.positions > 0
        return ok and not self.inconclusive and self.max_rel_err <= self.tol_eff

    @property
    def verdict(self) -> str:
        if self.error:
            return f"FAIL: {self.error}"
        if self.inconclusive:
            return "INCONCLUSIVE"
        return "PASS" if self.passed else "FAIL"


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def reference_weights(path: Path, quantize: bool, device: str = "cpu"
                      ) -> tuple[dict, dict[str, torch.Tensor], dict[str, float]]:
    """(config, fp32 state dict with NVFP4 linears dequantized on `device`, W4A4 input scale per
    linear module)."""
    from nvfp4_kit import reference

    cfg = json.loads((path / "config.json").read_text())
    raw = {k: v.to(device) for k, v in _load_tensors(path).items()}
    sd, in_scale = {}, {}
    for name, t in raw.items():
        module, _, kind = name.rpartition(".")
        if kind == "weight" and t.dtype == torch.uint8:
            ws2 = raw[f"{module}.weight_scale_2"]
            sd[name] = reference.dequantize(t, raw[f"{module}.weight_scale"]) * ws2
            in_scale[module] = float(raw[f"{module}.input_scale"])
        elif kind == "weight" and t.is_floating_point():
            if quantize and module.rsplit(".", 1)[-1] in (*_FUSED, "o_proj", "down_proj"):
                q = reference.quantize_weight(t.float())  # what --quantization nvfp4 does on load
                t = reference.dequantize(q["weight"], q["weight_scale"]) * q["weight_scale_2"]
                in_scale[module] = 1.0  # no activation scale: W4A16 only (marks the layer as NVFP4)
            sd[name] = t.float()
    fused: dict[str, float] = {}  # one activation scale per fused GEMM: the max of its shards'
    for module, s in in_scale.items():
        parent, _, leaf = module.rpartition(".")
        key = f"{parent}.{_FUSED.get(leaf, leaf)}"
        fused[key] = max(fused.get(key, 0.0), s)
    w4a4 = {m: fused[f"{m.rpartition('.')[0]}.{_FUSED.get(m.rpartition('.')[2], m.rpartition('.')[2])}"]
            for m in in_scale}
    return cfg, sd, w4a4


def _engine_run(model: str, mode: str, nvfp4_dir: bool, prompts: list[list[int]], max_tokens: int,
                device: str, dtype: str = "auto", enforce_eager: bool = False
                ) -> tuple[list[list[int]], list[list[torch.Tensor]], str]:
    from .llm import LLM
    from .sampling_params import SamplingParams

    opts = dict(device=device, dtype=dtype, max_num_seqs=4, max_num_batched_tokens=32, max_model_len=512,
                kv_cache_blocks=256, enable_prefix_caching=False, enforce_eager=enforce_eager)
    if mode != "bf16":
        opts["nvfp4_mode"] = mode
        opts["quantization"] = "auto" if nvfp4_dir else "nvfp4"
    llm = LLM(model, **opts)
    logits: dict[str, list[torch.Tensor]] = {}

    def hook(seqs, lg):
        for s, row in zip(seqs, lg, strict=False):
            logits.setdefault(s.request_id, []).append(row.float().cpu())

    llm.engine.runner.logits_hook = hook
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    dtype = str(llm.engine.runner.dtype).replace("torch.", "")
    tokens = [o.outputs[0].token_ids for o in outs]
    recorded = [logits[o.request_id] for o in outs]
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return tokens, recorded, dtype


def _fp64_accumulating_forward(mod):
    """nn.Linear forward that sums in float64 (weights upcast per call: no resident fp64 copy)."""
    def forward(x):
        return torch.nn.functional.linear(x.double(), mod.weight.double()).float()
    return forward


def _bf16_layer_output(_mod, _args, out):
    """Decoder-layer forward hook: the residual stream leaves each layer rounded to bf16."""
    if isinstance(out, tuple):
        return (out[0].to(torch.bfloat16).float(), *out[1:])
    return out.to(torch.bfloat16).float()


REFERENCE_VARIANTS = ("fp32", "fp64_accumulation", "fp32_jitter", "bf16_residual")
# fp32_jitter: every NVFP4 linear's input times (1 + u * 2^-20), u uniform in [-1, 1] (fixed seed):
# the few-ulp differences any other fp32 implementation of norms, rope and attention has
# (approximate rsqrt/exp, another reduction order), applied before the bf16 rounding they can flip.
_JITTER = 2.0 ** -20


@torch.no_grad()
def _reference_logits(cfg, sd, in_scales: dict[str, float], w4a4: bool, seqs: list[list[int]],
                      device: str, variant: str = "fp32"):
    from nvfp4_kit import reference

    from .make_checkpoint import hf_llama

    if variant not in REFERENCE_VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {REFERENCE_VARIANTS}")
    model = hf_llama(cfg, sd, torch.device(device), torch.float32)
    gen = torch.Generator().manual_seed(0)
    if variant == "bf16_residual":
        for layer in model.model.layers:
            layer.register_forward_hook(_bf16_layer_output)
    for name, mod in model.named_modules():
        if name not in in_scales:  # bf16 layers (and bf16 checkpoints) stay plain fp32
            continue
        s = in_scales[name]

        def bf16_input(_m, args, s=s):  # the kit's linear takes bf16 (W4A4: then fake-quantized)
            x = args[0]
            if variant == "fp32_jitter":
                u = torch.rand(x.shape, generator=gen, device="cpu").to(x.device) * 2 - 1
                x = x * (1 + u * _JITTER)
            x = x.to(torch.bfloat16)
            if w4a4:
                x2 = reference.quantize_dequantize(x.reshape(-1, x.shape[-1]), torch.tensor(1.0 / s)) * s
                x = x2.reshape(x.shape)
            return (x.float(),)

        if variant == "fp64_accumulation":
            mod.forward = _fp64_accumulating_forward(mod)
        mod.register_forward_pre_hook(bf16_input)
        mod.register_forward_hook(lambda _m, _a, y: y.to(torch.bfloat16).float())  # and returns bf16
    out = [model(torch.tensor([s], device=device)).logits[0].float().cpu() for s in seqs]
    del model
    return out


def run_mode(model: str, mode: str, max_tokens: int = 12, device: str = "auto",
             ref_device: str = "cpu", dtype: str = "auto", enforce_eager: bool = False) -> ModeResult:
    from .config import QuantConfig
    from .tokenizer import load_tokenizer

    path = Path(model)
    nvfp4_dir = QuantConfig.from_dir(path) is not None
    if mode == "bf16" and nvfp4_dir:
        return ModeResult(mode, "-", error="bf16 mode needs a bf16 checkpoint (this one is NVFP4)")
    if mode == "w4a4" and not nvfp4_dir:
        return ModeResult(mode, "-", error="w4a4 needs calibrated input_scale: use an NVFP4 checkpoint")
    tok = load_tokenizer(path)
    prompts = [tok(p).input_ids for p in PROMPTS]
    tokens, eng_logits, dtype = _engine_run(model, mode, nvfp4_dir, prompts, max_tokens, device, dtype,
                                            enforce_eager)
    cfg, sd, in_scales = reference_weights(path, quantize=(mode != "bf16" and not nvfp4_dir),
                                           device=ref_device)
    seqs = [p + t[:-1] for p, t in zip(prompts, tokens, strict=False)]
    scales = in_scales if mode != "bf16" else {}
    ref = _reference_logits(cfg, sd, scales, mode == "w4a4", seqs, ref_device)
    res = ModeResult(mode, dtype, tol=TOLERANCES[(dtype, mode)])
    variants = ["fp64_accumulation", "fp32_jitter"] + (["bf16_residual"] if dtype == "bfloat16" else [])
    for variant in variants:
        alt = _reference_logits(cfg, sd, scales, mode == "w4a4", seqs, ref_device, variant)
        for p, toks, r, ra in zip(prompts, tokens, ref, alt, strict=False):
            rows = slice(len(p) - 1, len(p) - 1 + len(toks))
            floor = ((ra[rows] - r[rows]).abs().amax(-1) / r[rows].abs().amax(-1)).max().item()
            if floor > res.noise_floor:
                res.noise_floor, res.floor_variant = floor, variant
        del alt
    for i, (p, toks, lg, r) in enumerate(zip(prompts, tokens, eng_logits, ref, strict=False)):
        for j, (tk, e) in enumerate(zip(toks, lg, strict=False)):
            rj = r[len(p) - 1 + j]
            scale = rj.abs().max().item()
            res.max_rel_err = max(res.max_rel_err, (e - rj).abs().max().item() / scale)
            res.positions += 1
            top = int(rj.argmax())
            if tk == top:
                res.exact += 1
                continue
            margin, delta = (rj[top] - rj[tk]).item(), 2 * res.tol_eff * scale
            res.flips.append((i, j, margin, delta))
            res.bad_flips += margin >= delta
    return res


def print_table(results: list[ModeResult]) -> None:
    head = (f"{'mode':6} {'dtype':9} {'positions':>9} {'exact':>6} {'flips':>6} "
            f"{'max|dlogit|/max|ref|':>21} {'floor':>8} {'tol':>7}  result (floor from)")
    print(head)
    print("-" * len(head))
    for r in results:
        if r.error:
            print(f"{r.mode:6} {r.engine_dtype:9} {'-':>9} {'-':>6} {'-':>6} {'-':>21} {'-':>8} {'-':>7}  "
                  f"FAIL: {r.error}")
            continue
        print(f"{r.mode:6} {r.engine_dtype:9} {r.positions:9d} {r.exact:6d} {len(r.flips):6d} "
              f"{r.max_rel_err:21.2e} {r.noise_floor:8.1e} {r.tol_eff:7.1e}  {r.verdict} "
              f"({r.floor_variant or '-'})")
        if r.inconclusive:
            print(f"    noise floor {r.noise_floor:.2f} > {INCONCLUSIVE_FLOOR}: exact math in another legal "
                  "precision moves the logits this much on this model, so no engine can be told right "
                  "or wrong here; check a shallower model of the same shapes (make_checkpoint --num-layers)")
        for prompt, pos, margin, delta in r.flips:
            verdict = "accepted" if margin < delta else "REJECTED"
            print(f"    flip: prompt {prompt} position {pos}: reference margin {margin:.4g} "
                  f"vs delta {delta:.4g} ({verdict})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mini_engine.check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint directory (bf16 or NVFP4)")
    src.add_argument("--preset", help="synthesize bf16 + NVFP4 checkpoints of this preset into a temp dir")
    ap.add_argument("--modes", default=None, help="comma list of bf16,w4a16,w4a4 (default: all that apply)")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--device", default="auto", help="engine device")
    ap.add_argument("--ref-device", default="cpu", help="reference device (fp32; cuda for the 8B preset)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                    help="engine activation dtype (auto: bf16 on CUDA, fp32 on CPU); float32 on CUDA "
                         "isolates the kit's kernels from bf16 drift of the residual stream")
    ap.add_argument("--enforce-eager", action="store_true", help="engine without CUDA graphs")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.modes:
        modes = args.modes.split(",")
    elif args.model:  # all that apply to this checkpoint
        from .config import QuantConfig

        nvfp4 = QuantConfig.from_dir(Path(args.model)) is not None
        modes = ["w4a16", "w4a4"] if nvfp4 else ["bf16", "w4a16"]
    else:
        modes = ["bf16", "w4a16", "w4a4"]
    bad = [m for m in modes if m not in ("bf16", "w4a16", "w4a4")]
    if bad:
        print(f"error: --modes: unknown mode {bad[0]!r}", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.preset:
            from .make_checkpoint import main as make

            for fmt in ("bf16", "nvfp4"):
                if make(["--preset", args.preset, "--format", fmt, "--out", f"{tmp}/{fmt}"]) != 0:
                    return 2
        for mode in modes:
            model = args.model or f"{tmp}/{'bf16' if mode == 'bf16' else 'nvfp4'}"
            try:
                results.append(run_mode(model, mode, args.max_tokens, args.device, args.ref_device,
                                        args.dtype, args.enforce_eager))
            except ValueError as exc:
                results.append(ModeResult(mode, "-", error=str(exc)))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(
            [{**r.__dict__, "tol_eff": r.tol_eff, "passed": r.passed, "verdict": r.verdict} for r in results],
            indent=1))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
