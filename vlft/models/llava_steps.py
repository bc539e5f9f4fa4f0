"""LLaVA forwards that run the same collectives on every rank: the vision tower in every training step, and
generation from embeddings computed in the same place on every rank.

A rank whose batch holds no image would otherwise skip the vision tower and projector while the others run them,
and the ranks' collectives no longer match (ZeRO-3 gathers the tower's parameters, ZeRO-2 reduces its
gradients): a crash on gloo, a hang on NCCL. As LLaVA does for text-only samples, such a rank runs a blank image
through both and adds its features times zero to the text embeddings: the same loss and gradients (exactly),
the same collectives, in the same order (after the embeddings, before the language model). A checkpoint with a
video path of its own (OneVision, NeXT-Video) runs the tower once for a batch's images and once more for its
videos: when any rank's batch holds a video (one small all-reduce says), every rank runs both paths, on blanks
where its batch lacks that kind.
"""

from __future__ import annotations

import contextlib

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


def _to_tower(inner, inputs: dict, like: torch.Tensor) -> dict:
    dtype = next(inner.vision_tower.parameters()).dtype
    return {k: v.to(like.device, dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}


def unused_blank_image(inner, visual: LlavaVisual, like: torch.Tensor) -> torch.Tensor:
    """A blank image through the vision tower and projector, times zero: adds nothing, runs both."""
    return (image_features(inner, _to_tower(inner, visual.blank(), like)).sum() * 0).to(like.dtype)


def unused_blank_video(inner, visual: LlavaVisual, like: torch.Tensor) -> torch.Tensor:
    """The same through the checkpoint's own video path (OneVision, NeXT-Video: the tower once more, pooled)."""
    return (video_features(inner, _to_tower(inner, visual.blank_video(), like)).sum() * 0).to(like.dtype)


def video_on_any_rank(has_video: bool, device: torch.device) -> bool:
    """Whether some rank's batch holds a video. A rank whose batch has images and videos runs the tower twice (the
    image path, then the video path): every rank must, or ZeRO-3's parameter gathers stop matching."""
    flag = torch.tensor([float(has_video)], device=device)
    torch.distributed.all_reduce(flag)
    return bool(flag.item())


def unused_blanks(inner, visual: LlavaVisual, like: torch.Tensor, has: tuple[bool, bool],
                  video_somewhere: bool) -> torch.Tensor | None:
    """What a rank adds so that its tower runs as often as every other rank's: a blank image when its batch has
    none, and with a video path, a blank video when it has none but another rank has."""
    has_image, has_video = has
    blanks = []
    if not has_image and (not has_video or visual.native_video):
        blanks.append(unused_blank_image(inner, visual, like))
    if visual.native_video and video_somewhere and not has_video:
        blanks.append(unused_blank_video(inner, visual, like))
    return sum(blanks) if blanks else None


def own_parameters_gathered(inner):
    """Under ZeRO-3, the parameters that belong to the LlavaModel itself (NeXT's and OneVision's image_newline):
    DeepSpeed gathers them when the module's forward runs, and generation calls the tower's helpers without it."""
    own = [p for p in inner.parameters(recurse=False) if hasattr(p, "ds_id")]
    if not own:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(own)


@torch.no_grad()
def generation_inputs(model, visual: LlavaVisual, batch: dict) -> dict:
    """What `generate` is given: the prompt's embeddings with each image's and video's features in its tokens.

    The vision tower runs here, in the same place on every rank (on a blank image in a distributed run
    whose batch has none), rather than wherever a transformers version runs it inside `generate`: under
    ZeRO-3 the ranks must gather the same parameters in the same order."""
    inner = llava_model(model)
    with own_parameters_gathered(inner):
        input_ids = batch["input_ids"]
        embeds = inner.get_input_embeddings()(input_ids)
        has = tuple(batch.get(keys[0]) is not None for keys in (IMAGE_KEYS, VIDEO_KEYS))
        video_somewhere = distributed() and visual.native_video and video_on_any_rank(has[1], embeds.device)
        for present, token_id, features in ((has[0], visual.image_token_id, image_features),
                                            (has[1], visual.video_token_id, video_features)):
            if present:
                values = features(inner, batch).to(embeds.dtype)
                slots = (input_ids == token_id).unsqueeze(-1).expand_as(embeds)
                embeds = embeds.masked_scatter(slots, values)
        if distributed() and (blanks := unused_blanks(inner, visual, embeds, has, video_somewhere)) is not None:
            embeds = embeds + blanks
    return {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]}


def keep_vision_in_step(model, visual: LlavaVisual) -> None:
    """In a distributed training forward, run blank visual inputs where the batch lacks them (see
    `unused_blanks` and the module's docstring). Generation runs the tower in `generation_inputs` instead."""
    inner = llava_model(model)
    if getattr(inner, "_vlft_vision_in_step", False):
        return

    def note_visual_inputs(module, args, kwargs):
        precomputed = bool(kwargs.get("mm_encoder_outputs"))
        has = tuple(kwargs.get(keys[0]) is not None or precomputed for keys in (IMAGE_KEYS, VIDEO_KEYS))
        in_step = torch.is_grad_enabled() and distributed()
        # before the tower runs: the one collective that tells every rank whether to run the video path
        device = next(module.parameters()).device
        module._vlft_visual_step = (has, in_step and visual.native_video and video_on_any_rank(has[1], device))

    def add_blanks(module, args, kwargs):
        if not torch.is_grad_enabled() or kwargs.get("inputs_embeds") is None or not distributed():
            return None
        embeds = kwargs["inputs_embeds"]
        blanks = unused_blanks(inner, visual, embeds, *inner._vlft_visual_step)
        return None if blanks is None else (args, {**kwargs, "inputs_embeds": embeds + blanks})

    inner.register_forward_pre_hook(note_visual_inputs, with_kwargs=True)
    inner.language_model.register_forward_pre_hook(add_blanks, with_kwargs=True)
    inner._vlft_vision_in_step = True
