"""Two nodes on one machine: two deepspeed launchers (a hostfile of two hosts, --no_ssh, --node_rank 0 and 1, one
rank each), each run from its own copy of the checkout with its own data, data cache and a relative output_dir, so
that the nodes share no file, as nodes with local disks only. Under ZeRO-2 and ZeRO-3 the run trains, is killed
after a checkpoint, resumes on both nodes from the same step and ends on both nodes with the weights of an
uninterrupted two-node run, launched by scripts/slurm_train.sh (ZeRO-2; srun and scontrol stood in for) or by two
torchrun launchers (ZeRO-3). Nodes whose newest checkpoints differ stop and name them. These are the README's
commands ("Many GPUs, many nodes")."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port, strict_zero3, tiny_config_dict, write_shapes_dataset
from tests.faults.test_training_faults import assert_same_weights, final_weights

pytestmark = [pytest.mark.slow, pytest.mark.integration]
STEPS, SAVE_EVERY, KILL_AT = 6, 2, 5  # killed in step 5: both nodes hold checkpoint-4
HOSTFILE = "node0 slots=1\nnode1 slots=1\n"  # names only: --no_ssh starts nothing on them
LAUNCH_TIMEOUT = 900  # seconds for one launch of both nodes (a hang shows as a timeout)
TOP_LEVEL_SKIPPED = {".git", "runs", "data", "build"}


def _uncopied(directory: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n in {"__pycache__", ".pytest_cache", ".ruff_cache"} or n.endswith(".egg-info")}
    return skipped | (set(names) & TOP_LEVEL_SKIPPED if Path(directory) == REPO else set())


def make_node(root: Path, rank: int, zero: str) -> Path:
    """A copy of the checkout with its own data and the run's config (relative paths: the same text on every
    node), as a node with its own disk would hold it."""
    node = root / f"node{rank}"
    shutil.copytree(REPO, node, ignore=_uncopied)
    write_shapes_dataset(node / "data")
    (node / "hostfile").write_text(HOSTFILE)
    deepspeed = "configs/deepspeed/zero2.json"
    if zero == "zero3":
        deepspeed = Path(strict_zero3(node)).name  # every parameter partitioned, even on a tiny model
    for name in ("full", "killed"):
        paths = {"train": Path("data/train.json"), "test": Path("data/test.json"), "images": Path("data/images")}
        cfg = tiny_config_dict(paths, Path("runs") / name, max_steps=STEPS, save_steps=SAVE_EVERY,
                               per_device_batch_size=2, resume="auto", save_total_limit=None, deepspeed=deepspeed)
        cfg["adapters"]["dropout"] = 0.1  # the dropout RNG of every rank must come back too
        cfg["eval"].update(max_samples=5, batch_size=2)  # 5 questions: 3 on one node, 2 on the other
        (node / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return node


def node_env(node: Path, fault: str = "") -> dict:
    """Each node imports its own copy (PYTHONPATH before the editable install) and caches its own data."""
    return {**os.environ, "PYTHONPATH": str(node), "VLFT_CACHE_DIR": str(node / "cache"), "VLFT_FAULT": fault}


def launcher(kind: str, rank: int, port: str) -> list[str]:
    if kind == "torchrun":
        return [shutil.which("torchrun"), "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                "--master_addr", "127.0.0.1", "--master_port", port]
    return [shutil.which("deepspeed"), "--hostfile", "hostfile", "--no_ssh", "--node_rank", str(rank),
            "--master_addr", "127.0.0.1", "--master_port", port]


def launch(nodes: list[Path], config: str, fault: str = "", kind: str = "deepspeed") -> list[tuple[int, str]]:
    """Both nodes' launchers, as the README runs them; (exit status, output) per node."""
    script = "tests/faults/harness.py" if fault else "scripts/train.py"  # the harness is train.py plus the fault
    port = str(free_port())
    logs, procs = [], []
    for rank, node in enumerate(nodes):
        logs.append((node / f"{config}.{len(list(node.glob(f'{config}.*.log')))}.log").open("w"))
        procs.append(subprocess.Popen(
            [*launcher(kind, rank, port), script, f"{config}.yaml"], cwd=node, env=node_env(node, fault),
            stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True))
    try:
        for proc in procs:
            proc.wait(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        for proc in procs:
            os.killpg(proc.pid, 9)
        raise
    finally:
        for log in logs:
            log.close()
    return [(proc.returncode, Path(log.name).read_text()) for proc, log in zip(procs, logs, strict=True)]


# Stand-ins for SLURM on one machine: srun starts the task in every node's directory with that node's SLURM_NODEID
# and its own copy of the code and cache; scontrol names the two nodes.
SRUN = """#!/usr/bin/env bash
while [[ "$1" == -* ]]; do shift; done
for rank in 0 1; do
    (cd "$TEST_NODES/node$rank" && SLURM_NODEID=$rank PYTHONPATH="$PWD" VLFT_CACHE_DIR="$PWD/cache" exec "$@") &
done
status=0
for task in $(jobs -p); do wait "$task" || status=$?; done
exit $status
"""
SCONTROL = "#!/usr/bin/env bash\nprintf 'node0\\nnode1\\n'\n"


def launch_slurm_job(nodes: list[Path], config: str) -> tuple[int, str]:
    """`sbatch scripts/slurm_train.sh CONFIG`'s batch step, run on the first node."""
    bin_dir = nodes[0].parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**node_env(nodes[0]), "PATH": f"{bin_dir}:{os.environ['PATH']}", "TEST_NODES": str(nodes[0].parent),
           "SLURM_JOB_NODELIST": "node[0-1]", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    job = subprocess.Popen(["bash", "scripts/slurm_train.sh", f"{config}.yaml"], cwd=nodes[0], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = job.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, 9)
        raise
    return job.returncode, output


def assert_ran(results: list[tuple[int, str]]) -> None:
    for rank, (code, output) in enumerate(results):
        assert code == 0, f"node {rank}:\n{output[-4000:]}"


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_killed_two_node_run_resumes_on_both_nodes_with_the_uninterrupted_weights(tmp_path, zero):
    nodes = [make_node(tmp_path, rank, zero) for rank in range(2)]
    for node in nodes:
        where = subprocess.run(["python", "-c", "import vlft; print(vlft.__file__)"], cwd=node, env=node_env(node),
                               capture_output=True, text=True, check=True).stdout
        assert Path(where.strip()).is_relative_to(node)

    if zero == "zero2":
        assert_ran([launch_slurm_job(nodes, "full")])
    else:
        assert_ran(launch(nodes, "full", kind="torchrun"))
    for node in nodes:  # every node holds its own complete run
        run = node / "runs" / "full"
        assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
        assert json.loads((run / "metrics.json").read_text())["eval"]["eval_num_questions"] == 5
    assert_same_weights(final_weights(nodes[1] / "runs" / "full"), final_weights(nodes[0] / "runs" / "full"))

    killed = launch(nodes, "killed", fault=f"kill_step:{KILL_AT}")
    assert all(code != 0 for code, _ in killed)
    for node in nodes:
        checkpoint = node / "runs" / "killed" / "checkpoint-4"
        assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "latest").read_text() == "global_step4"

    if zero == "zero2":  # nodes holding different newest checkpoints stop before training, naming them
        aside = nodes[1] / "runs" / "killed" / "checkpoint-4"
        aside.rename(aside.with_name("set-aside"))
        refused = launch(nodes, "killed")
        aside.with_name("set-aside").rename(aside)
        for code, output in refused:
            assert code == 2
            assert ("the nodes would resume from different steps (node 0: checkpoint-4, node 1: checkpoint-2)"
                    in output), output[-3000:]
            assert "set training.resume=runs/killed/checkpoint-2 on every node" in output

    resumed = launch(nodes, "killed")
    assert_ran(resumed)
    for rank, (node, (_, output)) in enumerate(zip(nodes, resumed, strict=True)):
        assert f"node {rank}: resuming from runs/killed/checkpoint-4" in output
        assert json.loads((node / "runs" / "killed" / "metrics.json").read_text())["global_step"] == STEPS
        assert_same_weights(final_weights(node / "runs" / "killed"), final_weights(nodes[0] / "runs" / "full"))
