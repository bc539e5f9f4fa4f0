"""LLaVA family: transformers' LLaVA architectures (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, LLaVA-NeXT-Video).

One way in: `load(model_cfg, path)` reads any transformers LLaVA checkpoint from a hub name or a local directory,
with its processor and chat template; `build_tiny(...)` (vlft.models.llava_tiny) writes a small random-init
checkpoint of any of the four with `save_pretrained`, so that tests and the offline default go through exactly
the same `load`.
"""

from __future__ import annotations

import json
import math
from functools import partial
from importlib import resources
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaProcessor,
)

from vlft.config import ConfigError, ModelConfig, RunConfig
from vlft.data.chat_template import CheckpointTemplate
from vlft.data.template import LLAVA_V1
from vlft.models.base import ConversationBundle, ModelBundle, ModelLoadError
from vlft.models.llava_steps import generation_inputs, keep_vision_in_step
from vlft.models.llava_tiny import build_tiny
from vlft.models.llava_visual import LlavaVisual
from vlft.models.quantization import prepare_quantized, quantized_load_kwargs

# Module-name prefixes of each tower: transformers >= 4.52 first, older layouts after. (LLaVA-NeXT's and
# OneVision's `image_newline` is a bare parameter, not a module: it stays frozen.)
TOWERS = {
    "vision": ("model.vision_tower", "vision_tower"),
    "projector": ("model.multi_modal_projector", "multi_modal_projector"),
    "language": ("model.language_model", "language_model.model"),
}
# config.model_type -> (config class, model class)
ARCHITECTURES = {
    "llava": (LlavaConfig, LlavaForConditionalGeneration),
    "llava_next": (LlavaNextConfig, LlavaNextForConditionalGeneration),
    "llava_onevision": (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration),
    "llava_next_video": (LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration),
}
# Checkpoints whose architecture ships with vlft, for --dry-run without network.
SHIPPED_ARCHITECTURES = {"llava-hf/llava-1.5-7b-hf": "llava-1.5-7b-hf.json",
                         "llava-hf/llava-v1.6-mistral-7b-hf": "llava-v1.6-mistral-7b-hf.json",
                         "llava-hf/llava-onevision-qwen2-7b-ov-hf": "llava-onevision-qwen2-7b-ov-hf.json",
                         "llava-hf/LLaVA-NeXT-Video-7B-hf": "LLaVA-NeXT-Video-7B-hf.json"}


