"""LLaVA family: transformers' LlavaForConditionalGeneration (CLIP-ViT + projector + Llama).

One way in: `load(model_cfg, path)` reads any transformers LLaVA checkpoint from a hub name or a
local directory; `build_tiny(...)` writes a small random-init checkpoint with `save_pretrained`
so that tests and the offline default go through exactly the same `load`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from vlft.config import ModelConfig, RunConfig, TinyModelConfig
from vlft.data.template import LLAVA_V1
from vlft.models.base import ModelBundle, ModelLoadError
from vlft.models.quantization import prepare_quantized, quantized_load_kwargs
from vlft.models.tokenizer import IMAGE_TOKEN, build_word_tokenizer

# Module-name prefixes of each tower: transformers >= 4.52 first, older layouts after.
TOWERS = {
    "vision": ("model.vision_tower", "vision_tower"),
    "projector": ("model.multi_modal_projector", "multi_modal_projector"),
    "language": ("model.language_model", "language_model.model"),
}
# Checkpoints whose architecture ships with vlft, for --dry-run without network.
SHIPPED_ARCHITECTURES = {"llava-hf/llava-1.5-7b-hf": "llava-1.5-7b-hf.json"}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def num_image_tokens(config: LlavaConfig) -> int:
    """Tokens one image occupies in the text: patches, plus CLS under the `full` strategy."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if config.vision_feature_select_strategy == "full" else 0)


def load(model_cfg: ModelConfig, path: str, with_model: bool = True) -> ModelBundle:
    """Load model, tokenizer and image processor from a hub name or a local checkpoint directory.

    ``with_model=False`` reads the config instead of the weights (model is None): enough to check data.
    """
    dtype = getattr(torch, model_cfg.dtype)
    kwargs = {"dtype": dtype}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if model_cfg.quantization is not None and with_model:  # the language model only, as LLaVA's QLoRA recipe
        kwargs.update(quantized_load_kwargs(model_cfg.quantization, dtype, [*TOWERS["vision"], *TOWERS["projector"],
                                                                           "lm_head"]))
    try:
        model = LlavaForConditionalGeneration.from_pretrained(path, **kwargs) if with_model else None
        if model is not None and model_cfg.quantization is not None:
            model = prepare_quantized(model)
        config = model.config if with_model else AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = AutoImageProcessor.from_pretrained(path)
    except OSError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"cannot load LLaVA checkpoint '{path}': not a local checkpoint directory and not reachable on the "
            f"model hub ({first_line})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return ModelBundle(
        model=model, tokenizer=tokenizer, image_processor=image_processor, template=LLAVA_V1,
        num_image_tokens=num_image_tokens(config), image_token_id=config.image_token_index,
        towers=TOWERS, base_path=str(path))


