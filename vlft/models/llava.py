"""LLaVA family: transformers' LlavaForConditionalGeneration (CLIP-ViT + projector + Llama).

One way in: `load(model_cfg, path)` reads any transformers LLaVA checkpoint from a hub name or a
local directory; `build_tiny(...)` writes a small random-init checkpoint with `save_pretrained`
so that tests and the offline default go through exactly the same `load`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import partial
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
    LlavaModel,
)

from vlft.config import ModelConfig, RunConfig, TinyModelConfig
from vlft.data.template import LLAVA_V1
from vlft.models.base import ModelBundle, ModelLoadError
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
    try:
        model = LlavaForConditionalGeneration.from_pretrained(path, **kwargs) if with_model else None
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
    if model is not None:
        keep_vision_in_step(model)
    return ModelBundle(
        model=model, tokenizer=tokenizer, image_processor=image_processor, template=LLAVA_V1,
        num_image_tokens=num_image_tokens(config), image_token_id=config.image_token_index,
        towers=TOWERS, base_path=str(path))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and (
        torch.distributed.get_world_size() > 1)


def _image_features(llava_model, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    config = llava_model.config
    out = llava_model.get_image_features(pixel_values=pixel_values, vision_feature_layer=config.vision_feature_layer,
                                         vision_feature_select_strategy=config.vision_feature_select_strategy)
    out = getattr(out, "pooler_output", out)  # transformers 5 returns a model output
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _llava_model(model) -> LlavaModel:
    """The LlavaModel inside a LlavaForConditionalGeneration, a PeftModel of one, or a DeepSpeed engine."""
    return next(module for module in model.modules() if isinstance(module, LlavaModel))


@torch.no_grad()
def generation_inputs(model, batch: dict) -> dict:
    """What `generate` is given: the prompt's embeddings with each image's features in its image tokens.

    The vision tower runs here, in the same place on every rank (on a blank image in a distributed run
    whose batch has none), rather than wherever a transformers version runs it inside `generate`: under
    ZeRO-3 the ranks must gather the same parameters in the same order."""
    llava_model = _llava_model(model)
    input_ids = batch["input_ids"]
    embeds = llava_model.get_input_embeddings()(input_ids)
    if batch.get("pixel_values") is not None:
        features = torch.cat(_image_features(llava_model, batch["pixel_values"])).to(embeds.dtype)
        image_tokens = (input_ids == llava_model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(image_tokens, features)
    elif _distributed():
        embeds = embeds + _unused_blank_image(llava_model, embeds)
    return {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]}


def _unused_blank_image(llava_model, like: torch.Tensor) -> torch.Tensor:
    """A blank image through the vision tower and projector, times zero: adds nothing, runs both."""
    side = llava_model.config.vision_config.image_size
    dtype = next(llava_model.vision_tower.parameters()).dtype
    blank = torch.zeros(1, 3, side, side, dtype=dtype, device=like.device)
    return (sum(features.sum() for features in _image_features(llava_model, blank)) * 0).to(like.dtype)


def keep_vision_in_step(model: LlavaForConditionalGeneration) -> None:
    """Make every rank of a distributed run run the vision tower and projector in every training forward.

    A rank whose batch holds no image would otherwise skip them while the others run them, and the ranks'
    collectives no longer match (ZeRO-3 gathers the tower's parameters, ZeRO-2 reduces its gradients): a
    crash on gloo, a hang on NCCL. As LLaVA does for text-only samples, the rank runs a blank image through
    both and adds its features times zero to the text embeddings: the same loss and gradients (exactly),
    the same collectives, in the same order (after the embeddings, before the language model). Generation
    runs the tower in `generation_inputs` instead."""
    llava_model = model.model
    if getattr(llava_model, "_vlft_vision_in_step", False):
        return

    def note_images(module, args, kwargs):
        module._vlft_saw_images = kwargs.get("pixel_values") is not None or bool(kwargs.get("mm_encoder_outputs"))

    def blank_image(module, args, kwargs):
        if (llava_model._vlft_saw_images or not torch.is_grad_enabled() or kwargs.get("inputs_embeds") is None
                or not _distributed()):
            return None
        embeds = kwargs["inputs_embeds"]
        return args, {**kwargs, "inputs_embeds": embeds + _unused_blank_image(llava_model, embeds)}

    llava_model.register_forward_pre_hook(note_images, with_kwargs=True)
    llava_model.language_model.register_forward_pre_hook(blank_image, with_kwargs=True)
    llava_model._vlft_vision_in_step = True


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
    """Every turn of the good training records: the tiny model's word-level vocabulary comes from them."""
    from vlft.data.cache import read_encoded
    from vlft.data.records import validate_record
    from vlft.data.sources import as_sources

    def texts(record: dict, where: str) -> list[str]:
        validate_record(record, where)
        return [turn["value"] for turn in record["conversations"]]

    return [text for source in as_sources(cfg.data.train) for _, values, error in read_encoded(source, texts)
            if error is None for text in values]


def build_tiny_for_run(cfg: RunConfig, out_dir: str | Path) -> Path:
    return build_tiny(cfg.model.tiny, training_texts(cfg), out_dir)


def load_for_run(cfg: RunConfig, path: str, with_model: bool = True) -> ModelBundle:
    return load(cfg.model, path, with_model)


def train_dataset(cfg: RunConfig, bundle: ModelBundle, on_error: str | None = None):
    from vlft.data.cache import dataset_options
    from vlft.data.dataset import ConversationDataset

    return ConversationDataset(cfg.data.train, bundle, cfg.data.image_folder, cfg.data.max_length,
                               on_error=on_error or cfg.data.on_error, **dataset_options(cfg))


def eval_dataset(cfg: RunConfig, bundle: ModelBundle, on_error: str | None = None):
    from vlft.data.cache import dataset_options
    from vlft.data.dataset import PromptDataset

    return PromptDataset(cfg.data.eval, bundle, cfg.data.image_folder, max_samples=cfg.eval.max_samples,
                         on_error=on_error or cfg.data.on_error, **dataset_options(cfg))


def collator(bundle: ModelBundle):
    from vlft.data.dataset import VisionTextCollator

    return VisionTextCollator(bundle.tokenizer.pad_token_id)


def generation_options(model, bundle: ModelBundle) -> dict:
    """How generate_answers feeds this family's eval batches to ``model.generate`` (also used by `vlft predict`,
    `chat` and `demo`, so that their answers are the evaluation's): through `generation_inputs`."""
    return {"model_inputs": partial(generation_inputs, model)}


def evaluate(model, bundle: ModelBundle, cfg: RunConfig, device="cpu", synced_gpus: bool = False,
             predictions_path=None) -> dict:
    from vlft.eval.evaluator import evaluate_vqa

    return evaluate_vqa(model, eval_dataset(cfg, bundle), cfg, device=device, synced_gpus=synced_gpus,
                        predictions_path=predictions_path, **generation_options(model, bundle))


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
