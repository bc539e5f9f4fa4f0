"""The training data pipeline on LLaVA-1.5-shaped data: preparation, start-up, memory, DataLoader throughput.

    python data_prep/easy_vqa.py --out data/easy_vqa
    python benchmarks/data_pipeline.py                             # N = 10k, 100k, 665k; this checkout's reader
    python benchmarks/data_pipeline.py --records 10000 --json
    python benchmarks/data_pipeline.py --baseline 60588af          # also the reader of that commit, side by side

For each N, data_prep/synthetic_mix.py writes N records (cached under --work), and 2 ranks (torch.distributed,
gloo, as under the deepspeed launcher) each build the tiny LLaVA's training dataset the way `vlft train` does
(`family.train_dataset`), twice: a cold start (an empty data cache) and a warm one (the cache of the first).
Per start: the seconds until the dataset is ready (the slower rank), the memory it added per rank (resident
anonymous memory, i.e. private heap, and all resident memory, which also counts the shared pages of a
memory-mapped file), and the examples per second one rank's DataLoader delivers (batches of 8 with the
collator, images decoded, data.num_workers workers). `--baseline COMMIT` checks that commit out in a temporary
git worktree and measures its reader with the same harness (it has no cache: its warm start is another cold one).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def memory_mb() -> dict[str, float]:
    """This process's resident memory: anonymous (private heap) and all of it, in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "VmRSS"):
            fields[key] = int(value.split()[0]) / 1024
    return {"anon": fields.get("RssAnon", 0.0), "rss": fields.get("VmRSS", 0.0)}


def rank_job(args) -> None:
    """One rank: build the training dataset as a run does, then time its DataLoader."""
    import torch
    import torch.distributed as dist

    from vlft.config import config_from_dict
    from vlft.models import get_family

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    cfg = config_from_dict(json.loads(Path(args.config).read_text()))
    family = get_family("llava")
    bundle = family.load_for_run(cfg, args.base, with_model=False)
    importlib.import_module("vlft.data.dataset")  # the reader's libraries: loaded before memory is measured
    dist.barrier()
    before, start = memory_mb(), time.perf_counter()
    dataset = family.train_dataset(cfg, bundle)
    ready = time.perf_counter() - start
    after = memory_mb()
    dist.barrier()
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, collate_fn=family.collator(bundle),
                                         num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(0))
    batches, start = iter(loader), time.perf_counter()
    examples = sum(len(next(batches)["input_ids"]) for _ in range(args.batches))
    rate = examples / (time.perf_counter() - start)
    result = {"rank": dist.get_rank(), "ready_s": ready, "anon_mb": after["anon"] - before["anon"],
              "rss_mb": after["rss"] - before["rss"], "examples_per_s": rate, "examples": len(dataset)}
    Path(args.results, f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def launch(pythonpath: Path, config: Path, base: Path, cache: Path, batches: int) -> dict:
    """Both ranks of one start; the slower rank's time, the larger memory, the slower DataLoader."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "VLFT_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    results_dir = Path(tempfile.mkdtemp(prefix="ranks-"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(REPO / "benchmarks" / "data_pipeline.py"), "--rank-job", "--config", str(config),
           "--base", str(base), "--batches", str(batches), "--results", str(results_dir)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=pythonpath)
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("rank*.json"))]
    if out.returncode != 0 or len(results) != 2:
        raise SystemExit(f"rank job failed ({pythonpath}):\n{(out.stdout + out.stderr)[-3000:]}")
    return {"ready_s": max(r["ready_s"] for r in results), "anon_mb": max(r["anon_mb"] for r in results),
            "rss_mb": max(r["rss_mb"] for r in results),
            "examples_per_s": min(r["examples_per_s"] for r in results), "examples": results[0]["examples"]}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_inputs(work: Path, records: int, easy_vqa: Path, num_workers: int) -> tuple[Path, Path]:
    """The synthetic mix of N records and a config pointing at it (and at easy-VQA's images)."""
    data = work / f"mix-{records}"
    if not (data / "llava_mix.json").is_file():
        subprocess.run([sys.executable, str(REPO / "data_prep" / "synthetic_mix.py"), "--records", str(records),
                        "--out", str(data)], check=True, capture_output=True)
    config = {"model": {"family": "llava", "name_or_path": "tiny"},
              "data": {"train": str(data / "llava_mix.json"), "image_folder": str(easy_vqa.resolve() / "images"),
                       "max_length": 512, "num_workers": num_workers},
              "training": {"output_dir": str(work / "run")}}
    path = work / f"config-{records}.json"
    path.write_text(json.dumps(config))
    return path, data


def tiny_base(work: Path, easy_vqa: Path) -> Path:
    """The tiny LLaVA the main job builds, its vocabulary from a 10k-record mix (the words of every N)."""
    base = work / "base_model"
    if not (base / "config.json").is_file():
        config, data = prepare_inputs(work, 10_000, easy_vqa, 0)
        sys.path.insert(0, str(REPO))
        from vlft.config import TinyModelConfig
        from vlft.models.llava import build_tiny

        texts = [t["value"] for r in json.loads((data / "llava_mix.json").read_text()) for t in r["conversations"]]
        build_tiny(TinyModelConfig(), texts, base)
    return base


def checkout(commit: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), commit], check=True,
                   capture_output=True)
    return where


def measure(reader: str, code: Path, work: Path, records: int, args) -> list[dict]:
    """The cold and warm rows of one reader and N; rows already in work/rows.jsonl are kept (a long benchmark
    can be resumed; delete a line to measure it again)."""
    done = work / "rows.jsonl"
    kept = [json.loads(line) for line in done.read_text().splitlines()] if done.is_file() else []
    rows = [r for r in kept if (r["reader"], r["records"]) == (reader, records)]
    if len(rows) == 2:
        return rows
    config, _ = prepare_inputs(work, records, Path(args.easy_vqa), args.num_workers)
    cache = work / f"cache-{reader}-{records}"
    shutil.rmtree(cache, ignore_errors=True)
    rows = []
    for start in ("cold", "warm"):
        result = launch(code, config, tiny_base(work, Path(args.easy_vqa)), cache, args.batches)
        rows.append({"reader": reader, "records": records, "start": start, **result,
                     "load": os.getloadavg()[0]})
        with done.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| reader | N | start | ready (s) | anon MB / rank | RSS MB / rank | examples/s (1 rank) | load |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['reader']} | {r['records']:,} | {r['start']} | {r['ready_s']:.1f} | {r['anon_mb']:.0f} | "
                     f"{r['rss_mb']:.0f} | {r['examples_per_s']:.0f} | {r.get('load', float('nan')):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 100_000, 665_000])
    parser.add_argument("--baseline", help="also measure the reader of this commit (e.g. 60588af)")
    parser.add_argument("--easy-vqa", default="data/easy_vqa", help="where data_prep/easy_vqa.py wrote easy-VQA")
    parser.add_argument("--work", default=None, help="where data and caches go (default: a temporary directory)")
    parser.add_argument("--batches", type=int, default=50, help="DataLoader batches timed per rank")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per rank")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--rank-job", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_job:
        return rank_job(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="vlft-data-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    readers = {"this checkout": REPO}
    if args.baseline:
        readers = {f"{args.baseline} (before)": checkout(args.baseline, work / f"code-{args.baseline}"), **readers}
    try:
        rows = [row for records in args.records for name, code in readers.items()
                for row in measure(name, code, work, records, args)]
    finally:
        if args.baseline:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(work / f"code-{args.baseline}")], capture_output=True)
    print(json.dumps(rows, indent=1) if args.json else table(rows))


if __name__ == "__main__":
    main()
