"""The VL-BART model itself: BART with a CLIP visual encoder from open_clip (VL-T5 / VL-Adapter style).

This file imports torch, torchvision, transformers, open_clip and safetensors only, never vlft: `vlft merge`
copies it next to a merged VL-BART as `modeling_vl_bart.py`, so that the merged model loads and generates
where vlft (and peft) are not installed:

    import sys; sys.path.insert(0, "merged")
    from modeling_vl_bart import load_merged
    model, tokenizer, transform = load_merged("merged")

A merged directory holds `vl_bart.json` {"language": "language", "vision", "feature_dim", "image"}, the
BART in `language/` (transformers' save_pretrained, with its tokenizer) and the CLIP encoder and projector
in `vision_projector.safetensors`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.modified_resnet import ModifiedResNet
from safetensors.torch import load_model, save_file
from torch import nn
from torchvision import transforms
from transformers import AutoTokenizer, BartForConditionalGeneration

CONFIG_FILE = "vl_bart.json"
CLIP_MEAN, CLIP_STD = list(OPENAI_DATASET_MEAN), list(OPENAI_DATASET_STD)  # open_clip's, as lists for JSON
MAX_IMAGES = 8  # images per record (NLVR2 has two), or frame groups of a video (more frames are pooled)
VISION_PROJECTOR_FILE = "vision_projector.safetensors"
PLACE_SCALE = 1.0  # box and place embeddings at start, relative to the LayerNorm'd features


def active_copy(module: nn.Module) -> nn.Module:
    """The module that runs: a fully trained tower is wrapped by peft (modules_to_save), which keeps the
    frozen original beside the trained copy; as peft's wrapper does, the copy while the adapter is active,
    the original while adapters are disabled. Told by its attributes: this file ships with merged models,
    which load without peft."""
    copies = getattr(module, "modules_to_save", None)
    if not isinstance(copies, nn.ModuleDict):
        return module
    if module.disable_adapters or not module.active_adapters:
        return module.original_module
    return copies[module.active_adapters[0]]


def grid_features(vision: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, N, C) features before pooling: a ResNet's last stage cells, or a ViT's patch tokens."""
    vision = active_copy(vision)
    if isinstance(vision, ModifiedResNet):
        x = vision.stem(pixel_values.to(vision.conv1.weight.dtype))
        x = vision.layer4(vision.layer3(vision.layer2(vision.layer1(x))))
        return x.flatten(2).transpose(1, 2)
    vision.output_tokens = True
    _, tokens = vision(pixel_values)
    return tokens


def pool_frames(features: torch.Tensor, mask: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, N, C) per-frame features -> (B, groups, N, C): consecutive frames averaged (padding frames left
    out), so a video of any length gives a fixed number of visual tokens, in time order."""
    batch, frames, cells, channels = features.shape
    if frames <= groups:
        return features, mask
    weights = mask.to(features.dtype)
    flat = (features * weights[:, :, None, None]).permute(0, 2, 3, 1).reshape(batch, cells * channels, frames)
    summed = torch.nn.functional.adaptive_avg_pool1d(flat, groups)
    counts = torch.nn.functional.adaptive_avg_pool1d(weights[:, None, :], groups)  # share of real frames
    pooled = (summed / counts.clamp_min(1e-6)).reshape(batch, cells, channels, groups).permute(0, 3, 1, 2)
    return pooled, (counts[:, 0] > 0).to(mask.dtype)


@lru_cache(maxsize=8)  # the same few grid sizes every step
def cell_boxes(cells: int) -> torch.Tensor:
    """(cells, 5) boxes (x1, y1, x2, y2, area), in [0, 1], of a square grid's cells in row-major order."""
    side = round(cells ** 0.5)
    if side * side != cells:
        raise ValueError(f"visual features of {cells} cells: expected a square grid")
    edges = torch.arange(side + 1, dtype=torch.float32) / side
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    x, y = x.flatten(), y.flatten()
    boxes = torch.stack([edges[x], edges[y], edges[x + 1], edges[y + 1]], dim=1)
    return torch.cat([boxes, torch.full((cells, 1), 1.0 / cells)], dim=1)


