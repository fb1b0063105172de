"""Trains mini_engine's built-in default model on CPU: a small Llama on Python's own documentation.

Steps (all offline, all from text that ships with CPython; see scripts/default_model_corpus.py):
  1. byte-level BPE tokenizer (`tokenizers`), saved as tokenizer.json + tokenizer_config.json with a
     simple chat template, so transformers' AutoTokenizer loads it;
  2. a transformers LlamaForCausalLM (GQA, RMSNorm, SiLU MLP, rope) trained in fp32 with AdamW;
  3. saved as a bf16 Hugging Face directory (save_pretrained) to --bf16-out;
  4. converted to a ModelOpt NVFP4 checkpoint with the engine's converter
     (`python -m mini_engine.make_checkpoint --from BF16 --format nvfp4 --out OUT`), unless --no-convert.

Usage (1800 steps of 8 x 512 tokens: ~0.6 s/step on an idle 2-core AMD EPYC, ~18 minutes; the
committed model took 48 minutes on a busy shared machine):
  python scripts/train_default_model.py --bf16-out build/default_model_bf16 \
      --out mini_engine/assets/default_model
Then measure it: python scripts/eval_default_model.py --bf16 build/default_model_bf16 \
      --nvfp4 mini_engine/assets/default_model
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_model_corpus import (  # noqa: E402
    CHAT_TEMPLATE,
    EOS,
    SPECIAL,
    heldout_texts,
    load_documents,
    training_texts,
)

ROPE_THETA = 10000.0


@dataclass(frozen=True)
class TrainConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 512
    seq_len: int = 512
    batch_size: int = 8
    steps: int = 1800
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0


def build_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE over the training texts -> transformers PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=TrainConfig.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )


def token_stream(tokenizer, texts: list[str], seed: int) -> torch.Tensor:
    """Documents in a seeded random order, each followed by EOS, as one long int64 tensor."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    encoded = tokenizer.backend_tokenizer.encode_batch([texts[i] for i in order],
                                                       add_special_tokens=False)
    ids: list[int] = []
    for enc in encoded:
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def build_model(cfg: TrainConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = tokenizer.convert_tokens_to_ids(EOS)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=ROPE_THETA,
        tie_word_embeddings=False,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model, data: torch.Tensor, seq_len: int, max_windows: int = 64) -> float:
    """Mean next-token loss over consecutive non-overlapping windows of `data`."""
    model.eval()
    n = min(max_windows, (len(data) - 1) // seq_len)
    x = data[: n * seq_len].view(n, seq_len)
    y = data[1: n * seq_len + 1].view(n, seq_len)
    total = 0.0
    for i in range(0, n, 16):
        logits = model(input_ids=x[i: i + 16]).logits.float()
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y[i: i + 16].reshape(-1), reduction="sum").item()
    model.train()
    return total / (n * seq_len)


def train(model, data: torch.Tensor, heldout: torch.Tensor, cfg: TrainConfig) -> None:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    t0 = time.time()
    for step in range(cfg.steps):
        starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        x = torch.stack([data[s: s + cfg.seq_len] for s in starts.tolist()])
        y = torch.stack([data[s + 1: s + cfg.seq_len + 1] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        # bf16 autocast: ~1.5x faster on this AVX512-BF16 CPU; master weights and AdamW stay fp32.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            msg = f"step {step:5d}/{cfg.steps} loss {loss.item():.3f} {time.time() - t0:6.0f}s"
            if step % 500 == 0 or step == cfg.steps - 1:
                msg += f" heldout ppl {math.exp(evaluate(model, heldout, cfg.seq_len)):.2f}"
            print(msg, flush=True)


def sample(model, tokenizer, prompt: str, n: int = 60) -> str:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:])


def _portable_configs(out: Path, rope_theta: float) -> None:
    """transformers 5 writes tokenizer_class "TokenizersBackend", the chat template in a separate
    chat_template.jinja and rope_theta inside "rope_parameters"; transformers 4.x (e.g. on the GPU
    box) and other readers need the classic fields too."""
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg.setdefault("rope_theta", rope_theta)
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bf16-out", default="build/default_model_bf16", type=Path)
    ap.add_argument("--out", default="mini_engine/assets/default_model", type=Path)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-convert", action="store_true", help="stop after the bf16 checkpoint")
    args = ap.parse_args(argv)
    cfg = TrainConfig(steps=args.steps)
    torch.set_num_threads(args.threads)

    docs = load_documents()
    texts = training_texts(docs)
    print(f"corpus: {len(docs)} documents, {len(texts)} training texts, "
          f"{sum(map(len, texts)) / 1e6:.2f} M chars", flush=True)
    tokenizer = build_tokenizer(texts, cfg.vocab_size)
    data = token_stream(tokenizer, texts, cfg.seed)
    heldout = token_stream(tokenizer, heldout_texts(docs), cfg.seed)
    print(f"tokens: train {len(data)}, held-out {len(heldout)}, vocab {len(tokenizer)}", flush=True)

    model = build_model(cfg, tokenizer)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params", flush=True)
    train(model, data, heldout, cfg)
    model.eval()
    for prompt in ['The "if" statement', "<|user|>\nWhat does json.dumps do?\n<|assistant|>\n"]:
        print(f"--- {prompt!r} ->\n{sample(model, tokenizer, prompt)}", flush=True)

    model.to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    args.bf16_out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.bf16_out)
    tokenizer.save_pretrained(args.bf16_out)
    _portable_configs(args.bf16_out, ROPE_THETA)
    print(f"saved bf16 checkpoint to {args.bf16_out}", flush=True)
    if not args.no_convert:
        cmd = [sys.executable, "-m", "mini_engine.make_checkpoint", "--from", str(args.bf16_out),
               "--format", "nvfp4", "--out", str(args.out)]
        print("converting:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
