"""Synthetic checkpoints in the exact Hugging Face / ModelOpt layout, and bf16 -> NVFP4 conversion.

    python -m mini_engine.make_checkpoint --preset tiny --format bf16 --out /tmp/tiny-bf16
    python -m mini_engine.make_checkpoint --preset llama-3.1-8b --format nvfp4 --out /tmp/l8b-nvfp4
    python -m mini_engine.make_checkpoint --from /tmp/tiny-bf16 --out /tmp/tiny-nvfp4

A preset's weights are N(0, 0.02) from --seed (norms 1), so --format bf16 and --format nvfp4 with the
same seed are the same model: the NVFP4 one is quantized from those bf16 weights by
nvfp4_kit.reference.quantize_weight, per checkpoint linear, as ModelOpt exports them (weight uint8
[N, K/2], weight_scale e4m3 [N, K/16], weight_scale_2 and input_scale fp32 scalars; lm_head stays
bf16). input_scale = amax / (448*6) of each linear's input, calibrated by running the bf16 model
(transformers' LlamaForCausalLM) over text that ships with Python. Tokenizer files come from the
preset (or are copied from --from's directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch

from . import env
from .config import ModelConfig
from .presets import preset_config, preset_tokenizer

__all__ = ["hf_llama", "random_state_dict", "quantize_state_dict", "calibrate_input_amax",
           "save_checkpoint", "main"]

log = logging.getLogger("mini_engine.make_checkpoint")

_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.model", "chat_template.jinja", "chat_template.json", "generation_config.json")
_SHARD_BYTES = 4 << 30


def _shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    mc = ModelConfig.from_dict(cfg)  # the loader's reading: defaults (e.g. no num_key_value_heads) agree
    h, inter, d = mc.hidden_size, mc.intermediate_size, mc.head_dim
    q, kv = mc.num_attention_heads * d, mc.num_key_value_heads * d
    per_layer = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                 "self_attn.o_proj": (h, q), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
                 "mlp.down_proj": (h, inter)}
    out = {"model.embed_tokens.weight": (mc.vocab_size, h)}
    for i in range(mc.num_hidden_layers):
        p = f"model.layers.{i}"
        out[f"{p}.input_layernorm.weight"] = (h,)
        out.update({f"{p}.{name}.weight": shape for name, shape in per_layer.items()})
        out[f"{p}.post_attention_layernorm.weight"] = (h,)
    out["model.norm.weight"] = (h,)
    if not mc.tie_word_embeddings:
        out["lm_head.weight"] = (mc.vocab_size, h)
    return out


def random_state_dict(cfg: dict, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """bf16 weights of a Llama config: N(0, 0.02), norms 1 (deterministic for a seed and device type)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    sd = {}
    for name, shape in _shapes(cfg).items():
        if name.endswith("norm.weight"):
            sd[name] = torch.ones(shape, dtype=torch.bfloat16, device=device)
        else:
            w = torch.empty(shape, dtype=torch.float32, device=device).normal_(0.0, 0.02, generator=gen)
            sd[name] = w.to(torch.bfloat16)
    return sd


def hf_llama(cfg: dict, sd: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype):
    """transformers' LlamaForCausalLM holding `sd` (no random init, no copy when dtypes match)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    keep = {k: v for k, v in cfg.items() if k not in ("architectures", "quantization_config")}
    hf_cfg = LlamaConfig(**keep)
    with torch.device("meta"):  # no allocation, no random init: the state dict's tensors are adopted
        model = LlamaForCausalLM(hf_cfg)
    missing, _ = model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in sd.items()},
                                       strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and hf_cfg.tie_word_embeddings)]
    if missing:
        raise ValueError(f"{missing[0]}: missing from the state dict")
    with torch.device(device):  # its inv_freq buffer is not in the state dict: rebuild it
        model.model.rotary_emb = type(model.model.rotary_emb)(hf_cfg)
    if hf_cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(dtype).eval()


@torch.no_grad()
def calibrate_input_amax(cfg: dict, sd: dict[str, torch.Tensor], tokenizer, num_tokens: int = 1024,
                         seq_len: int = 256) -> dict[str, float]:
    """Max |input| of every decoder linear over pydoc text, running transformers' Llama in bf16."""
    from .tokenizer import _training_text

    device = next(iter(sd.values())).device
    model = hf_llama(cfg, sd, device, torch.bfloat16)
    amax: dict[str, float] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            def hook(_m, args, name=name):
                amax[name] = max(amax.get(name, 0.0), args[0].detach().abs().max().float().item())
            hooks.append(mod.register_forward_pre_hook(hook))
    text = "\n".join(_training_text())[: num_tokens * 8]  # plenty of characters for num_tokens
    ids = tokenizer(text, add_special_tokens=False).input_ids[:num_tokens]
    for start in range(0, len(ids), seq_len):
        chunk = [tokenizer.bos_token_id or 0] + ids[start:start + seq_len - 1]
        model(torch.tensor([chunk], device=device))
    for h in hooks:
        h.remove()
    return amax


