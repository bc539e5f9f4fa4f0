"""Training-step time, peak memory and work per step: base / LoRA / peft-DoRA / vlft-DoRA, side by side.

    python benchmarks/dora_step.py                       # the full table
    python benchmarks/dora_step.py --hidden 1024 --rank 16
    python benchmarks/dora_step.py --case vit-patch-embed --case resnet-stage   # the Conv2d cases only
    python benchmarks/dora_step.py --llava-7b --device cuda   # LLaVA-1.5-7B's language-model shapes, bf16
    python benchmarks/dora_step.py --json                # rows as JSON

Llama cases: a Llama-style model (4 layers; intermediate = 2.75 x hidden), adapters on every linear layer,
batch 2 x 256 tokens, AdamW. `--llava-7b`: LLaVA-1.5-7B's language model shapes (hidden 4096, intermediate
11008, r = 128, 1 x 2048 tokens) in 4 layers. Conv2d cases: a CLIP/ViT-B/16 patch embedding and a ResNet
stage (two 3x3 convs, 128 channels, 56x56). `base` is the frozen model's forward and backward (gradients
flow to the input, no optimizer). On CUDA the models run in bf16, on the CPU in fp32 (`--dtype` to change).

`step_s` is the median step time. The four implementations of a case are timed in one process, one step of
each per round, so that drift of the machine hits them alike, and in an order that turns by one each round,
so that none always runs right after the same other one (on a CPU the step before leaves the caches and the
heap as it likes). `x lora` and `x peft` are paired: the median over rounds of a step's time over LoRA's (or
peft-DoRA's) in the same round; `lora q1-q3` the quartiles of that ratio, the spread a single figure hides.
`peak_mb` is the peak resident memory (CPU) or peak allocated memory (CUDA) of each implementation alone in its
own process, and `saved_mb` what autograd holds for backward after one forward: the activation memory exactly
(resident memory also counts the allocator's heap growth). `ops` is what one step (forward, backward,
optimizer) launches, counted with torch.profiler: GPU kernels on CUDA, aten ops on the CPU; `syncs` the host
syncs of its forward and backward (CUDA: stream/device synchronizations; CPU: reads of a tensor's value into
Python, syncs on a GPU).
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
LLAVA_7B = {"case": "llama", "hidden": 4096, "intermediate": 11008, "rank": 128, "batch": 1, "seq": 2048}
CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def case_spec(case: str, hidden: int, rank: int, **overrides) -> dict:
    """Everything a worker needs to build one case; ``overrides`` from the command line (None: default)."""
    spec = {"case": case, "hidden": hidden, "rank": rank, "intermediate": int(2.75 * hidden), "layers": 4,
            "batch": 2, "seq": 256}
    spec.update({k: v for k, v in overrides.items() if v is not None})
    return spec


def build(spec: dict, impl: str, device, dtype):
    """(model, loss_fn) for one case; the model has adapters as ``impl`` says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from vlft.adapters.dora import use_vlft_dora

    if spec["case"] == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        hidden = spec["hidden"]
        config = LlamaConfig(hidden_size=hidden, intermediate_size=spec["intermediate"],
                             num_hidden_layers=spec["layers"], num_attention_heads=max(1, hidden // 64),
                             vocab_size=2048, max_position_embeddings=spec["seq"])
        with torch.device(device):  # 7B-sized layers: initialised where they run, not on the CPU first
            model = LlamaForCausalLM(config)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        ids = torch.randint(0, 2048, (spec["batch"], spec["seq"]), device=device)

        def loss_fn(m):
            return m(input_ids=ids, labels=ids).loss
    else:
        if spec["case"] == "vit-patch-embed":
            model = nn.Sequential(nn.Conv2d(3, 768, kernel_size=16, stride=16))
            shape = (32, 3, 224, 224)
        else:
            model = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1))
            shape = (16, 128, 56, 56)
        targets = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        # base has no trainable weights: gradients w.r.t. the images make backward run all the same
        images = torch.randn(*shape, device=device, dtype=dtype, requires_grad=impl == "base")

        def loss_fn(m):
            return m(images).float().pow(2).mean()
    if impl == "base":
        for p in model.parameters():
            p.requires_grad_(False)
        if spec["case"] == "llama":
            model.enable_input_require_grads()  # backward still runs through every layer
    else:
        rank = spec["rank"]
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                 use_dora=impl != "lora"))
        if impl == "vlft-dora":
            use_vlft_dora(model)
    return model.to(device=device, dtype=dtype), loss_fn


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


