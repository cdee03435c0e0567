"""Command line of the evaluation: `python -m eval <dataset> DATA --ckpt X [--ckpt Y] [--report DIR]
[key=value ...]` for every dataset of eval/registry.py (what `make eval-<dataset>` runs), `python -m eval report
DIR ... [--out FILE]` and `python -m eval embed INPUT... --ckpt X --out FILE.parquet` (eval/embed.py)."""
from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

from eval.settings import EvalConfig
from sslfer.config import ConfigError, load_config, options_help
from sslfer.plugins import plugins_loaded


def build_parser(datasets: dict) -> argparse.ArgumentParser:
    """The command line of `python -m eval` over the registered datasets."""
    parser = argparse.ArgumentParser(
        prog="python -m eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate pretrained backbones with the paper's protocols and write a report. "
                    "(`python -m eval embed --help`: embeddings of any images or videos.)",
        epilog="CKPT: a checkpoint of this project (checkpoints/last.pt), an exported backbone.pt, any torchvision "
               "ResNet state dict, the official code's checkpoints, 'imagenet', 'random', or 'eyemouth' (the "
               "ImageNet ResNet18 eye+mouth descriptor of Table 5; 'eyemouth=<weights file>').\n\n"
               "datasets (DATA [the paper's settings for it, applied with --paper-settings]):\n"
               + "".join(f"  {d.name}: {d.data}" + (f" [{' '.join(d.defaults)}]" if d.defaults else "") + "\n"
                         for d in datasets.values())
               + "\noptions (key=value):\n" + options_help(EvalConfig))
    parser.add_argument("dataset", choices=[*datasets, "report"],
                        help="which dataset (eval/registry.py, or yours via SSLFER_PLUGINS); 'report' joins reports")
    parser.add_argument("data", nargs="+", help="the dataset folder (or fer2013.csv); for 'report': report folders")
    parser.add_argument("--ckpt", action="append", default=[],
                        help="backbone to evaluate (repeatable); a pattern ('runs/sslfer/checkpoints/epoch-*.pt') "
                             "is expanded when the evaluation starts")
    parser.add_argument("--report", help="report folder (default reports/<dataset>-<time>)")
    parser.add_argument("--paper-settings", action="store_true",
                        help="the dataset's settings from the paper (listed below) before your key=value; "
                             "make eval-<dataset> and make table1 pass it")
    parser.add_argument("--pairs", help="LFW pairs.txt for 10-fold verification (default DATA/pairs.txt if there)")
    parser.add_argument("--out", help="report: write the joined table here too")
    parser.add_argument("--note", action="append", default=[], help="report: a line under the joined table "
                                                                     "(repeatable)")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="report: join reports of one dataset even when their settings differ")
    parser.add_argument("--best-epoch", action="store_true",
                        help="report: of each run's kept epoch checkpoints (RUN/checkpoints/epoch-*.pt) show only "
                             "the best by the table's first column, with its epoch (the paper's rule, Table 3)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not plugins_loaded():  # datasets of the user's (SSLFER_PLUGINS)
        return 2
    from eval.registry import DATASETS

    if argv[:1] == ["embed"]:  # its own options: python -m eval embed --help
        from eval.embed import main as embed

        return embed(argv[1:])
    parser = build_parser(DATASETS)
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)}")

    from eval import datasets as D, report as R
    from eval.run import evaluate_expressions, evaluate_lfw
    from sslfer.backbone import CheckpointError
    from sslfer.imagenet import WeightsMissing

    try:
        if args.dataset == "report":
            text = R.join([Path(d) for d in args.data], args.allow_mixed, args.note, args.best_epoch)
            print(text)
            if args.out:
                Path(args.out).write_text(text)
            return 0
        entry = DATASETS[args.dataset]
        cfg = load_config(EvalConfig, None, [*(entry.defaults if args.paper_settings else ()), *overrides])
        args.ckpt = expand_patterns(args.ckpt)
        if not args.ckpt:
            raise ConfigError("give at least one --ckpt (CKPT=...)")
        data = Path(args.data[0])
        report_dir = Path(args.report or f"reports/{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
        t0 = time.time()
        if entry.task == "identity":
            pairs = Path(args.pairs) if args.pairs else (data / "pairs.txt" if (data / "pairs.txt").is_file() else None)
            metrics = evaluate_lfw(entry.load(data, cfg), args.ckpt, cfg, report_dir, pairs)
        else:
            metrics = evaluate_expressions(entry.load(data, cfg), args.ckpt, cfg, report_dir)
    except (ConfigError, D.DatasetError, CheckpointError, WeightsMissing, FileNotFoundError, ValueError,
            R.MixedSettings) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\n== evaluation: {metrics['dataset']} ==")
    print("images        " + ", ".join(f"{k} {v}" for k, v in metrics["images"].items()))
    print("aligned       " + "; ".join(f"{k}: {v}" for k, v in metrics["alignment"].items()))
    if metrics["skipped"]:
        print("skipped       " + ", ".join(f"{n} {r}" for r, n in metrics["skipped"].items()))
    print(R.table(metrics["checkpoints"]))
    print(f"report        {report_dir}/report.md ({time.time() - t0:.0f} s)")
    return 0


def expand_patterns(specs: list[str]) -> list[str]:
    """Checkpoint patterns (a *, ? or [) become the files they match, sorted; one that matches none is an error
    (a run that kept no epoch checkpoint: the paper's rule keeps them once instance top-1 reaches 60%)."""
    out = []
    for spec in specs:
        if not any(c in spec for c in "*?["):
            out.append(spec)
            continue
        found = sorted(glob.glob(spec))
        if not found:
            raise FileNotFoundError(f"--ckpt {spec}: matches no file")
        out += found
    return out


if __name__ == "__main__":
    sys.exit(main())
