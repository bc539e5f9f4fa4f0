"""Training-step time and peak memory: base / LoRA / peft-DoRA / vlft-DoRA, side by side.

    python benchmarks/dora_step.py                       # the full table
    python benchmarks/dora_step.py --hidden 1024 --rank 16
    python benchmarks/dora_step.py --json                # rows as JSON

Llama cases: a 4-layer Llama-style model (intermediate = 2.75 x hidden), adapters on every linear
layer, batch 2 x 256 tokens, AdamW. Conv2d cases: a CLIP/ViT-B/16 patch embedding and a ResNet
stage (two 3x3 convs, 128 channels, 56x56). `base` is the frozen model's forward and backward
(gradients flow to the input, no optimizer).

`step_s` is the median step time; the four implementations of a case are timed in one process with
their steps interleaved, so that drift of the machine hits them alike. `peak_mb` is the peak
resident memory (CPU) or peak allocated memory (CUDA, bf16) of each implementation alone in its own
process, and `saved_mb` what autograd holds for backward after one forward: the activation memory
exactly (resident memory also counts the allocator's heap growth).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

IMPLS = ("base", "lora", "peft-dora", "vlft-dora")
HIDDENS = (512, 1024, 2048)
RANKS = (8, 16, 64)
CONV_CASES = ("vit-patch-embed", "resnet-stage")


def build(case: str, hidden: int, rank: int, impl: str, device, dtype):
    """(model, make_batch) for one case; the model has adapters as ``impl`` says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from vlft.adapters.dora import use_vlft_dora

    if case == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(hidden_size=hidden, intermediate_size=int(2.75 * hidden), num_hidden_layers=4,
                             num_attention_heads=max(1, hidden // 64), vocab_size=2048, max_position_embeddings=512)
        model = LlamaForCausalLM(config)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

        def make_batch():
            ids = torch.randint(0, 2048, (2, 256), device=device)
            return lambda m: m(input_ids=ids, labels=ids).loss
    else:
        if case == "vit-patch-embed":
            model = nn.Sequential(nn.Conv2d(3, 768, kernel_size=16, stride=16))
            shape = (32, 3, 224, 224)
        else:
            model = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1))
            shape = (16, 128, 56, 56)
        targets = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]

        def make_batch():
            # base has no trainable weights: gradients w.r.t. the images make backward run all the same
            images = torch.randn(*shape, device=device, dtype=dtype, requires_grad=impl == "base")
            return lambda m: m(images).float().pow(2).mean()
    if impl == "base":
        for p in model.parameters():
            p.requires_grad_(False)
        if case == "llama":
            model.enable_input_require_grads()  # backward still runs through every layer
    else:
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                 use_dora=impl != "lora"))
        if impl == "vlft-dora":
            use_vlft_dora(model)
    return model.to(device=device, dtype=dtype), make_batch()


def peak_rss_reset() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def saved_for_backward_mb(model, loss_fn) -> float:
    """Bytes autograd keeps for backward after one forward (unique storages): activation memory, exactly."""
    import torch

    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn(model)
    del loss
    return sum(storages.values()) / 2**20


def _setup(case, hidden, rank, impl):
    import torch

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    model, loss_fn = build(case, hidden, rank, impl, device, dtype)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None

    def step():
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss_fn(model).backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return model, loss_fn, step, cuda, dtype


def memory_worker(case: str, hidden: int, rank: int, impl: str, steps: int, warmup: int) -> dict:
    """Peak memory of one implementation, alone in its process."""
    import torch

    model, loss_fn, step, cuda, dtype = _setup(case, hidden, rank, impl)
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            peak_rss_reset()
        step()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    device_name = torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()} threads"
    return {"case": case, "hidden": hidden, "rank": rank, "impl": impl, "peak_mb": round(peak, 1),
            "saved_mb": round(saved_for_backward_mb(model, loss_fn), 1), "device": device_name,
            "dtype": str(dtype).replace("torch.", "")}


def timing_worker(case: str, hidden: int, rank: int, steps: int, warmup: int) -> dict:
    """Median step time of every implementation, their steps interleaved so that machine drift hits all alike."""
    steppers = {impl: _setup(case, hidden, rank, impl)[2] for impl in IMPLS}
    times = {impl: [] for impl in IMPLS}
    for i in range(warmup + steps):
        for impl, step in steppers.items():
            elapsed = step()
            if i >= warmup:
                times[impl].append(elapsed)
    return {impl: round(statistics.median(t), 5) for impl, t in times.items()}


def run_worker(args: list[str], threads: int) -> dict:
    cmd = [sys.executable, __file__, *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_case(case: str, hidden: int, rank: int, args) -> list[dict]:
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    step_s = run_worker(["--time-worker", case, str(hidden), str(rank), *common], args.threads)
    rows = []
    for impl in IMPLS:
        row = run_worker(["--memory-worker", case, str(hidden), str(rank), impl, "--steps", "2", "--warmup", "1"],
                         args.threads)
        rows.append({**row, "step_s": step_s[impl]})
    return rows


def plan(args) -> list[tuple[str, int, int]]:
    hiddens = [args.hidden] if args.hidden else HIDDENS
    ranks = [args.rank] if args.rank else RANKS
    cases = [("llama", h, r) for h in hiddens for r in ranks]
    if not args.hidden:
        cases += [(c, 0, r) for c in CONV_CASES for r in ranks]
    return cases


def print_table(rows: list[dict]) -> None:
    print(f"device: {rows[0]['device']}, dtype {rows[0]['dtype']}")
    header = ("case", "hidden", "rank", "impl", "step_s", "x lora", "peak_mb", "vs lora", "saved_mb", "vs lora")
    print("{:<16} {:>6} {:>4} {:<10} {:>9} {:>7} {:>9} {:>8} {:>9} {:>8}".format(*header))
    lora = {(r["case"], r["hidden"], r["rank"]): r for r in rows if r["impl"] == "lora"}
    for r in rows:
        ref = lora.get((r["case"], r["hidden"], r["rank"]))
        ratio = f"{r['step_s'] / ref['step_s']:.2f}" if ref else ""
        mem = f"{100 * (r['peak_mb'] / ref['peak_mb'] - 1):+.1f}%" if ref else ""
        saved = f"{100 * (r['saved_mb'] / ref['saved_mb'] - 1):+.1f}%" if ref and ref["saved_mb"] else ""
        print(f"{r['case']:<16} {r['hidden']:>6} {r['rank']:>4} {r['impl']:<10} {r['step_s']:>9.4f} {ratio:>7} "
              f"{r['peak_mb']:>9.1f} {mem:>8} {r['saved_mb']:>9.1f} {saved:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, help="one Llama hidden size (skips the Conv2d cases)")
    parser.add_argument("--rank", type=int, help="one rank")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per worker")
    parser.add_argument("--json", action="store_true", help="print rows as a JSON list")
    parser.add_argument("--memory-worker", nargs=4, metavar=("CASE", "HIDDEN", "RANK", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--time-worker", nargs=3, metavar=("CASE", "HIDDEN", "RANK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        case, hidden, rank, impl = args.memory_worker
        print(json.dumps(memory_worker(case, int(hidden), int(rank), impl, args.steps, args.warmup)))
        return
    if args.time_worker:
        case, hidden, rank = args.time_worker
        print(json.dumps(timing_worker(case, int(hidden), int(rank), args.steps, args.warmup)))
        return
    rows = []
    for case, hidden, rank in plan(args):
        rows += measure_case(case, hidden, rank, args)
        if not args.json:
            print(json.dumps(rows[-4:]), file=sys.stderr)
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows)

if __name__ == "__main__":
    main()
