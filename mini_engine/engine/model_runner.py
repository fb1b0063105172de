"""ModelRunner: owns the model, the KV cache and the device; turns a scheduled batch into sampled ids.

Per step the host work is: build the token/slot/length lists in Python, write them into ONE pinned
int32 staging buffer, ONE host->device copy, then either replay a CUDA graph (decode-only batches up
to cuda_graph_max_bs) or run the model eagerly, then sample and read the ids back (the step's only
sync). All metadata tensors are views into the copied buffer, laid out for (T tokens, B sequences,
S sampled rows) as [ids T | positions T | slots T | seq_lens B | query_start_loc B+1 | sample S |
block_tables B x W]; a graph of batch size G was captured on the views of layout (G, G, 0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..config import EngineConfig
from ..layers.attention import AttentionMetadata, make_attention_backend
from ..layers.sampler import Sampler
from ..loader import init_dummy_weights, load_configs, load_weights, resolve_quantization
from ..models.llama import LlamaForCausalLM
from .kv_cache import allocate_kv_cache, decide_num_blocks
from .scheduler import ScheduledBatch

__all__ = ["ModelRunner", "resolve_device", "resolve_dtype"]

log = logging.getLogger("mini_engine.model_runner")


def resolve_device(name: str) -> torch.device:
    """"auto" -> the current CUDA device if there is one, else CPU; "cuda" gets an explicit index."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":  # fp32 on CPU: faster there than bf16 and the exact reference for check.py
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


