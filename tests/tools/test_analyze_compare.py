"""`vlft analyze` (the paper's ΔM / ΔD), `vlft compare`, and what a run leaves behind (curves, peak memory)."""

import json
import resource

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config_dict
from vlft.analyze import analyze_run, decomposition_change, fit_line
from vlft.cli import main
from vlft.config import config_from_dict
from vlft.train.report import curves


def test_decomposition_change_matches_a_hand_computed_example():
    base = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    trained = torch.tensor([[6.0, 8.0], [0.0, 1.0]])
    # row 0: norm 5 -> 10, same direction; row 1: norm 1 -> 1, turned by 90 degrees
    assert decomposition_change(base, trained) == pytest.approx((2.5, 0.5))
    conv = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    assert decomposition_change(conv, 2 * conv) == pytest.approx((conv.flatten(1).norm(dim=1).mean().item(), 0.0),
                                                                 abs=1e-9)


def test_fit_line_recovers_slope_and_correlation():
    fit = fit_line([0.0, 1.0, 2.0, 3.0], [1.0, -1.0, -3.0, -5.0])
    assert fit["slope"] == pytest.approx(-2.0) and fit["intercept"] == pytest.approx(1.0)
    assert fit["pearson_r"] == pytest.approx(-1.0) and fit["points"] == 4


@pytest.fixture(scope="module")
def runs(shapes_data, tmp_path_factory):
    """A DoRA run and a full fine-tuning run of the language tower, same data and steps, checkpoints kept."""
    from vlft.train.run import train

    out = {}
    for method in ("dora", "full"):
        root = tmp_path_factory.mktemp(method)
        cfg = tiny_config_dict(shapes_data, root / method, max_steps=4, save_steps=2, save_total_limit=None, lr=1e-2)
        cfg["adapters"].update(language=method, vision="frozen")
        train(config_from_dict(cfg))
        out[method] = root / method
    return out


def test_analyze_dora_run_against_the_dora_formula(runs):
    analysis = analyze_run(runs["dora"])
    assert analysis.method == "dora"
    assert sorted({p["step"] for p in analysis.points}) == [2, 4]
    layer = "model.language_model.layers.0.self_attn.q_proj"
    point = next(p for p in analysis.points if p["step"] == 4 and p["layer"] == layer)
    # W' = m * (W0 + s B A) / ||W0 + s B A||_row, from the saved files themselves
    from transformers import LlavaForConditionalGeneration

    base = LlavaForConditionalGeneration.from_pretrained(runs["dora"] / "base_model").get_submodule(layer).weight
    adapter = {k: v for k, v in load_file(str(runs["dora"] / "adapter_model.safetensors")).items() if layer in k}
    a, b = (next(v for k, v in adapter.items() if f"lora_{x}" in k) for x in "AB")
    magnitude = next(v for k, v in adapter.items() if "magnitude" in k)
    combined = base.detach().double() + (8 / 4) * (b.double() @ a.double())
    merged = magnitude.double()[:, None] * combined / combined.norm(dim=1, keepdim=True)
    expected_m = (merged.norm(dim=1) - base.double().norm(dim=1)).abs().mean().item()
    expected_d = (1 - torch.nn.functional.cosine_similarity(merged, base.double(), dim=1)).mean().item()
    assert point["delta_m"] == pytest.approx(expected_m, rel=1e-5)
    assert point["delta_d"] == pytest.approx(expected_d, rel=1e-4)
    assert point["delta_d"] > 0 and point["delta_m"] > 0


def test_analyze_cli_writes_plot_csv_and_slope_for_each_run(runs, tmp_path, capsys):
    assert main(["analyze", str(runs["dora"]), str(runs["full"]), "--layers", "q_proj|v_proj",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for method in ("dora", "full"):
        summary = json.loads((tmp_path / method / "weight_decomposition.json").read_text())
        assert summary["points"] == 2 * 2  # q_proj and v_proj of one layer, at steps 2 and 4
    lines = [line for line in printed.splitlines()[1:] if line.strip()]
    assert [line.split()[1] for line in lines] == ["dora", "full"]
    assert (tmp_path / "dora" / "weight_decomposition.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "dora" / "weight_decomposition.csv").read_text().splitlines()
    assert rows[0] == "step,layer,delta_m,delta_d" and len(rows) == 1 + 4


def test_full_fine_tuning_run_is_analysed_layer_by_layer(runs):
    analysis = analyze_run(runs["full"])
    layers = {p["layer"] for p in analysis.points}
    assert analysis.method == "full"
    assert {"model.language_model.layers.0.mlp.down_proj", "model.language_model.layers.0.self_attn.o_proj"} <= layers
    assert not any("vision_tower" in name or "lm_head" in name for name in layers)
    assert all(p["delta_m"] > 0 and p["delta_d"] > 0 for p in analysis.points)


def test_run_leaves_curves_log_history_and_peak_memory(runs):
    run = runs["dora"]
    metrics = json.loads((run / "metrics.json").read_text())
    # the runs trained in this process, so its own counter, read now, bounds the recorded peak from above
    if torch.cuda.is_available():
        assert metrics["peak_memory_kind"] == "cuda_allocated"
        assert 0 < metrics["peak_memory_mb"] <= torch.cuda.max_memory_allocated() / 2**20 + 0.1
    else:
        assert metrics["peak_memory_kind"] == "cpu_rss"
        assert 100 < metrics["peak_memory_mb"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 0.1
    history = json.loads((run / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]
    assert (run / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "runs").rglob("*"))  # TensorBoard


def test_curves_take_the_loss_and_every_numeric_eval_metric():
    history = [{"loss": 2.0, "step": 1}, {"loss": 1.0, "step": 2}, {"eval_vqa_accuracy": 40.0, "step": 2,
               "eval_runtime": 3.0}, {"train_runtime": 9.0, "step": 2}]
    assert curves(history) == {"loss": [(1, 2.0), (2, 1.0)], "eval_vqa_accuracy": [(2, 40.0)]}


def test_compare_prints_one_row_per_run(runs, capsys):
    assert main(["compare", str(runs["dora"]), str(runs["full"])]) == 0
    table = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:7] == ["run", "method", "rank", "trainable_percent", "wall_time_s", "peak_memory_mb",
                          "train_loss"]
    assert "vqa_accuracy" in header
    dora, full = ([c.strip() for c in line.strip("|").split("|")] for line in table[2:4])
    assert dora[1:3] == ["dora", "4"] and full[1:3] == ["full", "-"]
    assert float(full[3]) > float(dora[3])  # full fine-tuning trains a larger share
    assert main(["compare", str(runs["dora"].parent)]) == 2  # not a run directory: named, exit 2
