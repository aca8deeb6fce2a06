"""Prompt-set preparation: read prompts/<bench>.txt, validate, normalise, assign ids, write prompts.json.

Normalisation is the Dream Fields rule used by DreamFusion's R-precision, ``q.lower().strip(' .,') + '.'``.
Two captions equal after Unicode NFKC and whitespace folding are duplicates. File format: UTF-8, one caption per
line (only ``\n`` or ``\r\n`` end a line); blank lines and lines starting with ``#`` are skipped; a caption needs a
letter or digit; control, line-separator and invisible format characters are errors naming the line.

    python -m pipeline.prompts prompts/primitives.txt results/primitives/prompts.json
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.io import atomic_write_json

log = logging.getLogger(__name__)

MAX_LINES = 5000
"""Lines a prompt file may have (COCO-153 has 153; every caption is a training job per seed and variant)."""
MAX_BYTES = 1_000_000
MAX_CHARS = 1000


class PromptFileError(ValueError):
    """A prompt file problem; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Prompt:
    id: str
    """Filesystem-safe unique id: slug + 8-hex hash of `text`."""
    text: str
    """Normalised caption (Dream Fields rule); what the models see and what R-precision retrieves."""
    raw: str
    """The line exactly as in the file (without the newline)."""
    line: int
    """1-based line number in the prompt file."""


def normalize(caption: str) -> str:
    """Dream Fields / DreamFusion caption normalisation (verbatim: the protocol's retrieval texts)."""
    return caption.lower().strip(" .,") + "."


def duplicate_key(text: str) -> str:
    """What makes two normalised captions the same: equal after Unicode NFKC and whitespace folding (a tab, a double
    space, NFC vs NFD, full-width letters)."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def prompt_id(text: str) -> str:
    """Stable, filesystem-safe id of a normalised caption."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = "-".join(re.findall(r"[a-z0-9]+", ascii_text.lower()))[:40].strip("-") or "prompt"
    return f"{slug}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def _clip_tokenizer():
    """clip-anytorch's BPE tokenizer (it ships the vocabulary), loaded from its own file: the package's __init__
    imports torch and torchvision, 2 s of every Snakemake start, which reads the prompts to plan its jobs."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("clip-anytorch is not installed: pip install -e .")
    path = Path(next(iter(spec.submodule_search_locations))) / "simple_tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def _token_count(text: str) -> int:
    """CLIP BPE token count including start/end tokens."""
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = _clip_tokenizer()
    return len(_TOKENIZER.encode(text)) + 2


_TOKENIZER = None


def read_prompt_file(path: str | Path, max_tokens: int = 77) -> list[Prompt]:
    """Read and validate a prompt file; raise PromptFileError naming the line on bad input."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptFileError(f"{path}: prompt file not found; create it with one caption per line") from None
    except IsADirectoryError:
        raise PromptFileError(f"{path}: is a directory, not a prompt file; point prompts.benchmark at a .txt") from None
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read the prompt file ({exc.strerror})") from None
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PromptFileError(f"{path}:{line}: not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8") from None
    if content.startswith("\ufeff"):
        content = content[1:]
    if len(data) > MAX_BYTES or content.count("\n") >= MAX_LINES:
        raise PromptFileError(
            f"{path}: {content.count(chr(10)) + 1:,} lines, {len(data):,} bytes; a prompt file holds at most "
            f"{MAX_LINES:,} lines ({MAX_BYTES:,} bytes): split the benchmark into several files"
        )
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(content.split("\n"), start=1):  # only \n ends a line (str.splitlines also
        raw = raw.removesuffix("\r")  # splits at \v, \f, U+0085, U+2028..., silently shifting the line numbers)
        if not raw.strip() or raw.lstrip().startswith("#"):  # blank lines and `# comments` are skipped
            continue
        for c in raw:
            cat = unicodedata.category(c)
            if cat in ("Zl", "Zp") or (cat == "Cc" and c != "\t"):
                raise PromptFileError(
                    f"{path}:{lineno}: line or control character {c!r} inside the caption; one caption per line, "
                    "remove it"
                )
            if cat == "Cf":
                raise PromptFileError(
                    f"{path}:{lineno}: invisible format character U+{ord(c):04X} ({unicodedata.name(c, '?')}) in the "
                    "caption; remove it (it would make two captions look the same)"
                )
        if not any(ch.isalnum() for ch in raw):
            raise PromptFileError(f"{path}:{lineno}: caption {raw!r} has no letters or digits; remove the line")
        if len(raw) > MAX_CHARS:
            raise PromptFileError(f"{path}:{lineno}: caption is {len(raw)} characters (max {MAX_CHARS}); shorten it")
        text = normalize(raw)
        if text == ".":
            raise PromptFileError(f"{path}:{lineno}: caption {raw!r} is empty after normalisation; remove the line")
        key = duplicate_key(text)
        if key in seen:
            raise PromptFileError(
                f"{path}:{lineno}: duplicate caption {text!r} (same as line {seen[key]} after normalisation); "
                "remove one of them"
            )
        seen[key] = lineno
        prompts.append(Prompt(id=prompt_id(text), text=text, raw=raw, line=lineno))
    if not prompts:
        what = "is empty" if not content else "has only blank lines"
        raise PromptFileError(f"{path}: the prompt file {what}; add one caption per line")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise PromptFileError(f"{path}: two captions hash to the same id; this should not happen, please report it")
    for p in prompts:
        n = _token_count(p.text)
        if n > max_tokens:
            log.warning(
                "%s:%d: caption has %d tokens, over the text encoder's %d; it will be truncated",
                path,
                p.line,
                n,
                max_tokens,
            )
    return prompts


