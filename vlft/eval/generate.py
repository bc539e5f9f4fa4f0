"""Batched greedy generation over an evaluation set, sharded over the ranks of a distributed run."""

from __future__ import annotations

import torch

from vlft.data.dataset import PromptDataset, VisionTextCollator
from vlft.eval.shard import evaluating, map_sharded


@torch.no_grad()
def generate_answers(model, dataset: PromptDataset, batch_size: int, max_new_tokens: int,
                     synced_gpus: bool = False, device: torch.device | str = "cpu", collate_fn=None,
                     model_inputs=None) -> list[str | None]:
    """Greedy answers for every prompt of ``dataset``, in dataset order, on every rank.

    Each rank generates its shard (vlft.eval.shard: the same number of batches on every rank); with ZeRO-3
    (``synced_gpus``) ranks also keep stepping together within a batch until all are done. A prompt whose
    image fails to load under ``on_error: skip`` gets None and lands in ``dataset.skips``.
    ``model_inputs(batch)`` turns a batch's tensors into the keyword arguments of ``model.generate`` (default:
    as they are); either way the output must hold the answer alone, not the prompt.
    """
    tokenizer = dataset.bundle.tokenizer

    def answer(batch: dict) -> list[str]:
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        for key in ("pixel_values", "pixel_values_videos"):  # images in the model's dtype
            if key in inputs:
                inputs[key] = inputs[key].to(next(model.parameters()).dtype)
        output = model.generate(**(model_inputs(inputs) if model_inputs else inputs), max_new_tokens=max_new_tokens,
                                do_sample=False, num_beams=1, synced_gpus=synced_gpus,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]

    with evaluating(model):
        answers = map_sharded(dataset, batch_size,
                              collate_fn or VisionTextCollator(tokenizer.pad_token_id, for_generation=True),
                              answer, desc="generate")
    return [answers.get(i) for i in range(len(dataset))]