def quantize_state_dict(cfg: dict, sd: dict[str, torch.Tensor], amax: dict[str, float]) -> dict:
    """bf16 state dict -> ModelOpt NVFP4 tensors (lm_head, embedding and norms stay bf16)."""
    from nvfp4_kit import reference

    out = {}
    for name, t in sd.items():
        module = name[: -len(".weight")]
        if module.endswith(_LINEARS):
            q = reference.quantize_weight(t.float())
            out[f"{module}.weight"] = q["weight"]
            out[f"{module}.weight_scale"] = q["weight_scale"]
            out[f"{module}.weight_scale_2"] = q["weight_scale_2"].float().reshape(())
            a = max(amax.get(module, 0.0), 1e-6)
            out[f"{module}.input_scale"] = torch.tensor(a / (448.0 * 6.0), dtype=torch.float32)
        else:
            out[name] = t.to(torch.bfloat16)
    return out


def save_checkpoint(out_dir: Path, cfg: dict, tensors: dict[str, torch.Tensor], tokenizer=None,
                    nvfp4: bool = False, tokenizer_dir: Path | None = None) -> None:
    """Writes config.json (+ hf_quant_config.json), generation_config.json, safetensors shards (+ index)."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = dict(cfg)
    if nvfp4:
        quant = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                 "exclude_modules": ["lm_head"]}
        producer = {"name": "modelopt", "version": "0.29.0",
                    "note": "synthetic: written by mini_engine.make_checkpoint (nvfp4_kit.reference)"}
        (out_dir / "hf_quant_config.json").write_text(
            json.dumps({"producer": producer, "quantization": quant}, indent=2))
        cfg["quantization_config"] = {"quant_method": "modelopt", **quant, "producer": producer}
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if size + nbytes > _SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().to("cpu").contiguous()
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(tqdm(shards, desc="writing", disable=not env.progress_bars())):
        n = len(shards)
        fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    if tokenizer_dir is not None:
        for f in _TOKENIZER_FILES:
            if (tokenizer_dir / f).is_file():
                shutil.copy2(tokenizer_dir / f, out_dir / f)
    elif tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    if not (out_dir / "generation_config.json").is_file():
        eos = cfg.get("eos_token_id")
        gen = {"bos_token_id": cfg.get("bos_token_id"), "eos_token_id": eos, "do_sample": False}
        (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2))


def _read_bf16_dir(path: Path, device: torch.device) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    from .config import ModelConfig, QuantConfig

    cfg = json.loads((path / "config.json").read_text())
    ModelConfig.from_dict(cfg)  # a Llama? (ValueError otherwise)
    if QuantConfig.from_dir(path) is not None:
        raise ValueError(f"--from {path}: already quantized; expected a bf16 checkpoint")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"--from {path}: no *.safetensors files")
    sd = {}
    for f in files:
        sd.update({k: v.to(device) for k, v in load_file(str(f)).items()})
    sd.pop("lm_head.weight", None) if cfg.get("tie_word_embeddings") else None
    expected = _shapes(cfg)
    for name, shape in expected.items():
        if name not in sd:
            raise ValueError(f"{name}: missing from {path}")
        if tuple(sd[name].shape) != shape:
            raise ValueError(f"{name}: shape {tuple(sd[name].shape)}, expected {shape}")
    return cfg, {k: sd[k].to(torch.bfloat16) for k in expected}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mini_engine.make_checkpoint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="tiny | llama-3.1-8b")
    src.add_argument("--from", dest="src", type=Path, help="bf16 HF Llama directory to convert to NVFP4")
    ap.add_argument("--format", choices=("bf16", "nvfp4"), default="nvfp4")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="where to generate/quantize (auto: cuda if present)")
    ap.add_argument("--calib-tokens", type=int, default=1024)
    ap.add_argument("--num-layers", type=int, default=None,
                    help="override the preset's num_hidden_layers (same GEMM shapes, shallower model)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    try:
        if args.src is not None:
            if args.num_layers is not None:
                raise ValueError("--num-layers: only with --preset")
            if args.format != "nvfp4":
                raise ValueError("--format: --from converts to nvfp4 only")
            from transformers import AutoTokenizer

            cfg, sd = _read_bf16_dir(args.src, device)
            tok, tok_dir = AutoTokenizer.from_pretrained(str(args.src)), args.src
        else:
            cfg, tok, tok_dir = preset_config(args.preset), preset_tokenizer(args.preset), None
            if args.num_layers is not None:
                if args.num_layers < 1:
                    raise ValueError(f"--num-layers: {args.num_layers}, expected >= 1")
                cfg["num_hidden_layers"] = args.num_layers
            sd = random_state_dict(cfg, args.seed, device)
        if args.format == "nvfp4":
            amax = calibrate_input_amax(cfg, sd, tok, args.calib_tokens)
            sd = quantize_state_dict(cfg, sd, amax)
        save_checkpoint(args.out, cfg, sd, tok, args.format == "nvfp4", tok_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.format} checkpoint to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
