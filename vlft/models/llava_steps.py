"""LLaVA forwards that run the same collectives on every rank: the vision tower in every training step, and
generation from embeddings computed in the same place on every rank.

A rank whose batch holds no image would otherwise skip the vision tower and projector while the others run them,
and the ranks' collectives no longer match (ZeRO-3 gathers the tower's parameters, ZeRO-2 reduces its
gradients): a crash on gloo, a hang on NCCL. As LLaVA does for text-only samples, such a rank runs a blank image
through both and adds its features times zero to the text embeddings: the same loss and gradients (exactly),
the same collectives, in the same order (after the embeddings, before the language model).
"""

from __future__ import annotations

import torch
from transformers import LlavaModel, LlavaNextModel, LlavaNextVideoModel, LlavaOnevisionModel

from vlft.models.llava_visual import LlavaVisual
from vlft.ranks import distributed

LLAVA_MODELS = (LlavaModel, LlavaNextModel, LlavaOnevisionModel, LlavaNextVideoModel)
IMAGE_KEYS, VIDEO_KEYS = ("pixel_values", "image_sizes"), ("pixel_values_videos",)


def llava_model(model) -> torch.nn.Module:
    """The LlavaModel (or NeXT, OneVision, NeXT-Video) inside a ...ForConditionalGeneration, a PeftModel of one,
    or a DeepSpeed engine."""
    return next(module for module in model.modules() if isinstance(module, LLAVA_MODELS))


def _features(output) -> list[torch.Tensor]:
    output = getattr(output, "pooler_output", output)  # transformers 5 returns a model output
    return list(output) if isinstance(output, (list, tuple)) else [output]


def image_features(inner, inputs: dict) -> torch.Tensor:
    """(tokens, D): the features of every image in ``inputs``, in token order."""
    kwargs = {key: inputs[key] for key in IMAGE_KEYS if key in inputs}
    return torch.cat([f.reshape(-1, f.shape[-1]) for f in _features(inner.get_image_features(**kwargs))])


def video_features(inner, inputs: dict) -> torch.Tensor:
    return torch.cat([f.reshape(-1, f.shape[-1]) for f in _features(inner.get_video_features(
        pixel_values_videos=inputs["pixel_values_videos"]))])


def unused_blank_image(inner, visual: LlavaVisual, like: torch.Tensor) -> torch.Tensor:
    """A blank image through the vision tower and projector, times zero: adds nothing, runs both."""
    dtype = next(inner.vision_tower.parameters()).dtype
    blank = {k: v.to(like.device, dtype if v.is_floating_point() else v.dtype) for k, v in visual.blank().items()}
    return (image_features(inner, blank).sum() * 0).to(like.dtype)


@torch.no_grad()
def generation_inputs(model, visual: LlavaVisual, batch: dict) -> dict:
    """What `generate` is given: the prompt's embeddings with each image's and video's features in its tokens.

    The vision tower runs here, in the same place on every rank (on a blank image in a distributed run
    whose batch has none), rather than wherever a transformers version runs it inside `generate`: under
    ZeRO-3 the ranks must gather the same parameters in the same order."""
    inner = llava_model(model)
    input_ids = batch["input_ids"]
    embeds = inner.get_input_embeddings()(input_ids)
    seen = False
    for keys, token_id, features in ((IMAGE_KEYS, visual.image_token_id, image_features),
                                     (VIDEO_KEYS, visual.video_token_id, video_features)):
        if batch.get(keys[0]) is not None:
            values = features(inner, batch).to(embeds.dtype)
            slots = (input_ids == token_id).unsqueeze(-1).expand_as(embeds)
            embeds, seen = embeds.masked_scatter(slots, values), True
    if not seen and distributed():
        embeds = embeds + unused_blank_image(inner, visual, embeds)
    return {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]}


def keep_vision_in_step(model, visual: LlavaVisual) -> None:
    """In a distributed training forward whose batch has no image or video, run a blank image too (see the
    module's docstring). Generation runs the tower in `generation_inputs` instead."""
    inner = llava_model(model)
    if getattr(inner, "_vlft_vision_in_step", False):
        return

    def note_visual_inputs(module, args, kwargs):
        module._vlft_saw_visual = any(kwargs.get(key) is not None for key in (IMAGE_KEYS[0], VIDEO_KEYS[0])) or bool(
            kwargs.get("mm_encoder_outputs"))

    def blank_image(module, args, kwargs):
        if (inner._vlft_saw_visual or not torch.is_grad_enabled() or kwargs.get("inputs_embeds") is None
                or not distributed()):
            return None
        embeds = kwargs["inputs_embeds"]
        return args, {**kwargs, "inputs_embeds": embeds + unused_blank_image(inner, visual, embeds)}

    inner.register_forward_pre_hook(note_visual_inputs, with_kwargs=True)
    inner.language_model.register_forward_pre_hook(blank_image, with_kwargs=True)
    inner._vlft_vision_in_step = True