def resolve_device(device: str, dtype: str | None):
    """(device, torch dtype): ``auto`` is CUDA when present; bf16 on CUDA and fp32 on the CPU unless given."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    return device, getattr(torch, dtype or ("bfloat16" if device == "cuda" else "float32"))


def _setup(spec: dict, impl: str, device: str, dtype: str | None):
    """(model, loss_fn, train_step, timed_step, torch device, torch dtype)."""
    import torch

    device, torch_dtype = resolve_device(device, dtype)
    cuda = device == "cuda"
    torch.manual_seed(0)
    model, loss_fn = build(spec, impl, device, torch_dtype)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None

    def train_step():
        with torch.profiler.record_function("forward_backward"):  # a no-op unless profiled
            loss_fn(model).backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def timed_step():
        if cuda:
            torch.cuda.synchronize()  # outside the profiled train_step: these syncs are the harness's
        start = time.perf_counter()
        train_step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return model, loss_fn, train_step, timed_step, device, torch_dtype


def count_step_work(train_step, cuda: bool) -> tuple[int, int]:
    """(ops, host syncs) of one training step under torch.profiler. ops: GPU kernels (with memcpy and memset) on
    a GPU, aten ops on the CPU, optimizer included. syncs: in forward and backward only (AdamW reads its step
    counters, which live on the CPU, once per parameter), CUDA synchronizations on a GPU and, on the CPU, reads
    of a tensor's value into Python (every ``.item()``/``bool(tensor)`` ends in ``aten::_local_scalar_dense``)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        train_step()
    events = prof.events()
    span = next(e for e in events if e.name == "forward_backward" and e.device_type == DeviceType.CPU).time_range
    sync_names = CUDA_SYNCS if cuda else ("aten::_local_scalar_dense",)
    syncs = sum(e.name in sync_names and span.start <= e.time_range.start <= span.end for e in events)
    if cuda:  # the step's range is mirrored on the device as an annotation, not a kernel
        return sum(e.device_type == DeviceType.CUDA and e.name != "forward_backward" for e in events), syncs
    return sum(e.name.startswith("aten::") for e in events), syncs


def memory_worker(spec: dict, impl: str, device: str, dtype: str | None, steps: int, warmup: int) -> dict:
    """Peak memory and work per step of one implementation, alone in its process."""
    import torch

    model, loss_fn, train_step, timed_step, device, torch_dtype = _setup(spec, impl, device, dtype)
    cuda = device == "cuda"
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            peak_rss_reset()
        timed_step()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    ops, syncs = count_step_work(train_step, cuda)
    device_name = torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()} threads"
    saved = saved_for_backward_mb(model, loss_fn)
    return {**spec, "impl": impl, "peak_mb": round(peak, 1), "saved_mb": round(saved, 1), "ops": ops,
            "syncs": syncs, "device": device_name, "dtype": str(torch_dtype).replace("torch.", "")}


def timing_worker(spec: dict, device: str, dtype: str | None, steps: int, warmup: int) -> dict:
    """Per implementation: median step time and the paired ratios to LoRA and peft-DoRA (see the module doc)."""
    steppers = [(impl, _setup(spec, impl, device, dtype)[3]) for impl in IMPLS]
    times = {impl: [] for impl in IMPLS}
    for i in range(warmup + steps):
        turn = i % len(steppers)
        for impl, step in steppers[turn:] + steppers[:turn]:
            elapsed = step()
            if i >= warmup:
                times[impl].append(elapsed)
    return {impl: {"step_s": round(statistics.median(t), 5), **paired_ratios(t, times)} for impl, t in times.items()}


def paired_ratios(own: list[float], times: dict[str, list[float]]) -> dict:
    """x_lora (median of own/LoRA over rounds), its quartiles x_lora_q1 and x_lora_q3, and x_peft."""
    out = {}
    for name, other in (("x_lora", times["lora"]), ("x_peft", times["peft-dora"])):
        ratios = [a / b for a, b in zip(own, other, strict=True)]
        out[name] = round(statistics.median(ratios), 4)
        if name == "x_lora" and len(ratios) > 1:
            q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
            out["x_lora_q1"], out["x_lora_q3"] = round(q1, 4), round(q3, 4)
    return out


