"""Small random-init checkpoints of the LLaVA architectures, written with `save_pretrained` (model, tokenizer,
processor, chat template) so that they load through exactly the code a 7B checkpoint takes.

- `llava` (LLaVA-1.5): CLIP-ViT + Llama, no chat template (vlft's LLaVA-v1 template, the original training
  format), one run of image tokens per image;
- `llava_next` (LLaVA-NeXT): CLIP-ViT + Llama, any-resolution tiles, a Mistral-style `[INST]` chat template;
- `llava_onevision`: SigLIP + Qwen2, any-resolution tiles, video frames pooled 2x2, the ChatML template of
  llava-onevision-qwen2-*-hf (`<|im_end|>` ends a turn and is the end-of-sequence token);
- `llava_next_video`: CLIP-ViT + Llama, video frames pooled 2x2, the Vicuna-style template of
  LLaVA-NeXT-Video-7B-hf.

Tiles of any-resolution builds are multiples of the tower's input size (up to 2x2): a 64-pixel easy-VQA image on a
32-pixel tower is read as its downscaled whole plus four tiles.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    LlavaProcessor,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.image_utils import OPENAI_CLIP_MEAN as CLIP_MEAN
from transformers.image_utils import OPENAI_CLIP_STD as CLIP_STD

from vlft.config import TinyModelConfig
from vlft.models.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN, build_word_tokenizer

ARCHITECTURES = ("llava", "llava_next", "llava_onevision", "llava_next_video")

# Chat templates of the tiny builds, in the style of the checkpoints named above. Images first, then text.
_IMAGES_THEN_TEXT = ("{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
                     "{{ '<image>\\n' }}{% endfor %}"
                     "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
                     "{{ '<video>\\n' }}{% endfor %}")
_TEXT = ("{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
         "{% endfor %}")
MISTRAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'][0]['text'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}" + _IMAGES_THEN_TEXT + _TEXT + "{{ ' [/INST]' }}"
    "{% else %}{{ ' ' }}{% generation %}" + _TEXT + "{{ eos_token }}{% endgeneration %}{% endif %}{% endfor %}")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}" + _IMAGES_THEN_TEXT +
    "{% if message['role'] != 'assistant' %}" + _TEXT + "{% else %}{% generation %}" + _TEXT +
    "{% endgeneration %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}"
    "{% endif %}" + _IMAGES_THEN_TEXT + "{% if message['role'] != 'assistant' %}" + _TEXT + "{{ ' ' }}"
    "{% else %}{% generation %}" + _TEXT + "{{ ' ' }}{% endgeneration %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
# words of each build's template (their own tokens in the word-level vocabulary) and its special tokens
TEMPLATE_WORDS = {"llava": ["USER", "ASSISTANT", ":"], "llava_next": ["[", "]", "INST", "/"],
                  "llava_onevision": ["user", "assistant", "system"], "llava_next_video": ["USER", "ASSISTANT", ":"]}
SPECIALS = {"llava": [], "llava_next": [], "llava_onevision": ["<video>", "<|im_start|>", "<|im_end|>"],
            "llava_next_video": ["<video>"]}


def _text_config(tiny: TinyModelConfig, tokenizer, qwen: bool):
    kwargs = dict(
        hidden_size=tiny.text_hidden_size, intermediate_size=4 * tiny.text_hidden_size,
        num_hidden_layers=tiny.text_layers, num_attention_heads=tiny.num_heads, num_key_value_heads=tiny.num_heads,
        vocab_size=len(tokenizer), max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        # A frozen random lm_head at the default std 0.02 caps logits near 2.6 at width 128: the model could
        # never become confident. Standard 1/sqrt(width) scales behave like a pretrained model's.
        initializer_range=tiny.text_hidden_size ** -0.5)
    return Qwen2Config(**kwargs) if qwen else LlamaConfig(**kwargs)


def _vision_config(tiny: TinyModelConfig, siglip: bool):
    kwargs = dict(hidden_size=tiny.vision_hidden_size, intermediate_size=4 * tiny.vision_hidden_size,
                  num_hidden_layers=tiny.vision_layers, num_attention_heads=tiny.num_heads,
                  image_size=tiny.image_size, patch_size=tiny.patch_size)
    if siglip:
        return SiglipVisionConfig(**kwargs, vision_use_head=False)
    return CLIPVisionConfig(**kwargs, initializer_range=tiny.vision_hidden_size ** -0.5)


def _tiles(side: int) -> list[list[int]]:
    return [[side * h, side * w] for h in (1, 2) for w in (1, 2)]


def _build(tiny: TinyModelConfig, tokenizer):
    """(model, processor) of tiny.architecture, random init."""
    side, patches = tiny.image_size, (tiny.image_size // tiny.patch_size) ** 2
    image_id, video_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    arch = tiny.architecture
    vision, text = _vision_config(tiny, arch == "llava_onevision"), _text_config(tiny, tokenizer,
                                                                                 arch == "llava_onevision")
    # With a 2-layer tower the penultimate layer (LLaVA's -2) would skip half the tower.
    common = dict(vision_config=vision, text_config=text, image_token_index=image_id, vision_feature_layer=-1,
                  tie_word_embeddings=False)
    clip = dict(size={"shortest_edge": side}, crop_size={"height": side, "width": side}, image_mean=CLIP_MEAN,
                image_std=CLIP_STD)
    if arch == "llava":
        config = LlavaConfig(**common, vision_feature_select_strategy="default", image_seq_length=patches)
        return LlavaForConditionalGeneration(config), LlavaProcessor(
            image_processor=CLIPImageProcessor(**clip), tokenizer=tokenizer, patch_size=tiny.patch_size,
            vision_feature_select_strategy="default", num_additional_image_tokens=1)
    if arch == "llava_next":
        config = LlavaNextConfig(**common, vision_feature_select_strategy="default", image_grid_pinpoints=_tiles(side))
        return LlavaNextForConditionalGeneration(config), LlavaNextProcessor(
            image_processor=LlavaNextImageProcessor(**clip, image_grid_pinpoints=_tiles(side)), tokenizer=tokenizer,
            patch_size=tiny.patch_size, vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=MISTRAL_TEMPLATE)
    if arch == "llava_next_video":
        config = LlavaNextVideoConfig(**common, vision_feature_select_strategy="default", video_token_index=video_id,
                                      image_grid_pinpoints=_tiles(side), spatial_pool_stride=2)
        return LlavaNextVideoForConditionalGeneration(config), LlavaNextVideoProcessor(
            video_processor=LlavaNextVideoVideoProcessor(**clip),
            image_processor=LlavaNextImageProcessor(**clip, image_grid_pinpoints=_tiles(side)), tokenizer=tokenizer,
            patch_size=tiny.patch_size, vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=VICUNA_TEMPLATE)
    config = LlavaOnevisionConfig(**common, video_token_index=video_id, image_grid_pinpoints=_tiles(side),
                                  vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    size = {"height": side, "width": side}
    return LlavaOnevisionForConditionalGeneration(config), LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=_tiles(side),
                                                     image_mean=CLIP_MEAN, image_std=CLIP_STD),
        video_processor=LlavaOnevisionVideoProcessor(size=size, image_mean=CLIP_MEAN, image_std=CLIP_STD),
        tokenizer=tokenizer, num_image_tokens=patches, vision_feature_select_strategy="full",
        chat_template=CHATML_TEMPLATE)


def build_tiny(tiny: TinyModelConfig, texts: Iterable[str], out_dir: str | Path) -> Path:
    """Write a small random-init LLaVA of ``tiny.architecture`` and its processor to ``out_dir``; the word-level
    tokenizer's vocabulary comes from ``texts`` (the training conversations)."""
    arch = tiny.architecture
    tokenizer = build_word_tokenizer(texts, extra_words=TEMPLATE_WORDS[arch], specials=SPECIALS[arch])
    if arch == "llava_onevision":  # as Qwen2-Instruct: the end of a turn is the end of the sequence
        tokenizer.eos_token = "<|im_end|>"
    torch.manual_seed(tiny.seed)
    model, processor = _build(tiny, tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