def build_tiny(tiny: TinyModelConfig, texts: Iterable[str], out_dir: str | Path) -> Path:
    """Write a small random-init LLaVA (CLIP-ViT + Llama) and its processor to ``out_dir``.

    The tokenizer's vocabulary comes from ``texts`` (the training conversations).
    """
    out_dir = Path(out_dir)
    template_words = LLAVA_V1.user_prefix.split() + LLAVA_V1.assistant_prefix.split()
    tokenizer = build_word_tokenizer(texts, extra_words=[w.strip(":") for w in template_words] + [":"])
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vision = CLIPVisionConfig(
        hidden_size=tiny.vision_hidden_size, intermediate_size=4 * tiny.vision_hidden_size,
        num_hidden_layers=tiny.vision_layers, num_attention_heads=tiny.num_heads,
        image_size=tiny.image_size, patch_size=tiny.patch_size, initializer_range=tiny.vision_hidden_size ** -0.5)
    text = LlamaConfig(
        hidden_size=tiny.text_hidden_size, intermediate_size=4 * tiny.text_hidden_size,
        num_hidden_layers=tiny.text_layers, num_attention_heads=tiny.num_heads, num_key_value_heads=tiny.num_heads,
        vocab_size=len(tokenizer), max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        # A frozen random lm_head at the default std 0.02 caps logits near 2.6 at width 128: the model could
        # never become confident. Standard 1/sqrt(width) scales behave like a pretrained model's.
        initializer_range=tiny.text_hidden_size ** -0.5)
    # With a 2-layer tower the penultimate layer (LLaVA's -2) would skip half the tower.
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         image_seq_length=(tiny.image_size // tiny.patch_size) ** 2, tie_word_embeddings=False)
    torch.manual_seed(tiny.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    CLIPImageProcessor(
        size={"shortest_edge": tiny.image_size}, crop_size={"height": tiny.image_size, "width": tiny.image_size},
        image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(out_dir)
    return out_dir


def architecture_config(name_or_path: str) -> LlavaConfig:
    """The architecture alone (no weights): shipped JSON for known checkpoints, else config.json."""
    if name_or_path in SHIPPED_ARCHITECTURES:
        text = resources.files("vlft.models").joinpath("arch", SHIPPED_ARCHITECTURES[name_or_path]).read_text()
        return LlavaConfig(**json.loads(text))
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except OSError as err:
        raise ModelLoadError(f"cannot read the architecture of '{name_or_path}': {str(err).splitlines()[0]}") from None


def build_on_meta(config: LlavaConfig) -> LlavaForConditionalGeneration:
    """Instantiate the architecture without allocating weights."""
    with torch.device("meta"):
        return LlavaForConditionalGeneration(config)


# The hooks every family gives the training loop (see vlft/models/__init__.py).

def training_texts(cfg: RunConfig) -> list[str]:
    """Every turn of the training records: the tiny model's word-level vocabulary comes from them."""
    from vlft.data.records import data_files, read_records
    from vlft.data.skips import SkipLog

    skips = SkipLog() if cfg.data.on_error == "skip" else None
    return [turn["value"] for path in data_files(cfg.data.train) for _, record in read_records(path, skips)
            for turn in record["conversations"]]


def build_tiny_for_run(cfg: RunConfig, out_dir: str | Path) -> Path:
    return build_tiny(cfg.model.tiny, training_texts(cfg), out_dir)


def load_for_run(cfg: RunConfig, path: str, with_model: bool = True) -> ModelBundle:
    return load(cfg.model, path, with_model)


def train_dataset(cfg: RunConfig, bundle: ModelBundle, on_error: str | None = None):
    from vlft.data.dataset import ConversationDataset

    return ConversationDataset(cfg.data.train, bundle, cfg.data.image_folder, cfg.data.max_length,
                               on_error=on_error or cfg.data.on_error, video=cfg.data.video)


def eval_dataset(cfg: RunConfig, bundle: ModelBundle, on_error: str | None = None):
    from vlft.data.dataset import PromptDataset

    return PromptDataset(cfg.data.eval, bundle, cfg.data.image_folder, cfg.eval.max_samples,
                         on_error=on_error or cfg.data.on_error, video=cfg.data.video)


def collator(bundle: ModelBundle):
    from vlft.data.dataset import VisionTextCollator

    return VisionTextCollator(bundle.tokenizer.pad_token_id)


def evaluate(model, bundle: ModelBundle, cfg: RunConfig, device="cpu", synced_gpus: bool = False,
             predictions_path=None) -> dict:
    from vlft.eval.evaluator import evaluate_vqa

    return evaluate_vqa(model, bundle, cfg, device=device, synced_gpus=synced_gpus, predictions_path=predictions_path)


def export_merged(model: LlavaForConditionalGeneration, bundle: ModelBundle, out_dir: str | Path) -> None:
    """transformers' own layout: the model, its tokenizer and image processor, and a LlavaProcessor that
    expands `<image>` to the image's tokens, so `AutoProcessor.from_pretrained(out_dir)` works."""
    from transformers import LlavaProcessor

    model.save_pretrained(out_dir)
    processor = LlavaProcessor(image_processor=bundle.image_processor, tokenizer=bundle.tokenizer,
                               patch_size=model.config.vision_config.patch_size,
                               vision_feature_select_strategy=model.config.vision_feature_select_strategy,
                               num_additional_image_tokens=1,  # CLIP's class token, dropped by "default"
                               image_token=bundle.tokenizer.convert_ids_to_tokens(model.config.image_token_index))
    processor.save_pretrained(out_dir)