def run_worker(args: list[str], threads: int) -> dict:
    cmd = [sys.executable, __file__, *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        how = f"killed by signal {-out.returncode}" if out.returncode < 0 else f"exit status {out.returncode}"
        raise RuntimeError(f"{' '.join(args)} failed ({how}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_case(spec: dict, args) -> list[dict]:
    common = ["--device", args.device, *(["--dtype", args.dtype] if args.dtype else [])]
    timing = run_worker(["--time-worker", json.dumps(spec), "--steps", str(args.steps), "--warmup",
                         str(args.warmup), *common], args.threads)
    rows = []
    for impl in IMPLS:
        row = run_worker(["--memory-worker", json.dumps(spec), impl, "--steps", "2", "--warmup", "1", *common],
                         args.threads)
        rows.append({**row, **timing[impl]})
    return rows


def plan(args) -> list[dict]:
    """The cases to measure, as worker specs."""
    shape = {"layers": args.layers, "batch": args.batch, "seq": args.seq, "intermediate": args.intermediate}
    if args.llava_7b:
        return [case_spec(**{**LLAVA_7B, **{k: v for k, v in shape.items() if v is not None}})]
    hiddens = [args.hidden] if args.hidden else HIDDENS
    ranks = [args.rank] if args.rank else RANKS
    cases = [case_spec("llama", h, r, **shape) for h in hiddens for r in ranks]
    if not args.hidden:
        cases += [case_spec(c, 0, r) for c in CONV_CASES for r in ranks]
    return [c for c in cases if c["case"] in args.case] if args.case else cases


def print_table(rows: list[dict]) -> None:
    cuda = rows[0]["device"].startswith("cpu") is False
    print(f"device: {rows[0]['device']}, dtype {rows[0]['dtype']}; ops = {'GPU kernels' if cuda else 'aten ops'}"
          " per step")
    header = ("case", "hidden", "rank", "impl", "step_s", "x lora", "lora q1-q3", "x peft", "peak_mb", "vs lora",
              "saved_mb", "vs lora", "ops", "syncs")
    line = "{:<16} {:>6} {:>4} {:<10} {:>9} {:>7} {:>11} {:>7} {:>9} {:>8} {:>9} {:>8} {:>6} {:>5}"
    print(line.format(*header))
    by_key = {(r["case"], r["hidden"], r["rank"], r["impl"]): r for r in rows}
    for r in rows:
        lora = by_key[r["case"], r["hidden"], r["rank"], "lora"]
        spread = f"{r['x_lora_q1']:.2f}-{r['x_lora_q3']:.2f}" if "x_lora_q1" in r else ""
        vs_peft = f"{r['x_peft']:.2f}" if r["impl"] == "vlft-dora" else ""
        mem = f"{100 * (r['peak_mb'] / lora['peak_mb'] - 1):+.1f}%"
        saved = f"{100 * (r['saved_mb'] / lora['saved_mb'] - 1):+.1f}%" if lora["saved_mb"] else ""
        print(line.format(r["case"], r["hidden"], r["rank"], r["impl"], f"{r['step_s']:.4f}", f"{r['x_lora']:.2f}",
                          spread, vs_peft, f"{r['peak_mb']:.1f}", mem, f"{r['saved_mb']:.1f}", saved, r["ops"],
                          r["syncs"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, help="one Llama hidden size (skips the Conv2d cases)")
    parser.add_argument("--rank", type=int, help="one rank")
    parser.add_argument("--case", action="append", choices=("llama", *CONV_CASES),
                        help="only these cases (repeat the option for more)")
    parser.add_argument("--llava-7b", action="store_true", help="LLaVA-1.5-7B's language-model shapes only")
    parser.add_argument("--intermediate", type=int, help="Llama MLP width (default 2.75 x hidden)")
    parser.add_argument("--layers", type=int, help="Llama layers (default 4)")
    parser.add_argument("--batch", type=int, help="sequences per step (default 2; --llava-7b 1)")
    parser.add_argument("--seq", type=int, help="tokens per sequence (default 256; --llava-7b 2048)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="default bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--steps", type=int, default=8,
                        help="timed rounds per row (a multiple of 4 puts each implementation in each place equally)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per worker")
    parser.add_argument("--json", action="store_true", help="print rows as a JSON list")
    parser.add_argument("--memory-worker", nargs=2, metavar=("SPEC", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--time-worker", metavar="SPEC", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.memory_worker:
        spec, impl = args.memory_worker
        print(json.dumps(memory_worker(json.loads(spec), impl, args.device, args.dtype, args.steps, args.warmup)))
        return
    if args.time_worker:
        print(json.dumps(timing_worker(json.loads(args.time_worker), args.device, args.dtype, args.steps,
                                       args.warmup)))
        return
    rows = []
    for spec in plan(args):
        rows += measure_case(spec, args)
        if not args.json:
            print(json.dumps(rows[-4:]), file=sys.stderr)
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
