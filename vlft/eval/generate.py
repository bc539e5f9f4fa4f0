"""Batched greedy generation over an evaluation set, sharded over the ranks of a distributed run."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from vlft.data.dataset import PromptDataset, VisionTextCollator


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def generate_answers(model, dataset: PromptDataset, batch_size: int, max_new_tokens: int,
                     synced_gpus: bool = False, device: torch.device | str = "cpu", collate_fn=None,
                     model_inputs=None) -> list[str | None]:
    """Greedy answers for every prompt of ``dataset``, in dataset order, on every rank.

    Each rank generates a strided shard; with ZeRO-3 (``synced_gpus``) ranks keep stepping
    together until all are done, so shards are padded to the same number of batches. A prompt whose
    image fails to load under ``on_error: skip`` gets None and lands in ``dataset.skips``.
    ``model_inputs(batch)`` turns a batch's tensors into the keyword arguments of ``model.generate`` (default:
    as they are); either way the output must hold the answer alone, not the prompt.
    """
    rank, world = _world()
    tokenizer = dataset.bundle.tokenizer
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False,
                        collate_fn=collate_fn or VisionTextCollator(tokenizer.pad_token_id, for_generation=True))
    batches_per_rank = -(-len(range(0, len(dataset), world)) // batch_size)
    was_training = model.training
    model.eval()
    answers: dict[int, str] = {}
    iterator = iter(loader)
    for _ in tqdm(range(batches_per_rank), desc="generate", disable=rank != 0):
        batch = next(iterator, None)
        if batch is None:  # this rank ran out first: keep ZeRO-3's collective forwards in step
            batch = next(iter(loader))
            batch["index"], batch["skipped"] = [], []
        if dataset.skips is not None:
            dataset.skips.extend(batch.pop("skipped", []))
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        for key in ("pixel_values", "pixel_values_videos"):  # images in the model's dtype
            if key in inputs:
                inputs[key] = inputs[key].to(next(model.parameters()).dtype)
        output = model.generate(**(model_inputs(inputs) if model_inputs else inputs), max_new_tokens=max_new_tokens,
                                do_sample=False, num_beams=1, synced_gpus=synced_gpus,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)
        for index, text in zip(batch["index"], texts, strict=False):
            answers[index] = text.strip()
    model.train(was_training)
    if world > 1:
        gathered: list[dict] = [None] * world
        dist.all_gather_object(gathered, answers)
        answers = {k: v for part in gathered for k, v in part.items()}
    if dataset.skips is not None:
        dataset.skips = dataset.skips.gathered()
    return [answers.get(i) for i in range(len(dataset))]
