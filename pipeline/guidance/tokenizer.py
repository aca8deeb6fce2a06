"""An offline Hugging Face CLIPTokenizer built from the BPE vocabulary that clip-anytorch ships.

Gives the same token ids as `clip.tokenize` (padding differs: HF pads with 49407, clip with 0). Used by the bundled
learned prior and by tests that build tiny Stable Diffusion pipelines without network access.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

from pipeline.clip_loader import import_clip


def write_clip_vocab(directory: str | Path) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt for CLIP's BPE into `directory`; return their paths."""
    bpe = import_clip().simple_tokenizer.SimpleTokenizer()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    vocab.write_text(json.dumps(bpe.encoder, ensure_ascii=False), encoding="utf-8")
    ranked = sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])
    merges.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for (a, b), _ in ranked), encoding="utf-8")
    return vocab, merges


def clip_tokenizer(directory: str | Path, max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer over CLIP's BPE (vocab files written into `directory`)."""
    vocab, merges = write_clip_vocab(directory)
    tok = CLIPTokenizer(str(vocab), str(merges), model_max_length=max_length)  # positional paths (transformers 5)
    if len(tok) <= 2:
        raise RuntimeError(f"CLIPTokenizer built from {directory} has {len(tok)} tokens; the vocabulary did not load")
    return tok
