"""BCT modeling package. Imports only torch and transformers: it is copied into every exported checkpoint.

`import modeling` registers the classes with `AutoConfig` / `AutoModelForCausalLM` and marks them for
`save_pretrained` to write `auto_map` and copy this code next to the weights (`trust_remote_code=True`).
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .cache import BCTCache
from .configuration_bct import BCTConfig
from .convert import SUPPORTED_ARCHITECTURES, convert_to_bct
from .modeling_bct import BCTForCausalLM, BCTModel, BCTPreTrainedModel

AutoConfig.register(BCTConfig.model_type, BCTConfig, exist_ok=True)
AutoModelForCausalLM.register(BCTConfig, BCTForCausalLM, exist_ok=True)
BCTConfig.register_for_auto_class()
BCTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "BCTCache",
    "BCTConfig",
    "BCTForCausalLM",
    "BCTModel",
    "BCTPreTrainedModel",
    "convert_to_bct",
]
