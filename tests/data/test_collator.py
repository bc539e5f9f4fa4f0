import json

import torch

from vlft.config import ModelConfig, TinyModelConfig
from vlft.data.conversation import IGNORE_INDEX
from vlft.data.dataset import ConversationDataset, PromptDataset, VisionTextCollator
from vlft.models.llava import build_tiny, load


def test_mixed_image_and_text_only_batch_trains_through_the_model(shapes_data, tmp_path):
    records = json.loads(shapes_data["train"].read_text())[:2]
    records.append({"id": "text-only", "conversations": [{"from": "human", "value": "what shape is this?"},
                                                         {"from": "gpt", "value": "circle"}]})
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records))
    tiny = TinyModelConfig(image_size=32, patch_size=8, vision_hidden_size=32, vision_layers=1, text_hidden_size=32,
                           text_layers=1, num_heads=2)
    texts = [t["value"] for r in records for t in r["conversations"]]
    bundle = load(ModelConfig(), str(build_tiny(tiny, texts, tmp_path / "tiny")))
    dataset = ConversationDataset(path, bundle, str(shapes_data["images"]), max_length=128)
    batch = VisionTextCollator(bundle.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)  # only the two records with an image
    lengths = [len(dataset[i]["input_ids"]) for i in range(3)]
    assert batch["input_ids"].shape == (3, max(lengths))
    short = lengths.index(min(lengths))
    assert (batch["labels"][short, min(lengths):] == IGNORE_INDEX).all()
    assert (batch["attention_mask"].sum(1) == torch.tensor(lengths)).all()
    loss = bundle.model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_generation_batches_are_left_padded(shapes_data, tmp_path):
    tiny = TinyModelConfig(image_size=32, patch_size=8, vision_hidden_size=32, vision_layers=1, text_hidden_size=32,
                           text_layers=1, num_heads=2)
    bundle = load(ModelConfig(), str(build_tiny(tiny, ["what shape is this ?", "what color is the shape ?"],
                                                tmp_path / "tiny")))
    dataset = PromptDataset(shapes_data["test"], bundle, str(shapes_data["images"]))
    items = [dataset[0], dataset[1]]
    batch = VisionTextCollator(bundle.tokenizer.pad_token_id, for_generation=True)(items)
    assert (batch["attention_mask"][:, -1] == 1).all()  # every prompt ends at the right edge
    assert batch["references"] == [["circle"], ["red"]] and batch["index"] == [0, 1]
