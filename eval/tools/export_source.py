"""Write a continued-training source (what train.py's `init_from` takes) as a plain HF folder.

    python -m eval export-source --init-from smollm2-135m --out runs/smollm2-source

The baselines (full attention, sliding window, sinks, SnapKV, FastKV) run on an ordinary
`AutoModelForCausalLM` folder. A GGUF source such as SmolLM2's loads de-quantised but transformers refuses to
save it, so this copies its weights into a fresh float32 model of the same config, checks that both give the
same logits, and saves that with the tokenizer: the original model the continued BCT is compared against.
"""

from __future__ import annotations

import argparse
import copy

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from eval.tools.weight_copy import check_same_logits, copy_weights
from modeling.convert import load_source
from training.init_source import resolve_source


@torch.no_grad()
def plain_copy(source: PreTrainedModel, check_length: int = 64) -> PreTrainedModel:
    """A float32 model of `source`'s config without its quantization settings, holding its weights; raises if
    the weights do not map one to one or the logits differ on a random sequence."""
    config = copy.deepcopy(source.config)  # the source keeps its own
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    copy_weights(plain, {name: tensor.float() for name, tensor in source.state_dict().items()})
    check_same_logits(source, plain, check_length, "The copy")
    return plain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m eval export-source",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--init-from", required=True, help="a folder, hub id, .gguf file or smollm2 alias")
    parser.add_argument("--out", required=True, help="folder for the plain model (weights + tokenizer)")
    args = parser.parse_args(argv)
    path, gguf_file = resolve_source(args.init_from)
    plain = plain_copy(load_source(path, gguf_file).eval())
    plain.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(path, gguf_file=gguf_file).save_pretrained(args.out)
    print(
        f"wrote {args.out} ({type(plain).__name__}, {sum(p.numel() for p in plain.parameters()):,} parameters)"
    )