def num_image_tokens(config) -> int:
    """Tokens one image occupies in the text at the tower's input size: patches, plus CLS under `full`."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if config.vision_feature_select_strategy == "full" else 0)


def video_tokens_per_frame(config) -> int:
    """Tokens one video frame occupies, as the architecture's processor counts them: OneVision and
    LLaVA-NeXT-Video pool each frame's grid 2x2; LLaVA-1.5 and LLaVA-NeXT take frames through their image path
    unpooled (for NeXT at least that: a frame larger than the tower's input adds tiles)."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    if config.model_type == "llava_onevision":
        return math.ceil(side / 2) ** 2
    if config.model_type == "llava_next_video":
        return side * side // 4
    return num_image_tokens(config)


def token_budget(config, cfg: RunConfig) -> dict:
    """What one video takes of data.max_length (at the most frames data.video samples), before any text."""
    frames, per_frame = cfg.data.video.most(), video_tokens_per_frame(config)
    newline = 1 if config.model_type == "llava_onevision" else 0  # OneVision ends a clip with one newline token
    return {"frames": frames, "tokens_per_frame": per_frame, "video_tokens": frames * per_frame + newline,
            "max_length": cfg.data.max_length, "pooled": config.model_type in ("llava_onevision", "llava_next_video")}


def check_token_budget(config, cfg: RunConfig) -> dict:
    """Refuse, before any record is read, a video checkpoint's config whose videos cannot fit data.max_length."""
    budget = token_budget(config, cfg)
    if budget["pooled"] and budget["video_tokens"] >= budget["max_length"]:
        raise ConfigError(
            f"data.max_length={budget['max_length']} cannot hold one video: {budget['frames']} frames x "
            f"{budget['tokens_per_frame']} tokens = {budget['video_tokens']} tokens before any text; raise "
            "data.max_length or lower data.video.num_frames (data.video.max_frames under fps sampling)")
    return budget


def _processor(path: str, tokenizer, config):
    """The checkpoint's processor. A LLaVA-1.5 checkpoint saved without one (a tiny build of an earlier vlft, an
    early llava-hf upload) gets the LlavaProcessor its config implies: its image processor, the tower's patch
    size and feature strategy, the CLS token it drops."""
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        if config.model_type != "llava":
            raise
        processor = LlavaProcessor(image_processor=AutoImageProcessor.from_pretrained(path), tokenizer=tokenizer)
    if config.model_type == "llava" and getattr(processor, "patch_size", None) is None:
        processor.patch_size = config.vision_config.patch_size
        processor.vision_feature_select_strategy = config.vision_feature_select_strategy
        processor.num_additional_image_tokens = 1  # CLIP's class token
    return processor


def template_of(processor, visual: LlavaVisual):
    """The checkpoint's chat template where it has one (processor's, else tokenizer's), else LLaVA-v1."""
    chat_template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if not chat_template:
        return LLAVA_V1
    return CheckpointTemplate(processor.tokenizer, chat_template, native_video=visual.native_video)


def load(model_cfg: ModelConfig, path: str, with_model: bool = True) -> ModelBundle:
    """Load model, processor (tokenizer, image and video processors, chat template) from a hub name or a local
    checkpoint directory, for any of the four architectures.

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
        config = AutoConfig.from_pretrained(path)
        if config.model_type not in ARCHITECTURES:
            raise ModelLoadError(f"'{path}' is a {config.model_type} checkpoint, not one of the LLaVA architectures "
                                 f"({', '.join(ARCHITECTURES)})")
        model = ARCHITECTURES[config.model_type][1].from_pretrained(path, **kwargs) if with_model else None
        if model is not None and model_cfg.quantization is not None:
            model = prepare_quantized(model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        processor = _processor(path, tokenizer, config)
    except OSError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"cannot load LLaVA checkpoint '{path}': not a local checkpoint directory and not reachable on the "
            f"model hub ({first_line})") from None
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    visual = LlavaVisual(processor, config)
    if model is not None:
        keep_vision_in_step(model, visual)
    return ConversationBundle(
        model=model, tokenizer=tokenizer, image_processor=processor.image_processor,
        template=template_of(processor, visual), num_image_tokens=num_image_tokens(config),
        image_token_id=visual.image_token_id, towers=TOWERS, base_path=str(path),
        extra={"processor": processor, "visual": visual})


def architecture_config(name_or_path: str):
    """The architecture alone (no weights): shipped JSON for known checkpoints, else config.json."""
    if name_or_path in SHIPPED_ARCHITECTURES:
        text = resources.files("vlft.models").joinpath("arch", SHIPPED_ARCHITECTURES[name_or_path]).read_text()
        fields = json.loads(text)
        return ARCHITECTURES[fields.pop("model_type", "llava")][0](**fields)
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except OSError as err:
        raise ModelLoadError(f"cannot read the architecture of '{name_or_path}': {str(err).splitlines()[0]}") from None


def build_on_meta(config):
    """Instantiate the architecture without allocating weights."""
    with torch.device("meta"):
        return ARCHITECTURES[config.model_type][1](config)


# The hooks every family gives (vlft.models.contract).
MODEL_FILES = ("config.json",)
DATA_OPTIONS: frozenset[str] = frozenset()


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

    check_token_budget(bundle.extra["visual"].config, cfg)
    return ConversationDataset(cfg.data.train, bundle, cfg.data.image_folder, cfg.data.max_length,
                               on_error=on_error or cfg.data.on_error, system_prompt=cfg.data.system_prompt,
                               **dataset_options(cfg))


def eval_dataset(cfg: RunConfig, bundle: ModelBundle, on_error: str | None = None):
    from vlft.data.cache import dataset_options
    from vlft.data.dataset import PromptDataset

    return PromptDataset(cfg.data.eval, bundle, cfg.data.image_folder, max_samples=cfg.eval.max_samples,
                         on_error=on_error or cfg.data.on_error, system_prompt=cfg.data.system_prompt,
                         **dataset_options(cfg))


def collator(bundle: ModelBundle):
    from vlft.data.dataset import VisionTextCollator

    return VisionTextCollator(bundle.tokenizer.pad_token_id)


def generation_options(model, bundle: ModelBundle) -> dict:
    """How generate_answers feeds this family's eval batches to ``model.generate`` (also used by `vlft predict`,
    `chat` and `demo`, so that their answers are the evaluation's): through `generation_inputs`."""
    return {"model_inputs": partial(generation_inputs, model, bundle.extra["visual"])}


def export_merged(model, bundle: ModelBundle, out_dir: str | Path) -> None:
    """transformers' own layout: the model and the checkpoint's processor (tokenizer, image and video processors,
    chat template), so that `AutoProcessor.from_pretrained(out_dir)` works."""
    model.save_pretrained(out_dir)
    bundle.extra["processor"].save_pretrained(out_dir)
