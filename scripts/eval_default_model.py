"""Held-out perplexity of the built-in default model: bf16 vs NVFP4 W4A16 vs NVFP4 W4A4.

The reference is transformers' LlamaForCausalLM in fp32 on CPU, independent of mini_engine:
  bf16        the bf16 checkpoint written by scripts/train_default_model.py;
  NVFP4 W4A16 the committed ModelOpt NVFP4 checkpoint, every quantized linear's weight dequantized by
              nvfp4_kit.reference (e2m1 * block scale * weight_scale_2), activations unquantized;
  NVFP4 W4A4  the same weights, and each quantized linear's input fake-quantized to NVFP4 with the
              checkpoint's calibrated input_scale (global scale 1 / input_scale), as Blackwell's
              block-scaled MMA (and nvfp4_kit's W4A4 mode) computes it.
Held-out text: the 5 % of documents train_default_model.py never trained on (split by name hash),
tokenized and joined with EOS as in training, scored in non-overlapping 512-token windows.

    python scripts/eval_default_model.py --bf16 build/default_model_bf16 \
        --nvfp4 mini_engine/assets/default_model [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_model_corpus import EOS, heldout_texts, load_documents  # noqa: E402
from train_default_model import evaluate  # noqa: E402

from nvfp4_kit import reference  # noqa: E402


def heldout_ids(tokenizer) -> torch.Tensor:
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for text in heldout_texts(load_documents()):
        ids.extend(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def perplexity(model, data: torch.Tensor, seq_len: int) -> tuple[float, int]:
    """(perplexity, tokens scored) over every whole window of `data`."""
    windows = (len(data) - 1) // seq_len
    return math.exp(evaluate(model, data, seq_len, max_windows=windows)), windows * seq_len


class FakeQuantInput(torch.nn.Module):
    """Wraps a linear: x -> NVFP4 quantize-dequantize (global = 1/input_scale) -> linear (W4A4)."""

    def __init__(self, linear: torch.nn.Linear, input_scale: float):
        super().__init__()
        self.linear = linear
        self.global_scale = torch.tensor(1.0 / input_scale, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        xq = reference.quantize_dequantize(x2, self.global_scale) / self.global_scale
        return self.linear(xq.reshape(shape).to(x.dtype))


def load_nvfp4_as_fp32(nvfp4_dir: Path, w4a4: bool):
    """A transformers fp32 model whose quantized linears hold the dequantized NVFP4 weights."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads((nvfp4_dir / "config.json").read_text())
    cfg.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).float()
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(nvfp4_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    state, input_scales = {}, {}
    for name, t in tensors.items():
        if name.endswith(".weight_scale") or name.endswith(".weight_scale_2") or \
                name.endswith(".input_scale"):
            continue
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix and f"{prefix}.weight_scale" in tensors:
            w = reference.dequantize(t, tensors[f"{prefix}.weight_scale"])
            state[name] = w * tensors[f"{prefix}.weight_scale_2"].float()
            input_scales[prefix] = float(tensors[f"{prefix}.input_scale"])
        else:
            state[name] = t.float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary" not in m]
    if missing or unexpected:
        raise ValueError(f"nvfp4 checkpoint: missing {missing}, unexpected {unexpected}")
    if w4a4:
        for prefix, scale in input_scales.items():
            parent_name, _, child = prefix.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, FakeQuantInput(getattr(parent, child), scale))
    return model, len(input_scales)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bf16", type=Path, default=Path("build/default_model_bf16"))
    ap.add_argument("--nvfp4", type=Path, default=Path("mini_engine/assets/default_model"))
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(args.nvfp4))
    data = heldout_ids(tokenizer)
    rows = {}
    if args.bf16.is_dir():
        bf16 = LlamaForCausalLM.from_pretrained(str(args.bf16), dtype=torch.float32)
        rows["bf16"] = perplexity(bf16, data, args.seq_len)
    else:
        print(f"(no bf16 checkpoint at {args.bf16}: skipping the bf16 row)")
    for label, w4a4 in (("NVFP4 W4A16", False), ("NVFP4 W4A4", True)):
        model, n_quant = load_nvfp4_as_fp32(args.nvfp4, w4a4)
        rows[label] = perplexity(model, data, args.seq_len)
    print(f"held-out perplexity ({rows[label][1]} tokens, {args.seq_len}-token windows, "
          f"{n_quant} NVFP4 linears; transformers fp32 reference on CPU)")
    print("| weights / activations | perplexity |\n|---|---|")
    for name, (ppl, _) in rows.items():
        print(f"| {name} | {ppl:.3f} |")
    result = {name: {"perplexity": ppl, "tokens": n} for name, (ppl, n) in rows.items()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
