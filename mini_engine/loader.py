"""Model loading: resolve --model, read config + quantization metadata, stream safetensors into the
model (or fill it with random "dummy" weights on the device).

Accepted checkpoints (Hugging Face layout: config.json + *.safetensors [+ model.safetensors.index.json]):
- bf16/fp16/fp32 Llama (HF transformers' save_pretrained);
- ModelOpt NVFP4 (hf_quant_config.json or config.json quantization_config with quant_algo NVFP4):
  per linear `weight` uint8 [N, K/2], `weight_scale` e4m3 [N, K/16], `weight_scale_2` fp32 scalar,
  `input_scale` fp32 scalar; excluded modules (lm_head) in bf16;
- llm-compressor compressed-tensors "nvfp4-pack-quantized": `weight_packed`, `weight_scale`,
  `weight_global_scale` / `input_global_scale` (= 1 / ModelOpt's scales: inverted on load).
Tensors we do not use (FP8 KV-cache k_scale/v_scale, rotary inv_freq, ...) are skipped with one
warning. A missing tensor, a wrong shape or dtype raises ValueError naming the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from . import env
from .config import ModelConfig, QuantConfig
from .presets import is_preset, preset_config

__all__ = ["resolve_model_path", "load_configs", "resolve_quantization", "load_weights",
           "init_dummy_weights"]

log = logging.getLogger("mini_engine.loader")

# checkpoint suffix -> (our tensor kind, invert?) ; compressed-tensors stores reciprocal scales
_KINDS = {
    "weight": ("weight", False), "weight_packed": ("weight", False), "weight_scale": ("weight_scale", False),
    "weight_scale_2": ("weight_scale_2", False), "input_scale": ("input_scale", False),
    "weight_global_scale": ("weight_scale_2", True), "input_global_scale": ("input_scale", True),
}
_SILENT = ("weight_shape", "rotary_emb.inv_freq")
# our kind -> the file's name, per quantization format (for messages that name the file's tensors)
_FILE_NAMES = {"compressed-tensors": {"weight": "weight_packed", "weight_scale_2": "weight_global_scale",
                                      "input_scale": "input_global_scale"}}


def resolve_model_path(model: str) -> Path:
    """A local directory, or a hub id resolved ONLY from the local Hugging Face cache (no network)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(model, local_files_only=True))
        except Exception as exc:  # LocalEntryNotFoundError and friends: not cached here
            reason = f"{type(exc).__name__}"
        else:  # pragma: no cover
            reason = ""
    else:
        reason = "not a directory"
    raise ValueError(
        f"model={model!r}: not found ({reason}). mini_engine never downloads: pass a local directory, or "
        f"fetch it into the Hugging Face cache first (`huggingface-cli download {model}` on a machine "
        "with network access), or make a synthetic checkpoint of the same shape: `python -m "
        "mini_engine.make_checkpoint --preset llama-3.1-8b --format nvfp4 --out DIR`, or benchmark "
        "without one: --load-format dummy --model llama-3.1-8b"
    )


def load_configs(model: str, load_format: str) -> tuple[ModelConfig, QuantConfig | None, Path | None]:
    """(architecture, NVFP4 metadata or None, checkpoint dir or None for a dummy preset)."""
    if load_format == "dummy" and is_preset(model) and not Path(model).is_dir():
        return ModelConfig.from_dict(preset_config(model)), None, None
    path = resolve_model_path(model)
    cfg = ModelConfig.from_dir(path)
    gen = path / "generation_config.json"
    if gen.is_file():  # Instruct models list several end-of-turn ids here
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
        if ids:
            cfg = dataclasses.replace(cfg, eos_token_ids=tuple(dict.fromkeys(cfg.eos_token_ids + ids)))
    return cfg, QuantConfig.from_dir(path), path


def resolve_quantization(quantization: str, quant: QuantConfig | None, from_checkpoint: bool
                         ) -> tuple[QuantConfig | None, bool]:
    """(NVFP4 metadata to build the model with, quantize bf16 weights on load?) for --quantization.

    auto: what the checkpoint is. modelopt_fp4: the checkpoint must be NVFP4. nvfp4: NVFP4 either way
    (a bf16 checkpoint is quantized on load, W4A16 only: it has no activation scales; dummy weights
    are random NVFP4). none: bf16 (an NVFP4 checkpoint cannot be served as bf16).
    """
    default = QuantConfig("modelopt", 16, ("lm_head",))
    if quant is not None:
        if quantization == "none":
            raise ValueError("quantization='none': the checkpoint is NVFP4; use auto (or a bf16 checkpoint)")
        return quant, False
    if quantization == "modelopt_fp4" and from_checkpoint:
        raise ValueError("quantization='modelopt_fp4': the checkpoint has no NVFP4 quantization metadata")
    if quantization in ("nvfp4", "modelopt_fp4"):
        return default, from_checkpoint
    return None, False