class Projector(nn.Module):
    """VL-T5's visual embedding: Linear + LayerNorm of each cell's features into BART's width, plus an
    embedding of the cell's box in the image (Linear + LayerNorm of x1, y1, x2, y2, area) and a learned
    embedding of the image's place in the record (NLVR2's left and right image; a video's frames in time
    order). Box and place embeddings start at the features' scale: BART adds only its frozen text
    positions to these tokens (std 0.09 against the features' 1 in a tiny build), and place embeddings
    grown from zero by the optimiser stayed ~20x smaller than the features (norms 0.3-0.9 against 11 after
    2000 steps), too faint to tell which way a shape moves."""

    def __init__(self, feature_dim: int, d_model: int, max_images: int = MAX_IMAGES):
        super().__init__()
        self.linear, self.norm = nn.Linear(feature_dim, d_model), nn.LayerNorm(d_model)
        self.box, self.box_norm = nn.Linear(5, d_model), nn.LayerNorm(d_model)
        self.image_index = nn.Embedding(max_images, d_model)
        nn.init.normal_(self.image_index.weight, std=PLACE_SCALE)
        nn.init.constant_(self.box_norm.weight, PLACE_SCALE)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, images, N, C) -> (B, images * N, d_model)."""
        boxes = cell_boxes(features.shape[2]).to(features.device, self.box.weight.dtype)
        x = (self.norm(self.linear(features)) + self.box_norm(self.box(boxes))
             + self.image_index.weight[: features.shape[1], None, :])
        return x.flatten(1, 2)


class VLBart(nn.Module):
    # BART's loss is a mean over this batch's label tokens: the Trainer must not take the **kwargs below for
    # num_items_in_batch support and multiply the loss by the number of ranks.
    accepts_loss_kwargs = False

    def __init__(self, language: BartForConditionalGeneration, vision: nn.Module, feature_dim: int):
        super().__init__()
        self.vision = vision
        if isinstance(vision, ModifiedResNet):
            vision.attnpool = nn.Identity()  # grid features skip the pooling head: no idle parameters
        self.projector = Projector(feature_dim, language.config.d_model)
        self.language = language
        self.feature_dim = feature_dim
        self.config = language.config  # what the Trainer and peft look up

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.vision.modules():  # frozen statistics: the base model must not drift
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def encoder_inputs(self, input_ids, attention_mask, pixel_values=None, image_mask=None, visual_features=None,
                       visual_index=None):
        """Visual tokens of every image, then the text. pixel_values: (B, C, H, W) or, with several
        images per record, (B, images, C, H, W) with image_mask (B, images) marking the real ones;
        or visual_features (B, images, cells, channels), pre-extracted by the same vision tower.
        visual_index (rows,): the visual input of each text row, when several rows share one (the
        questions of one video go through the vision tower once)."""
        if visual_features is None:
            if pixel_values.dim() == 4:
                pixel_values = pixel_values.unsqueeze(1)
            batch, images = pixel_values.shape[:2]
            cells = grid_features(self.vision, pixel_values.flatten(0, 1))
            visual_features = cells.unflatten(0, (batch, images))
        batch, images = visual_features.shape[:2]
        if image_mask is None:
            image_mask = attention_mask.new_ones(batch, images)
        if visual_index is not None:
            visual_features, image_mask = visual_features[visual_index], image_mask[visual_index]
        groups = self.projector.image_index.num_embeddings
        visual_features, image_mask = pool_frames(visual_features, image_mask, groups)
        visual = self.projector(visual_features.to(self.projector.linear.weight.dtype))
        text = self.language.get_encoder().embed_tokens(input_ids)
        visual_mask = image_mask.to(attention_mask.dtype).repeat_interleave(visual_features.shape[2], dim=1)
        mask = torch.cat([visual_mask, attention_mask], dim=1)
        embeds = torch.cat([visual.to(text.dtype), text], dim=1)
        if bool((mask == 0).any()):  # padding last, real tokens in order: BART's positions as if unpadded
            order = torch.sort(1 - mask, dim=1, stable=True).indices
            embeds = embeds.gather(1, order.unsqueeze(-1).expand_as(embeds))
            mask = mask.gather(1, order)
        return embeds, mask

    def forward(self, input_ids, attention_mask, pixel_values=None, labels=None, image_mask=None,
                visual_features=None, visual_index=None, **_):
        embeds, mask = self.encoder_inputs(input_ids, attention_mask, pixel_values, image_mask, visual_features,
                                           visual_index)
        return self.language(inputs_embeds=embeds, attention_mask=mask, labels=labels)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values=None, image_mask=None, visual_features=None,
                 **kwargs):
        embeds, mask = self.encoder_inputs(input_ids, attention_mask, pixel_values, image_mask, visual_features)
        return self.language.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)


def image_transform(size: int, mean=CLIP_MEAN, std=CLIP_STD):
    return transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(mean, std)])


def vision_from_spec(spec: dict) -> tuple[nn.Module, int]:
    """The CLIP encoder a spec names ({"tiny_resnet": {...}} or {"open_clip": name, "pretrained": tag}) and
    the width of its grid features."""
    if "tiny_resnet" in spec:
        args = spec["tiny_resnet"]
        vision = ModifiedResNet(layers=args["layers"], output_dim=args["width"] * 32, heads=2,
                                image_size=args["image_size"], width=args["width"])
        return vision, args["width"] * 32
    vision = open_clip.create_model(spec["open_clip"], pretrained=spec.get("pretrained")).visual
    dim = vision.layer4[-1].conv3.out_channels if isinstance(vision, ModifiedResNet) else vision.transformer.width
    return vision, dim


def save_merged(model: VLBart, tokenizer, vision_spec: dict, image: dict, directory: str | Path) -> None:
    """Write the layout `load_merged` reads. The vision spec must not name pretrained weights: they are here."""
    directory = Path(directory)
    model.language.save_pretrained(directory / "language")
    tokenizer.save_pretrained(directory / "language")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("language.")}
    save_file(state, str(directory / VISION_PROJECTOR_FILE))
    spec = {"language": "language", "vision": {**vision_spec, "pretrained": None} if "open_clip" in vision_spec
            else vision_spec, "feature_dim": model.feature_dim, "image": image}
    (directory / CONFIG_FILE).write_text(json.dumps(spec, indent=1))


def load_matching(model: VLBart, weights: Path, loaded_elsewhere: str | None = None) -> None:
    """Load a safetensors file into the model, every key checked (but those under ``loaded_elsewhere``):
    a file from another version of the model is an error naming it, never a silent fresh init."""
    missing, unexpected = load_model(model, str(weights), strict=False)  # tied BART embeddings stored once
    missing = [k for k in missing if not (loaded_elsewhere and k.startswith(loaded_elsewhere))]
    if missing or unexpected:
        raise RuntimeError(f"{weights}: does not match this VL-BART (missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}); rebuild it or train again")


def load_merged(directory: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, image transform) of a directory written by `save_merged`."""
    directory = Path(directory)
    spec = json.loads((directory / CONFIG_FILE).read_text())
    language_dir = directory / spec["language"]
    vision, dim = vision_from_spec(spec["vision"])
    model = VLBart(BartForConditionalGeneration.from_pretrained(language_dir, dtype=dtype), vision, dim)
    load_matching(model, directory / VISION_PROJECTOR_FILE, loaded_elsewhere="language.")
    image = spec["image"]
    return model.to(dtype).eval(), AutoTokenizer.from_pretrained(language_dir), image_transform(
        image["size"], image["mean"], image["std"])
