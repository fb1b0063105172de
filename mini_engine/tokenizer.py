"""Tokenizers (Llama-3 from llama-models, a tiny offline BPE) and incremental detokenization.

The real Llama-3 `tokenizer.model` (tiktoken BPE ranks) ships in the `llama-models` PyPI package; we
convert it once with transformers' TikTokenConverter into a fast tokenizer (tokenizer.json + config
with the Llama-3 chat template) and cache it under MINI_ENGINE_CACHE_DIR. The tiny preset's tokenizer
is a 512-token byte-level BPE trained at checkpoint-creation time on text that ships with Python.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import env

__all__ = [
    "LLAMA3_CHAT_TEMPLATE",
    "llama3_tokenizer",
    "tiny_tokenizer",
    "load_tokenizer",
    "IncrementalDetokenizer",
]

log = logging.getLogger("mini_engine.tokenizer")

# Llama-3.1 chat format without tool calling: a system header carrying the knowledge-cutoff lines
# (as Meta's template writes by default), then one header+body+<|eot_id|> per message.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama-3.1's 256 special tokens (ids 128000..128255), named as in Meta's Hugging Face release.
_LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)]
TINY_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                 "<|eot_id|>"]


def _wrap(tok, bos: str, eos: str, pad: str | None):
    """A `tokenizers.Tokenizer` -> transformers fast tokenizer that prepends BOS, with the chat template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        ),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
        chat_template=LLAMA3_CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )


def _llama_models_file() -> Path:
    override = env.llama3_tokenizer_file()
    if override is not None:
        if not override.is_file():
            raise ValueError(f"MINI_ENGINE_LLAMA3_TOKENIZER={override}: no such file")
        return override
    spec = importlib.util.find_spec("llama_models")  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "tokenizer: the Llama-3 tokenizer comes from the `llama-models` package; install it with "
            "`pip install llama-models` (or `pip install nvfp4-kit[llama]`), or point "
            "MINI_ENGINE_LLAMA3_TOKENIZER at its tokenizer.model"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise ValueError(f"tokenizer: {path} is missing from the installed llama-models package")
    return path


def llama3_tokenizer():
    """The Llama-3.1 tokenizer (128256 ids) with its chat template; converted once, then cached."""
    from transformers import PreTrainedTokenizerFast

    try:
        tag = "file" if env.llama3_tokenizer_file() else version("llama-models")
    except PackageNotFoundError:
        tag = "unknown"
    cached = env.cache_dir() / f"llama3-tokenizer-{tag}"
    if (cached / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(cached))
    from transformers.convert_slow_tokenizer import TikTokenConverter

    log.info("converting the Llama-3 tokenizer from llama-models (once; cached in %s)", cached)
    tok = TikTokenConverter(
        vocab_file=str(_llama_models_file()), pattern=_LLAMA3_PATTERN,
        extra_special_tokens=_LLAMA3_SPECIALS,
    ).converted()
    hf = _wrap(tok, "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>")
    try:  # atomic: another process may be converting at the same time
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=cached.name))
        hf.save_pretrained(str(tmp))
        try:
            tmp.rename(cached)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        log.warning("could not cache the converted tokenizer in %s: %s", cached, exc)
    return hf


def _training_text() -> list[str]:
    """Deterministic English text that ships with every Python: the pydoc topic help."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def tiny_tokenizer(vocab_size: int = 512):
    """A small byte-level BPE (the tiny preset's): trained on pydoc text, fully offline, < 1 s."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=TINY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return _wrap(tok, "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>")


def load_tokenizer(path: str | Path):
    """A tokenizer saved with save_pretrained (tokenizer.json / tokenizer_config.json) in `path`."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ValueError(f"tokenizer: no tokenizer.json or tokenizer_config.json in {path}")
    return AutoTokenizer.from_pretrained(str(path))


class IncrementalDetokenizer:
    """Turns generated ids into text deltas, holding back bytes of an incomplete UTF-8 character.

    Keeps two offsets into the generated ids: text before `read_offset` was emitted; decoding starts
    at `prefix_offset` so a multi-token character decodes in context. Each step decodes a window of
    a few tokens, so the cost does not grow with the output length.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        # The Rust tokenizer directly: transformers' decode() wrapper costs ~30 us per call in Python
        # (measured on this repo's CPU box), ten times the decode itself, and we call it twice a token.
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""
        self.emitted = 0  # characters of `text` already returned to the caller (llm_engine)

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def add(self, token_id: int) -> str:
        """Appends one generated id; returns the newly readable text (may be "")."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self.text += delta
            return delta
        return ""