class ModelRunner:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = device = resolve_device(config.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.dtype = dtype = resolve_dtype(config.dtype, device)
        cfg, quant, path = load_configs(config.model, config.load_format)
        self.model_config, self.checkpoint_dir = cfg, path
        self.max_model_len = config.max_model_len or min(cfg.max_position_embeddings, 8192)
        if self.max_model_len > cfg.max_position_embeddings:
            raise ValueError(f"max_model_len={self.max_model_len}: exceeds the model's "
                             f"max_position_embeddings={cfg.max_position_embeddings}")
        from_ckpt = path is not None and config.load_format != "dummy"
        quant, on_load = resolve_quantization(config.quantization, quant, from_ckpt)
        self.quant = quant
        with torch.device(device):
            self.model = LlamaForCausalLM(
                cfg, quant=quant, dtype=dtype, device=device, max_model_len=self.max_model_len,
                linear_backend=config.linear_backend, nvfp4_mode=config.nvfp4_mode, quantize_on_load=on_load,
            )
        if from_ckpt:
            load_weights(self.model, path, quant.fmt if quant is not None else None)
        else:
            init_dummy_weights(self.model, config.seed)
        self.model.eval()
        self.block_size = bs = config.block_size
        kernel_shapes = dict(num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
                             head_dim=cfg.head_dim, max_decode_seqs=config.max_num_seqs)
        self.attn_backend = make_attention_backend(config.attention_backend, device, bs, **kernel_shapes)
        self.num_kv_blocks = decide_num_blocks(config, cfg, device, dtype, self.max_model_len)
        self.kv_cache = allocate_kv_cache(self.num_kv_blocks, cfg, bs, dtype, device)
        for i, layer in enumerate(self.model.layers):
            layer.attn.k_cache, layer.attn.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]
            layer.attn.backend = self.attn_backend
        self.sampler = Sampler(device, config.seed)
        self.width = -(-self.max_model_len // bs)  # block-table row length
        cap = 4 * config.max_num_batched_tokens + 3 * config.max_num_seqs + 1 \
            + config.max_num_seqs * self.width
        pin = device.type == "cuda"
        self.host_buf = torch.zeros(cap, dtype=torch.int32, pin_memory=pin)
        self.host_np = self.host_buf.numpy()
        self.dev_buf = self.host_buf.to(device) if pin else self.host_buf
        self.logits_hook: Callable | None = None  # check.py: hook(seqs, logits) before sampling
        self.graphs = None
        if device.type == "cuda":
            self._warmup_linears()
            if not config.enforce_eager and self.attn_backend.name == "triton":
                from .cuda_graph import CudaGraphRunner

                self.graphs = CudaGraphRunner(self, min(config.cuda_graph_max_bs or 512, config.max_num_seqs))
                self.graphs.capture()

    def _warmup_linears(self) -> None:
        """Compile the kit's GEMM configs for every M bucket a step can produce (before capture)."""
        from nvfp4_kit import ops

        for lin in self.model.linears():
            if lin.pw is not None:
                ops.warmup(lin.pw, self.config.max_num_batched_tokens)

    # ------------------------------------------------------------------------------------ inputs
    def layout(self, t: int, b: int, s: int) -> tuple[int, ...]:
        """Offsets of ids, positions, slots, seq_lens, query_start_loc, sample, block_tables, end."""
        o_lens = 3 * t
        o_qsl = o_lens + b
        o_sample = o_qsl + b + 1
        o_bt = o_sample + s
        return 0, t, 2 * t, o_lens, o_qsl, o_sample, o_bt, o_bt + b * self.width

    def metadata(self, t: int, b: int, s: int, num_decodes: int, max_query_len: int,
                 host_lists=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
        """(input_ids, positions, sample_idx, metadata) as views of the device buffer."""
        o_ids, o_pos, o_slot, o_lens, o_qsl, o_sample, o_bt, end = self.layout(t, b, s)
        d = self.dev_buf
        splits = self.attn_backend.num_splits(num_decodes) if hasattr(self.attn_backend, "num_splits") else 1
        meta = AttentionMetadata(
            positions=d[o_pos:o_slot], slot_mapping=d[o_slot:o_lens], seq_lens=d[o_lens:o_qsl],
            query_start_loc=d[o_qsl:o_sample], block_tables=d[o_bt:end].view(b, self.width),
            num_decodes=num_decodes, max_query_len=max_query_len, num_splits=splits,
        )
        if host_lists is not None:
            meta.seq_lens_host, meta.query_start_loc_host, meta.block_tables_host = host_lists
        return d[o_ids:o_pos], d[o_pos:o_slot], d[o_sample:o_bt], meta

    def _stage(self, batch: ScheduledBatch, t: int, b: int, sample_idx: list[int]) -> tuple:
        """Writes the batch into the pinned buffer laid out for (t, b) (t, b >= the real sizes: the
        extra rows are CUDA-graph padding) and copies it to the device."""
        bs, h = self.block_size, self.host_np
        o_ids, o_pos, o_slot, o_lens, o_qsl, o_sample, o_bt, end = self.layout(t, b, len(sample_idx))
        ids, pos, slots, lens, qsl = [], [], [], [], [0]
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=False):
            c, table = seq.num_computed_tokens, seq.block_table
            if n == 1:
                ids.append(seq.token_ids[c])
                pos.append(c)
                slots.append(table[c // bs] * bs + c % bs)
            else:
                ids.extend(seq.token_ids[c:c + n])
                pos.extend(range(c, c + n))
                slots.extend(table[p // bs] * bs + p % bs for p in range(c, c + n))
            lens.append(c + n)
            qsl.append(qsl[-1] + n)
        pad_t, pad_b = t - len(ids), b - len(lens)
        h[o_ids:o_pos] = ids + [0] * pad_t
        h[o_pos:o_slot] = pos + [0] * pad_t
        h[o_slot:o_lens] = slots + [-1] * pad_t  # padding tokens write nowhere
        h[o_lens:o_qsl] = lens + [1] * pad_b  # padding rows attend to one (finite, zeroed) slot
        h[o_qsl:o_sample] = qsl + list(range(qsl[-1] + 1, qsl[-1] + 1 + pad_b))
        h[o_sample:o_bt] = sample_idx
        w = self.width
        for i, seq in enumerate(batch.seqs):
            row = o_bt + i * w
            h[row:row + len(seq.block_table)] = seq.block_table
        for i in range(len(lens), b):
            h[o_bt + i * w] = 0
        if self.dev_buf is not self.host_buf:
            self.dev_buf[:end].copy_(self.host_buf[:end], non_blocking=True)
        return lens, qsl

    # ------------------------------------------------------------------------------------ step
    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> list[int | None]:
        """Runs one step; returns the sampled id of each sequence that reached its end, else None."""
        b = len(batch.seqs)
        rows = [i for i in range(b) if batch.samples(i)]
        if self.graphs is not None and batch.is_decode_only and b <= self.graphs.max_bs:
            g = self.graphs.padded_size(b)
            self._stage(batch, g, g, [])
            logits = self.graphs.replay(g)[:b]
            if len(rows) < b:
                logits = logits[rows]
        else:
            t = batch.num_tokens
            qsl = [0]
            for n in batch.num_new_tokens:
                qsl.append(qsl[-1] + n)
            sample_idx = [qsl[i + 1] - 1 for i in rows]
            lens, qsl = self._stage(batch, t, b, sample_idx)
            host = None
            if self.attn_backend.name == "torch":
                host = (lens, qsl, [s.block_table for s in batch.seqs])
            prefill_lens = batch.num_new_tokens[batch.num_decodes:]
            ids, pos, sidx, meta = self.metadata(t, b, len(rows), batch.num_decodes,
                                                 max(prefill_lens, default=0), host)
            hidden = self.model(ids, pos, meta)
            if len(rows) < t:
                hidden = hidden[sidx.long()]
            logits = self.model.compute_logits(hidden)
        if not rows:
            return [None] * b
        seqs = [batch.seqs[i] for i in rows]
        if self.logits_hook is not None:
            self.logits_hook(seqs, logits)
        tokens = self.sampler(logits, [s.params for s in seqs], [s.generator for s in seqs]).tolist()
        out: list[int | None] = [None] * b
        for r, tok in zip(rows, tokens, strict=False):
            out[r] = tok
        return out