def _files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({path / f for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise ValueError(f"{index.name}: shard {f.name} is missing from {path}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model: no *.safetensors files in {path}")
    return files


def load_weights(model, path: Path, fmt: str | None = None) -> None:
    """Streams every tensor of the checkpoint in `path` into `model` (a LlamaForCausalLM); fmt: its
    quantization format (QuantConfig.fmt), which names the tensors in error messages."""
    from safetensors import safe_open
    from tqdm import tqdm

    linears = model.linear_shards()
    for lin in model.linears():
        if lin.quantized and not lin.quantize_on_load:
            lin.file_names = _FILE_NAMES.get(fmt, {})
    plain = model.plain_params()
    loaded: set[str] = set()
    ignored: list[str] = []
    files = _files(path)
    bar = tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True,
               desc="loading weights", disable=not env.progress_bars())
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                module, _, suffix = name.rpartition(".")
                if name in plain:
                    _copy_plain(name, plain[name], t)
                    loaded.add(name)
                elif module in linears and suffix in _KINDS:
                    kind, invert = _KINDS[suffix]
                    lin, shard = linears[module]
                    if not lin.quantized and kind != "weight":
                        ignored.append(name)  # e.g. an input_scale on a bf16-excluded layer
                    else:
                        lin.load(shard, kind, t, reciprocal=invert)
                elif name == "lm_head.weight" and model.config.tie_word_embeddings:
                    ignored.append(name)
                elif not name.endswith(_SILENT):
                    ignored.append(name)
                bar.update(t.numel() * t.element_size())
    bar.close()
    missing = [n for n in plain if n not in loaded]
    if missing:
        raise ValueError(f"{missing[0]}: missing from the checkpoint in {path}")
    for lin in model.linears():
        lin.finalize()
    if ignored:
        log.warning("ignored %d checkpoint tensors mini_engine does not use (e.g. %s); FP8 KV-cache "
                    "scales are not applied: the KV cache stays in the activation dtype",
                    len(ignored), ", ".join(ignored[:3]))


def _copy_plain(name: str, param: torch.Tensor, t: torch.Tensor) -> None:
    if tuple(t.shape) != tuple(param.shape):
        raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {tuple(param.shape)}")
    if t.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"{name}: dtype {t.dtype}, expected a floating dtype (bfloat16)")
    param.data.copy_(t)


@torch.no_grad()
def init_dummy_weights(model, seed: int = 0) -> None:
    """Random weights generated directly on the model's device (no checkpoint needed).

    bf16: N(0, 0.02). NVFP4: random e2m1 bytes (every code equally likely: rms 2.93), block scales
    uniform in [0.75, 1.5), weight_scale_2 chosen so the dequantized rms is ~0.02, input_scale for an
    activation amax of 8. Norm weights are 1. Produces noise text; meant for timing and memory.
    """
    device = model.embed_tokens.weight.device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    for name, p in model.plain_params().items():
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
        else:
            p.data.normal_(0.0, 0.02, generator=gen)
    for lin in model.linears():
        k = lin.in_features
        for s, rows in enumerate(lin.out_features):
            if not lin.quantized or lin.quantize_on_load:
                w = torch.empty(rows, k, dtype=lin.dtype, device=device).normal_(0.0, 0.02, generator=gen)
                lin.load(s, "weight", w)
                continue
            packed = torch.randint(0, 256, (rows, k // 2), dtype=torch.uint8, device=device, generator=gen)
            scale = torch.empty(rows, k // 16, device=device).uniform_(0.75, 1.5, generator=gen)
            lin.load(s, "weight", packed)
            lin.load(s, "weight_scale", scale.to(torch.float8_e4m3fn))
            lin.load(s, "weight_scale_2", torch.tensor(0.02 / (2.93 * 1.1)))
            lin.load(s, "input_scale", torch.tensor(8.0 / (448 * 6)))
        lin.finalize()
