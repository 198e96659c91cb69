"""Tokenizers: a byte-level BPE trained on the corpus, or the source checkpoint's own.

The BPE (for models trained from scratch) is GPT-2 style: byte-level pre-tokenization, so every string
round-trips exactly and nothing is ever unknown; `vocab_size` ids in total, id 0 being `<|endoftext|>`,
which is the eos, bos and pad token at once. No token is added by `tokenizer(text)` (no post-processor):
packing puts one eos after every document itself, and nothing pads a packed row. It is trained on at most
`tokenizer_sample_chars` characters of *train* documents (those with the largest split hashes, a
pseudo-random sample of the first 4x that many characters), saved with `save_pretrained` under
`cache_dir/tokenizer-<key>/` and loaded back with `AutoTokenizer`, so the cached folder is exactly what a
user, an export or `eval/` loads offline. The key covers the source fingerprint, caps, split fraction,
vocabulary size, sample size and this recipe, so a change to any of them trains a new one.

For continued training the tokenizer is the checkpoint's: a folder or hub id through `AutoTokenizer`, or a
GGUF file through `AutoTokenizer.from_pretrained(folder, gguf_file=name)`.
"""

from __future__ import annotations

import hashlib
import json
import os
from itertools import accumulate

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from data.cache import atomic_directory, build_lock, cache_key
from data.config import DataConfig, invalid
from data.sources import Source, open_source
from data.split import split_hash, validation_cutoff

END_OF_TEXT = "<|endoftext|>"
_BPE_RECIPE = "byte-level-bpe/v1"
_SAMPLE_READ_FACTOR = 4  # read at most this many times the sample budget to choose the sample from


def build_tokenizer(
    cfg: DataConfig, pretrained: str | None = None, gguf_file: str | None = None
) -> PreTrainedTokenizerFast:
    """The run's tokenizer: `cfg.tokenizer` if set, else `pretrained` (the `init_from` checkpoint, with
    `gguf_file` naming a GGUF file inside it), else the corpus BPE (trained once, then cached)."""
    if cfg.tokenizer is not None:
        return load_pretrained_tokenizer(cfg.tokenizer)
    if pretrained is not None:
        return load_pretrained_tokenizer(pretrained, gguf_file)
    return train_bpe_tokenizer(cfg)


def load_pretrained_tokenizer(name_or_path: str, gguf_file: str | None = None) -> PreTrainedTokenizerFast:
    """A folder, hub id or `.gguf` file path through `AutoTokenizer`; must be fast and have an eos token."""
    path = os.path.expanduser(name_or_path)
    if gguf_file is None and path.endswith(".gguf"):
        path, gguf_file = os.path.split(os.path.abspath(path))
    # A local folder may be a BCT export whose config names custom code; without trust_remote_code,
    # AutoTokenizer stops at an interactive prompt. Hub ids never get it.
    tokenizer = AutoTokenizer.from_pretrained(
        path, gguf_file=gguf_file, trust_remote_code=os.path.isdir(path)
    )
    if not tokenizer.is_fast:
        raise invalid("tokenizer", name_or_path, "a tokenizer with a fast (Rust `tokenizers`) backend")
    if tokenizer.eos_token_id is None:
        raise invalid(
            "tokenizer", name_or_path, "a tokenizer with an eos token (it separates packed documents)"
        )
    return tokenizer


def train_bpe_tokenizer(cfg: DataConfig) -> PreTrainedTokenizerFast:
    """Train (or load from the cache) the byte-level BPE described in the module docstring."""
    source = open_source(cfg)
    spec = {
        "recipe": _BPE_RECIPE,
        "source": source.fingerprint,
        "max_documents": cfg.max_documents,
        "max_chars": cfg.max_chars,
        "validation_fraction": cfg.validation_fraction,
        "vocab_size": cfg.vocab_size,
        "sample_chars": cfg.tokenizer_sample_chars,
    }
    folder = os.path.join(cfg.cache_dir, f"tokenizer-{cache_key(spec)}")
    with build_lock(folder):
        if not os.path.isdir(folder):
            with atomic_directory(folder) as staging:
                _train_bpe(_bpe_sample(cfg, source), cfg.vocab_size).save_pretrained(staging)
                with open(os.path.join(staging, "bct_tokenizer_spec.json"), "w") as f:
                    json.dump(spec, f, indent=2)
    return AutoTokenizer.from_pretrained(folder)


def _bpe_sample(cfg: DataConfig, source: Source) -> list[str]:
    budget = cfg.tokenizer_sample_chars
    read = []  # (split hash, text) of the first _SAMPLE_READ_FACTOR * budget characters
    chars = 0
    for document in source.documents():
        read.append((split_hash(document), document.text))
        chars += len(document.text)
        if chars >= _SAMPLE_READ_FACTOR * budget:
            break
    cutoff = validation_cutoff((h for h, _ in read), cfg.validation_fraction)
    # Largest hashes first: a pseudo-random order that never reaches validation documents (smallest hashes).
    train = sorted(((h, text) for h, text in read if h >= cutoff), reverse=True)
    lengths = accumulate(len(text) for _, text in train)
    return [text for (_, text), total in zip(train, lengths) if total - len(text) < budget]


def _train_bpe(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT, pad_token=END_OF_TEXT
    )


def check_vocab_fits(tokenizer: PreTrainedTokenizerFast, model_vocab_size: int) -> None:
    """Raise `ValueError` if the tokenizer can emit ids >= the model's `vocab_size` (embedding rows)."""
    if len(tokenizer) > model_vocab_size:
        raise ValueError(
            f"model vocab_size = {model_vocab_size} is not allowed with this tokenizer: it has {len(tokenizer)} "
            f"tokens (len(tokenizer), added tokens included), so ids up to {len(tokenizer) - 1} would fall "
            f"outside the embedding. Allowed: a model vocab_size >= {len(tokenizer)}, or a smaller tokenizer "
            "(data.vocab_size for the BPE)."
        )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """Hash of everything that decides token ids: the serialized backend (tokenizer.json: vocab, merges,
    normalizer, pre-tokenizer, added tokens) and the eos id packing uses."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(f"\neos={tokenizer.eos_token_id}".encode())
    return digest.hexdigest()


def encode_batch(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens, through the Rust batch API (parallel over texts unless
    TOKENIZERS_PARALLELISM=false). Measured faster here than `datasets.map(num_proc=2)`
    (see `python -m eval bench-data`)."""
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    return [encoding.ids for encoding in encodings]