def select(prompts: list[Prompt], wanted: list[str], src: str = "params.yaml") -> list[Prompt]:
    """The prompts named in `wanted` (raw or normalised captions), in file order; empty selects all."""
    if not wanted:
        return prompts
    by_text = {p.text: p for p in prompts}
    missing = [w for w in wanted if normalize(w) not in by_text]
    if missing:
        raise PromptFileError(f"{src}: prompts.select names {missing[0]!r}, which is not in the prompt file")
    keep = {normalize(w) for w in wanted}
    return [p for p in prompts if p.text in keep]


def prepare(src: str | Path, out: str | Path, wanted: list[str] | None = None, max_tokens: int = 77) -> dict:
    """Validate ``src`` and write prompts.json (all prompts, the selected ids, and the retrieval set)."""
    src = Path(src)
    prompts = read_prompt_file(src, max_tokens)
    chosen = select(prompts, wanted or [])
    doc = {
        "benchmark": src.stem,
        "source": str(src),
        "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "normalisation": "q.lower().strip(' .,') + '.'",
        "prompts": [asdict(p) for p in prompts],
        "selected": [p.id for p in chosen],
        "retrieval_set": [p.text for p in prompts],
    }
    atomic_write_json(out, doc)
    return doc


def read_prompts_json(path: str | Path, lists: tuple[str, ...] = ()) -> dict:
    """The prepare stage's prompts.json, checked: 'prompts' (each with an id and a text) and the other `lists` the
    caller uses ('selected', 'retrieval_set'). A truncated, hand-edited or foreign file is a PromptFileError that
    names it and the fix, not a traceback in the stage that reads it."""
    path = Path(path)
    fix = "delete it and run the workflow again (the prepare stage rewrites it from the prompt file)"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PromptFileError(f"{path}: not a readable prompts.json ({exc}); {fix}") from None
    entries = doc.get("prompts") if isinstance(doc, dict) else None
    ok = (
        isinstance(entries, list)
        and all(
            isinstance(p, dict) and isinstance(p.get("id"), str) and isinstance(p.get("text"), str) for p in entries
        )
        and all(isinstance(doc.get(k), list) for k in lists)
    )
    if not ok:
        need = " and ".join(["'prompts' with id and text", *(f"'{k}'" for k in lists)])
        raise PromptFileError(f"{path}: not a prompts.json of this pipeline (needs {need}); {fix}")
    return doc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="prompt file, one caption per line")
    ap.add_argument("out", help="prompts.json to write")
    ap.add_argument("--select", nargs="*", default=[], help="captions to train (default: all)")
    ap.add_argument("--max-tokens", type=int, default=77)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        doc = prepare(args.src, args.out, args.select, args.max_tokens)
    except PromptFileError as exc:
        raise SystemExit(f"error: {exc}") from None
    log.info("%s: %d prompts (%d selected) -> %s", args.src, len(doc["prompts"]), len(doc["selected"]), args.out)


if __name__ == "__main__":
    main()
