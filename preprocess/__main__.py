"""Command line of the batch stage: `python -m preprocess build|merge ...` (what `make shards` runs)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from preprocess.corpus import CorpusError
from preprocess.settings import ShardsConfig
from sslfer.config import ConfigError, load_config, options_help
from sslfer.plugins import plugins_loaded

EXIT_SOME_FAILED = 3
EXIT_NONE_USABLE = 4


def main(argv=None) -> int:
    options = ("options (key=value, after DATA SHARDS; or in a TOML file given with --config):\n"
               + options_help(ShardsConfig)
               + f"\n\nexit status: 0 all clips usable, {EXIT_SOME_FAILED} some clips failed (see the summary "
                 f"and rejects.parquet), {EXIT_NONE_USABLE} every clip failed (no usable clip: e.g. no ffmpeg "
                 "on this machine), 2 a usage error or no clips found")
    parser = argparse.ArgumentParser(
        prog="python -m preprocess",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn a talking-face corpus into WebDataset training shards (decode, landmarks, aligned "
                    "faces, eye/mouth crops, region embeddings, FaceSwap composites). Reruns do only what "
                    "changed.",
        epilog=options)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build or update shards from a corpus", epilog=options,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("data", help="corpus: a folder (videos or VoxCeleb1 frames layout) or a CSV path,speaker[,video]")
    b.add_argument("shards", help="output folder")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="option overrides (see below)")
    b.add_argument("--config", help="TOML file of options")
    m = sub.add_parser("merge", help="join the parts of a split run (part=i/n) into one manifest")
    m.add_argument("shards", help="the SHARDS folder the parts were written under")
    args = parser.parse_args(argv)

    from preprocess.pack import merge_parts
    from preprocess.pipeline import build, print_summary
    from sslfer.imagenet import WeightsMissing

    if not plugins_loaded():  # frame fields of the user's (SSLFER_PLUGINS)
        return 2
    try:
        if args.command == "merge":
            print(json.dumps(merge_parts(Path(args.shards)), indent=2))
            return 0
        cfg = load_config(ShardsConfig, args.config, args.overrides)
        summary = build(args.data, args.shards, cfg)
    except (ConfigError, CorpusError, WeightsMissing, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    if summary["clips_failed"] and not summary["clips_usable"]:
        print(f"error: every clip failed ({summary['clips_failed']}); the reasons are above and in rejects.parquet",
              file=sys.stderr)
        return EXIT_NONE_USABLE
    return EXIT_SOME_FAILED if summary["clips_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
