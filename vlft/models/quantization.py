"""Loading a base model quantized through bitsandbytes, for any family that offers it (QLoRA-style)."""

from __future__ import annotations

import importlib.util

import torch

from vlft.config import QuantizationConfig
from vlft.models.base import ModelLoadError
from vlft.ranks import local_rank


def quantized_load_kwargs(quantization: QuantizationConfig, dtype: torch.dtype, keep: list[str]) -> dict:
    """``from_pretrained`` keyword arguments that quantize every linear layer but those under ``keep`` (module-name
    prefixes), onto this process's device (bitsandbytes quantizes as the weights land there)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError('model.quantization needs bitsandbytes: pip install -e ".[quant]" '
                             '(or pip install bitsandbytes)')
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=quantization.bits == 4, load_in_8bit=quantization.bits == 8, bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=keep)
    device = f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}


def prepare_quantized(model):
    """peft's preparation of a k-bit model for training: the layers left unquantized in fp32, all frozen.
    Gradient checkpointing is left to the Trainer (non-reentrant, as for any other run)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
