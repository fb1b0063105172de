"""The built-in default model's text: Python's own docs (pydoc_data topics + stdlib docstrings).

Everything here ships with CPython, so anyone can rebuild the corpus offline. Documents are split into
train / held-out by a hash of their name (5 % held out), so the split is stable across runs and the
held-out perplexity in scripts/eval_default_model.py measures text the model never saw.

Each document appears as plain text; half of the training documents (chosen by hash) also appear as a
chat turn, so the chat template means something to the model:
    <|user|>\nWhat does json.dumps do?\n<|assistant|>\n{docstring}<|endoftext|>
"""

from __future__ import annotations

import ast
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Document", "load_documents", "training_texts", "heldout_texts", "CHAT_TEMPLATE", "SPECIAL"]

EOS = "<|endoftext|>"
SPECIAL = [EOS, "<|system|>", "<|user|>", "<|assistant|>"]

# Jinja template rendered by transformers' apply_chat_template; the model was trained on this form.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] | trim + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{{ '<|endoftext|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "turtledemo", "lib2to3", "__pycache__"}
_HELDOUT_MOD = 20  # 1 document in 20 is held out


@dataclass(frozen=True)
class Document:
    name: str  # e.g. "topic:if" or "json.dumps"
    title: str  # what a user would ask about
    text: str  # the body

    @property
    def heldout(self) -> bool:
        return zlib.crc32(self.name.encode()) % _HELDOUT_MOD == 0

    @property
    def also_chat(self) -> bool:
        return zlib.crc32(("chat:" + self.name).encode()) % 2 == 0

    def plain(self) -> str:
        return f"{self.title}\n\n{self.text}"

    def chat(self) -> str:
        if self.name.startswith("topic:"):
            subject = self.title[0].lower() + self.title[1:] if self.title.startswith("The ") \
                else self.title
            question = f"Tell me about {subject}."
        else:
            question = f"What does {self.title} do?"
        return f"<|user|>\n{question}\n<|assistant|>\n{_first_paragraphs(self.text, 1500)}"


def _first_paragraphs(text: str, limit: int) -> str:
    out = ""
    for para in text.split("\n\n"):
        if out and len(out) + len(para) > limit:
            break
        out += ("\n\n" if out else "") + para
    return out


def _topic_documents() -> list[Document]:
    from pydoc_data.topics import topics

    docs = []
    for key in sorted(topics):
        body = topics[key].strip()
        lines = body.splitlines()
        # Topics start with a title line underlined by '*'; the title is what the user asks about.
        if len(lines) > 2 and set(lines[1].strip()) == {"*"}:
            title, body = lines[0].strip(), "\n".join(lines[2:]).strip()
        else:
            title = key
        docs.append(Document(f"topic:{key}", title, body))
    return docs


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _docstring_documents(min_chars: int = 60) -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in _SKIP_DIRS for p in rel) or any(p.startswith("_") and p != "__init__.py"
                                                    for p in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = _module_name(root, path)
        docs.extend(_walk(tree, module, min_chars))
    return docs


def _walk(node: ast.AST, prefix: str, min_chars: int) -> list[Document]:
    docs = []
    doc = ast.get_docstring(node) if isinstance(
        node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) else None
    if doc and len(doc) >= min_chars and prefix:
        docs.append(Document(prefix, prefix, doc.strip()))
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if child.name.startswith("_") and child.name != "__init__":
                continue
            docs.extend(_walk(child, f"{prefix}.{child.name}", min_chars))
    return docs


def load_documents() -> list[Document]:
    """All documents, deterministic order (topics first, then stdlib modules alphabetically)."""
    return _topic_documents() + _docstring_documents()


def training_texts(docs: list[Document]) -> list[str]:
    texts = []
    for d in docs:
        if d.heldout:
            continue
        texts.append(d.plain())
        if d.also_chat:
            texts.append(d.chat())
    return texts


def heldout_texts(docs: list[Document]) -> list[str]:
    return [d.plain() for d in docs if d.heldout]
