"""Command line of the trainer: `python -m train SHARDS RUN [--preset P] [--config F] [key=value ...]`
(what `make pretrain` runs; also `torchrun --nproc_per_node=G -m train ...`)."""
from __future__ import annotations

import argparse
import sys

from sslfer.config import ConfigError, load_config, options_help
from sslfer.plugins import plugins_loaded
from sslfer.shards.schema import SchemaError
from train.settings import TrainConfig, preset_names, preset_path


def main(argv=None) -> int:
    if not plugins_loaded():  # methods and positive-pair pieces of the user's (SSLFER_PLUGINS)
        return 2
    parser = argparse.ArgumentParser(
        prog="python -m train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Contrastive pretraining on `make shards` output: SimCLR, MoCo-v2, BYOL and the paper's "
                    "TimeAug / HardNeg / FaceSwap / MaskFN.",
        epilog=f"presets: {', '.join(preset_names())} (configs/pretrain/<preset>.toml)\n"
               "batch_size counts instances per step for every preset (the paper's 256): with hardneg, half of them "
               "are the anchors' hard negatives, so every row of Table 1 trains on the same batch.\n\n"
               "options (key=value after SHARDS RUN, or in a TOML file given with --config; the preset is "
               "applied first, then the file, then key=value):\n" + options_help(TrainConfig))
    parser.add_argument("shards", help="folder written by make shards")
    parser.add_argument("run", help="run folder: log.jsonl, checkpoints/, backbone.pt, curves.png")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--preset", default="sslfer", help="one row of the paper's Table 1 (default sslfer)")
    parser.add_argument("--config", help="TOML file of options")
    args = parser.parse_intermixed_args(argv)

    from train.preemption import Stopped
    from train.pretrain import TrainingStopped, pretrain

    try:
        paths = [preset_path(args.preset)] + ([args.config] if args.config else [])
        cfg = load_config(TrainConfig, paths, args.overrides)
        s = pretrain(args.shards, args.run, cfg, preset=args.preset, argv=sys.argv if argv is None else
                     ["-m", "train", *argv])
    except Stopped as e:
        if e.rank == 0:
            print(f"{e} (exit {e.status})", flush=True)
        return e.status
    except (ConfigError, SchemaError, TrainingStopped, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "top1" in s:
        print(f"\n== make pretrain ({args.preset}) ==\nrun           {s['run']}\n"
              f"steps         {s['steps']} ({s['epochs']} epochs x {s['steps_per_epoch']} steps, {s['clips']} clips, "
              f"{s['shards']} shards, {s['world']} rank(s) on {s['device']})\n"
              f"final         loss {s['loss']:.4f}, instance top-1 {s['top1']:.3f} (first step {s['top1_first']:.3f})\n"
              f"batch         {s['batch_size']} instances per step; of {s['anchors']} anchors "
              f"{s['distinct_clips'] / max(s['anchors'], 1):.0%} were distinct clips within their step; "
              f"{s['masked_pairs']} near-duplicate pairs masked\n"
              f"positives     {s['swaps']} FaceSwap/CutMix"
              + (f" ({s['swap_rate']:.0%} of positives)" if "swap_rate" in s else "")
              + f"; hard negatives: {s['hardneg_other_clip']} from another clip of the speaker, "
              f"{s['hardneg_close']} closer than T2 to the anchor or its positive (clip too short), "
              f"{s['hardneg_missing']} missing; {s['skipped_steps']} steps skipped, {s['unreadable']} unreadable "
              f"clips\n"
              + (f"MaskFN        on the shards' {s['maskfn_descriptor']!r} region descriptor"
                 + ("" if s["maskfn_descriptor"] == "resnet18" else " (not the paper's ResNet18 features)") + "\n"
                 if s.get("maskfn_descriptor") else "")
              + (f"monitor       expression kNN {s['monitor_expr_knn']:.3f} (best {s['monitor_expr_best']:.3f}, "
                 f"checkpoints/best.pt)\n" if "monitor_expr_knn" in s else "")
              + (f"monitor       FR-KNN {s['monitor_id_knn']:.3f} (lower = less identity)\n"
                 if "monitor_id_knn" in s else "")
              + f"time          {s['seconds']:.0f} s\n"
              f"outputs       {s['run']}/checkpoints/last.pt, {s['run']}/backbone.pt, {s['run']}/curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
