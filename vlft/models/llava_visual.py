"""What a LLaVA checkpoint's processor says about its images and videos: the model inputs of one image or
clip, and how many tokens each occupies in the text.

The processor itself is asked (it expands its image token for the same image), so any-resolution tiles
(LLaVA-NeXT, OneVision), pooled video frames (OneVision, LLaVA-NeXT-Video) and CLS-token conventions all come
out as the checkpoint defines them. A checkpoint whose video has no token of its own (LLaVA-1.5) takes a clip's
frames through its image path: one run of image tokens per frame.
"""

from __future__ import annotations

import torch
from PIL import Image


class LlavaVisual:
    """Images and videos for one LLaVA checkpoint (``processor`` and ``config`` as loaded)."""

    def __init__(self, processor, config):
        self.processor, self.config = processor, config
        self.image_token_id = config.image_token_index if hasattr(config, "image_token_index") else (
            config.image_token_id)
        self.video_token_id = getattr(config, "video_token_index", getattr(config, "video_token_id", None))
        self.native_video = self.video_token_id is not None and getattr(processor, "video_processor", None) is not None
        self.image_token = processor.tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.video_token = (processor.tokenizer.convert_ids_to_tokens(self.video_token_id) if self.native_video
                            else None)
        self.counts: dict[tuple, int] = {}
        self.blanks: dict[str, dict[str, torch.Tensor]] = {}  # made once: used in every step of a rank without one
        # any-resolution checkpoints tile an image by its size; LLaVA-1.5 resizes every image to the tower's input
        self.size_dependent = config.model_type != "llava"

    def image(self, image: Image.Image) -> tuple[dict[str, torch.Tensor], int]:
        """(model inputs of one image, image tokens it occupies)."""
        out = self.processor(text=self.image_token, images=[image], return_tensors="pt")
        inputs = {k: v for k, v in out.items() if k in ("pixel_values", "image_sizes")}
        return inputs, int((out["input_ids"] == self.image_token_id).sum())

    def video(self, frames: list[Image.Image], as_images: bool = False) -> tuple[dict[str, torch.Tensor], int]:
        """(model inputs of one clip, tokens it occupies): the checkpoint's video path, or (``as_images``, or a
        checkpoint without one) each frame as an image, in time order."""
        if self.native_video and not as_images:
            out = self.processor(text=self.video_token, videos=[frames], return_tensors="pt")
            return {"pixel_values_videos": out["pixel_values_videos"]}, int((out["input_ids"] ==
                                                                            self.video_token_id).sum())
        parts = [self.image(frame) for frame in frames]
        inputs = {key: torch.cat([p[0][key] for p in parts]) for key in parts[0][0]}
        return inputs, sum(count for _, count in parts)

    def image_tokens(self, height: int, width: int) -> int:
        """Tokens of an image of this size, known before it is decoded (for checks before training): the
        processor's count for a blank image of that size (remembered: most datasets have a few sizes)."""
        key = ("image", height, width)
        if key not in self.counts:
            self.counts[key] = self.image(Image.new("RGB", (width, height)))[1]
        return self.counts[key]

    def video_tokens(self, frames: int, height: int, width: int, as_images: bool = False) -> int:
        key = ("video", frames, height, width, as_images)
        if key not in self.counts:
            self.counts[key] = self.video([Image.new("RGB", (width, height))] * frames, as_images)[1]
        return self.counts[key]

    def blank(self) -> dict[str, torch.Tensor]:
        """Model inputs of a blank image (what a rank whose batch has no image runs through the tower)."""
        return self._blank("image")

    def blank_video(self) -> dict[str, torch.Tensor]:
        """Model inputs of a one-frame blank clip through the checkpoint's video path."""
        return self._blank("video")

    def _blank(self, kind: str) -> dict[str, torch.Tensor]:
        if kind not in self.blanks:
            side = self.config.vision_config.image_size
            blank = Image.new("RGB", (side, side))
            self.blanks[kind] = (self.image(blank) if kind == "image" else self.video([blank]))[0]
        return self.blanks[kind]
