"""`vlft merge`: a tiny LLaVA, VL-BART and ViT trained with DoRA on both towers (Conv2d included) are merged,
loaded in a fresh process where vlft and peft cannot be imported, and give the unmerged model's logits."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config_dict
from vlft.config import config_from_dict, load_config
from vlft.merge import merge_run
from vlft.models import get_family
from vlft.runs import base_checkpoint, load_trained

# Run in a child process: vlft and peft are made unimportable, as if not installed.
CHILD_PRELUDE = """
import sys
sys.modules["vlft"] = None
sys.modules["peft"] = None
from PIL import Image
from safetensors.torch import save_file
import torch
directory, image_path, out = sys.argv[1:4]
image = Image.open(image_path).convert("RGB")
"""
CHILD_EPILOGUE = """
loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in ("vlft", "peft"))
assert not loaded, loaded
save_file({k: v.contiguous() for k, v in result.items()}, out)
"""
CHILD = {
    "llava": """
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained(directory).eval()
processor = AutoProcessor.from_pretrained(directory)
question = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape is this?"}]}]
text = (processor.apply_chat_template(question, add_generation_prompt=True) if processor.chat_template
        else "USER: <image>\\nwhat shape is this? ASSISTANT:")
inputs = dict(processor(images=image, text=text, return_tensors="pt"))
with torch.no_grad():
    logits = model(**inputs).logits
generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
result = {**inputs, "logits": logits, "generated": generated}
""",
    "vl_bart": """
sys.path.insert(0, directory)
from modeling_vl_bart import load_merged
model, tokenizer, transform = load_merged(directory)
encoded = tokenizer("vqa: what shape is this?", return_tensors="pt")
labels = tokenizer("circle", return_tensors="pt")["input_ids"]
pixels = transform(image)[None]
with torch.no_grad():
    logits = model(encoded["input_ids"], encoded["attention_mask"], pixel_values=pixels, labels=labels).logits
generated = model.generate(encoded["input_ids"], encoded["attention_mask"], pixel_values=pixels, max_new_tokens=3)
result = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels,
          "pixel_values": pixels, "logits": logits, "generated": generated}
""",
    "vit": """
import timm
from timm.data import create_transform, resolve_data_config
model = timm.create_model("local-dir:" + directory, pretrained=True).eval()
pixels = create_transform(**resolve_data_config(model=model))(image)[None]
assert model.pretrained_cfg["label_names"] == ["circle", "rectangle"]
with torch.no_grad():
    result = {"pixel_values": pixels, "logits": model(pixels)}
""",
}


def family_config(family: str, shapes_data, out, vision: str = "dora") -> dict:
    cfg = tiny_config_dict(shapes_data, out, max_steps=3, lr=1e-2)
    cfg["adapters"]["vision"] = vision
    if family.startswith("llava_"):  # another LLaVA architecture of the llava family
        cfg["model"]["tiny"]["architecture"] = family
    if family == "vl_bart":
        cfg["model"] = {"family": "vl_bart", "name_or_path": "tiny",
                        "tiny": {"image_size": 32, "vision_hidden_size": 32, "text_hidden_size": 32,
                                 "text_layers": 1, "num_heads": 2}}
    if family == "vit":
        cfg["model"] = {"family": "vit", "name_or_path": "tiny",
                        "tiny": {"image_size": 32, "patch_size": 8, "vision_hidden_size": 32, "vision_layers": 2,
                                 "num_heads": 2}}
        cfg["adapters"].update(language="frozen", projector="frozen")
        cfg["data"].update(train=str(shapes_data["labels"]), eval=None)
    return cfg


@pytest.fixture(scope="module")
def shapes_with_labels(shapes_data):
    """The shapes images as classification records too (for the ViT)."""
    records = json.loads(shapes_data["train"].read_text())
    path = shapes_data["train"].parent / "labels.jsonl"
    path.write_text("\n".join(json.dumps({"id": r["id"], "image": r["image"],
                                          "label": r["conversations"][1]["value"]}) for r in records))
    return {**shapes_data, "labels": path}


def unmerged_logits(family: str, bundle, inputs: dict) -> torch.Tensor:
    model = bundle.model
    with torch.no_grad():
        if family.startswith("llava"):
            return model(**{k: v for k, v in inputs.items() if k not in ("logits", "generated")}).logits
        if family == "vl_bart":
            return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         pixel_values=inputs["pixel_values"], labels=inputs["labels"]).logits
        return model(pixel_values=inputs["pixel_values"])["logits"]


def unmerged_generation(family: str, bundle, inputs: dict) -> torch.Tensor:
    kwargs = {k: v for k, v in inputs.items() if k not in ("logits", "generated", "labels")}
    return bundle.model.generate(**kwargs, max_new_tokens=3, do_sample=False)


SLOW = pytest.mark.slow  # the other LLaVA architectures run in the slow run (.ci/run), to keep the default run short


@pytest.mark.parametrize("family,vision", [
    ("llava", "dora"), pytest.param("llava_next", "dora", marks=SLOW),
    pytest.param("llava_onevision", "dora", marks=SLOW), pytest.param("llava_next_video", "dora", marks=SLOW),
    ("vl_bart", "dora"), ("vit", "dora"), ("vit", "full")])
def test_merged_model_loads_without_vlft_or_peft_and_gives_the_unmerged_logits(family, vision, shapes_with_labels,
                                                                              tmp_path):
    from vlft.train.run import train

    run = tmp_path / "run"
    train(config_from_dict(family_config(family, shapes_with_labels, run, vision)))
    summary = merge_run(run, tmp_path / "merged")
    assert summary["merged_adapters"] == (vision == "dora")
    image = shapes_with_labels["images"] / "0.png"
    out = tmp_path / "child.safetensors"
    script = CHILD_PRELUDE + CHILD["llava" if family.startswith("llava") else family] + CHILD_EPILOGUE
    child = subprocess.run([sys.executable, "-c", script,
                            str(tmp_path / "merged"), str(image), str(out)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    merged = load_file(str(out))
    bundle = load_trained(run, load_config(run / "config.yaml"))  # vlft's DoRA, adapters unmerged
    if family == "vit":  # the merged model's own preprocessing is the run's
        from PIL import Image

        own = bundle.image_processor(Image.open(image).convert("RGB"))["pixel_values"]
        torch.testing.assert_close(merged["pixel_values"], own, rtol=0, atol=1e-6)
    expected = unmerged_logits(family, bundle, merged)
    torch.testing.assert_close(merged["logits"], expected, rtol=1e-5, atol=1e-5)
    # what the merge saved is the trained model, not the base it started from
    cfg = load_config(run / "config.yaml")
    base = get_family(cfg.model.family).load(cfg.model, base_checkpoint(run, cfg))
    base.model.eval()
    assert not torch.allclose(merged["logits"], unmerged_logits(family, base, merged), rtol=1e-3, atol=1e-3)
    if "generated" in merged:
        assert torch.equal(merged["generated"], unmerged_generation(family, bundle, merged))


def test_merge_refuses_a_non_empty_output_and_a_directory_that_is_not_a_run(tmp_path):
    from vlft.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["merge", str(tmp_path), str(tmp_path / "new")]) == 2
    (tmp_path / "config.yaml").write_text("{}")
    with pytest.raises(FileExistsError, match="is not empty"):
        merge_run(tmp_path, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
