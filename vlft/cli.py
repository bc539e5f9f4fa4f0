"""`vlft train | validate-data | eval | predict | chat | demo | merge | analyze | compare | sweep | score | config`
-> thin calls into the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlft.config import ConfigError, explain, load_config
from vlft.data.records import DataError
from vlft.eval.score import ScoreError
from vlft.eval.vqa import DEFAULT_PROTOCOL, PROTOCOLS
from vlft.models.base import ModelLoadError
from vlft.sweep import SweepRunFailed
from vlft.train.checkpoints import UnsafeCheckpoint
from vlft.train.errors import NodesDisagree, NonFiniteLoss

# Errors about the user's files and settings: one line, exit status 2, no traceback.
USER_ERRORS = (DataError, ModelLoadError, ScoreError, FileNotFoundError, FileExistsError, UnsafeCheckpoint,
               SweepRunFailed, NodesDisagree)


def _train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if not args.dry_run:
        from vlft.train.preflight import check_paths

        check_paths(cfg, source=args.config)  # before the model is built
    if args.dry_run:
        from vlft.train.dry_run import dry_run

        dry_run(cfg)
        return 0
    from vlft.train.run import train

    train(cfg)
    return 0


def _validate(args) -> int:
    from vlft.train.preflight import check_paths
    from vlft.train.validate import validate_data

    cfg = load_config(args.config, args.overrides)
    check_paths(cfg, source=args.config)
    bad = 0
    for split, skips in validate_data(cfg).items():
        for reason, entries in skips.records.items():
            for message in entries.values():
                print(f"{split}: {reason}: {message}")
        print(f"{split}: {skips.summary('bad')}")
        bad += skips.total()
    return 1 if bad else 0


def _eval(args) -> int:
    from vlft.eval.run_eval import evaluate_run

    metrics = evaluate_run(args.run, args.overrides, out_dir=args.out)
    print(json.dumps(metrics, indent=2))
    return 0


def _predict(args) -> int:
    from vlft.serve.predict import run_predict

    return run_predict(args)


def _chat(args) -> int:
    from vlft.serve.chat import run_chat

    return run_chat(args)


def _demo(args) -> int:
    from vlft.serve.demo import run_demo

    return run_demo(args)


def _merge(args) -> int:
    from vlft.merge import merge_run

    print(json.dumps(merge_run(args.run, args.out), indent=1))
    return 0


def _analyze(args) -> int:
    from vlft.analyze import analyze_run, write_analysis

    print(f"{'run':<28} {'method':<12} {'points':>6} {'slope dM/dD':>12} {'pearson r':>10}  plot")
    for run in args.runs:
        analysis = analyze_run(run, args.layers)
        out = Path(args.out) / Path(run).name if args.out else Path(run)
        paths = write_analysis(analysis, out)
        fit = analysis.fit
        print(f"{Path(run).name:<28} {analysis.method:<12} {fit['points']:>6} {fit['slope']:>12.4g} "
              f"{fit['pearson_r']:>10.3f}  {paths['png']}")
    return 0


def _sweep(args) -> int:
    import shlex

    from vlft.sweep import run_sweep

    overrides = list(args.overrides)
    if args.methods:
        overrides.append(f"sweep.methods=[{args.methods}]")
    if args.ranks:
        overrides.append(f"sweep.ranks=[{args.ranks}]")
    if args.seeds:
        overrides.append(f"sweep.seeds={args.seeds}")
    paths = run_sweep(args.config, overrides, shlex.split(args.launcher or ""), analyze=not args.no_analyze)
    print(paths["md"].read_text())
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 0


def _compare(args) -> int:
    from vlft.compare import compare_runs

    print(compare_runs(args.runs))
    return 0


def _score(args) -> int:
    if args.benchmark == "vqav2":
        from vlft.eval.score import score_vqav2

        report = score_vqav2(args.questions, args.annotations, args.results, protocol=args.protocol)
    elif args.benchmark == "gqa":
        from vlft.eval.gqa import score_gqa

        report = score_gqa(args.questions, args.results)
    else:
        from vlft.eval.caption import score_coco_caption

        report = score_coco_caption(args.annotations, args.results)
    print(json.dumps(report))
    return 0


def config_key_table(values: dict | None = None) -> str:
    """Every config key: type, default (and the value a given config sets), meaning."""
    lines = []
    for key, type_name, default, text in explain():
        shown = default
        if values is not None:
            node = values
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            shown = f"{node!r}" + (" (default)" if repr(node) == default else "")
        lines.append(f"{key:<36} {type_name:<28} {shown:<24} {text}")
    return "\n".join(lines)


def _explain(args) -> int:
    values = None
    if args.config:
        from vlft.config import config_to_dict

        values = config_to_dict(load_config(args.config))
    print(config_key_table(values))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlft", description="Fine-tune vision-language models with DoRA.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train as a YAML config says", formatter_class=argparse.RawTextHelpFormatter,
                           epilog="config keys (key, type, default, meaning):\n" + config_key_table())
    train.add_argument("config", help="YAML config (see configs/)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. training.lr=1e-4")
    train.add_argument("--dry-run", action="store_true", help="build on the meta device and print parameters only")
    # The deepspeed launcher appends --local_rank=N; the rank also arrives in $LOCAL_RANK.
    train.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    train.set_defaults(func=_train)

    validate = sub.add_parser("validate-data", help="check every record and image of a config's data; no training")
    validate.add_argument("config", help="YAML config (see configs/)")
    validate.add_argument("overrides", nargs="*", help="key=value overrides")
    validate.set_defaults(func=_validate)

    ev = sub.add_parser("eval", help="evaluate a run directory (or a config) on its eval set")
    ev.add_argument("run", help="run directory written by `vlft train`, or a YAML config")
    ev.add_argument("overrides", nargs="*", help="key=value overrides, e.g. eval.max_samples=500")
    ev.add_argument("--out", help="where predictions.json and metrics.json go (default: the run directory)")
    ev.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    ev.set_defaults(func=_eval)

    _add_serving_parsers(sub)

    merge = sub.add_parser("merge", help="fold a run's adapters into the base model; write a standalone checkpoint")
    merge.add_argument("run", help="run directory written by `vlft train`")
    merge.add_argument("out", help="new directory for the merged model (the family's native format)")
    merge.set_defaults(func=_merge)

    analyze = sub.add_parser("analyze", help="the DoRA paper's weight-decomposition analysis (magnitude and "
                                             "direction change per layer and checkpoint)")
    analyze.add_argument("runs", nargs="+", help="run directories (their checkpoint-N and final weights)")
    analyze.add_argument("--layers", help="regex on layer names, e.g. 'q_proj|v_proj' (default: every trained "
                                          "Linear/Conv2d of the language and vision towers)")
    analyze.add_argument("--out", help="write each run's CSV, JSON and PNG under OUT/<run name> (default: the run)")
    analyze.set_defaults(func=_analyze)

    compare = sub.add_parser("compare", help="a table of runs: method, rank, trainable share, time, memory, metrics")
    compare.add_argument("runs", nargs="+", help="run directories")
    compare.set_defaults(func=_compare)

    sweep = sub.add_parser("sweep", help="full fine-tuning vs LoRA vs DoRA across ranks and seeds; a table and a plot")
    sweep.add_argument("config", help="YAML config of one run; its sweep block may define the grid")
    sweep.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    sweep.add_argument("--methods", help="comma-separated, e.g. full,lora,dora (default: sweep.methods)")
    sweep.add_argument("--ranks", help="comma-separated, e.g. 4,8,16,32 (default: sweep.ranks)")
    sweep.add_argument("--seeds", type=int, help="seeds per (method, rank) (default: sweep.seeds)")
    sweep.add_argument("--launcher", help="run each training under this launcher, e.g. 'deepspeed --num_gpus 2' "
                                          "(default: one process)")
    sweep.add_argument("--no-analyze", action="store_true", help="skip the weight-decomposition analysis")
    sweep.set_defaults(func=_sweep)

    _add_score_parsers(sub)

    config = sub.add_parser("config", help="describe config keys")
    config_sub = config.add_subparsers(dest="action", required=True)
    explain_parser = config_sub.add_parser("explain", help="every key with its type, default and meaning")
    explain_parser.add_argument("config", nargs="?", help="also show the value this config gives each key")
    explain_parser.set_defaults(func=_explain)
    return parser


def _add_score_parsers(sub) -> None:
    """`vlft score vqav2 | gqa | coco-caption`: result files of any tool, in the official formats."""
    score = sub.add_parser("score", help="score result files in official formats")
    score_sub = score.add_subparsers(dest="benchmark", required=True)
    vqa = score_sub.add_parser("vqav2", help="official VQAv2 accuracy")
    vqa.add_argument("--questions", required=True, help="v2_OpenEnded_mscoco_*_questions.json")
    vqa.add_argument("--annotations", required=True, help="v2_mscoco_*_annotations.json")
    vqa.add_argument("--results", required=True, help="JSON list of {question_id, answer}")
    vqa.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                     help="which official answer processing: 2016 (vqaEval.py until March 2021, normalises the "
                          "prediction always, human answers by punctuation only) or 2021 (master since a013f00, "
                          "normalises both, only when the human answers disagree); default %(default)s, "
                          "named in the output JSON")
    vqa.set_defaults(func=_score)
    gqa = score_sub.add_parser("gqa", help="GQA accuracy (official, over balanced questions)")
    gqa.add_argument("--questions", required=True, help="e.g. testdev_balanced_questions.json")
    gqa.add_argument("--results", required=True, help="JSON list of {questionId, prediction}")
    gqa.set_defaults(func=_score)
    caption = score_sub.add_parser("coco-caption", help="BLEU-1..4, METEOR, ROUGE-L, CIDEr as pycocoevalcap computes")
    caption.add_argument("--annotations", required=True, help="COCO captions: {images, annotations: [{image_id, "
                                                              "id, caption}]}")
    caption.add_argument("--results", required=True, help="JSON list of {image_id, caption}")
    caption.set_defaults(func=_score)


def _serving_parser(sub, name: str, help_text: str, func) -> argparse.ArgumentParser:
    """The arguments `vlft predict`, `chat` and `demo` share: which model, where it runs, how it generates."""
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument("dir", help="a run directory written by `vlft train` (adapter on its base model) or a "
                                    "model written by `vlft merge`")
    parser.add_argument("--image", help="an image file")
    parser.add_argument("--video", help="a video file (LLaVA, VL-BART), framed as the run's data.video says")
    parser.add_argument("--task", default="vqa", help="the record task (vl_bart's prefix: vqa, gqa, caption, ...; "
                                                      "default vqa)")
    parser.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: the run's "
                                                           "eval.max_new_tokens)")
    parser.add_argument("--top-k", type=int, default=5, help="an image classifier's labels shown (default 5)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when there is one)")
    parser.set_defaults(func=func)
    return parser


def _add_serving_parsers(sub) -> None:
    predict = _serving_parser(sub, "predict", "answer questions about your images and videos (the evaluation's "
                                              "prompt, image processing and greedy generation)", _predict)
    predict.add_argument("--question", help="the question to ask about the image or video")
    predict.add_argument("--input", help="a JSON/JSONL file of records in the eval format (answers optional): "
                                         "one prediction per record")
    predict.add_argument("--image-folder", help="the folder the --input records' image and video paths are relative "
                                                "to (default: the run's data.image_folder, as in evaluation)")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    chat = _serving_parser(sub, "chat", "talk about an image or video in the terminal; answers are streamed", _chat)
    chat.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    demo = _serving_parser(sub, "demo", 'a local web page to ask about an image or video (pip install -e ".[demo]")',
                           _demo)
    demo.add_argument("--question", help="open the page with this question about --image/--video, answered")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                           "only)")
    demo.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (`vlft sweep cfg --seeds 3 training.max_steps=200`)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLoss as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
