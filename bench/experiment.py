"""The small real-data experiment of docs/results.md (`make experiment`).

Shards from ../shared/data/talking-faces; for each preset and seed, pretraining of a ResNet-18 on the CPU with the
same budget (steps, anchors per step, input size); then the FER2013 linear probe (validation carved from the
training folder, test carved too: the official test split is not in ../shared) and FR-KNN on lfw-20, with a
random-initialised backbone as the floor. Prints a Markdown table of mean ± std over seeds and writes it, with
every per-run number, under --out."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/experiment")
    p.add_argument("--presets", default="simclr,sslfer")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--extra-presets", default="", help="more presets (e.g. the single toggles), run with --extra-seeds")
    p.add_argument("--extra-seeds", default="0")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64, help="instances per step (batch_size), the same for every preset")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--probe-epochs", type=int, default=20)
    a = p.parse_args()
    out = Path(a.out)
    py = sys.executable
    shards = out / "shards"
    run([py, "-m", "preprocess", "build", str(SHARED / "talking-faces"), str(shards), "region_descriptor=landmarks"])
    ckpts: dict[str, list[str]] = {"random": ["random"]}
    plan = [(p_, s_) for p_ in a.presets.split(",") for s_ in a.seeds.split(",")]
    plan += [(p_, s_) for p_ in a.extra_presets.split(",") if p_ for s_ in a.extra_seeds.split(",")]
    for preset, seed in plan:
        run_dir = out / "runs" / f"{preset}-s{seed}"
        if not (run_dir / "backbone.pt").is_file():
            run([py, "-m", "train", str(shards), str(run_dir), "--preset", preset, "arch=resnet18",
                 f"image_size={a.size}", f"batch_size={a.batch}", "anchors_per_clip=8", f"max_steps={a.steps}",
                 f"seed={seed}", "workers=1", "log_every=10"])
        ckpts.setdefault(preset, []).append(str(run_dir / "backbone.pt"))
    every = [c for cs in ckpts.values() for c in cs]
    common = ["arch=resnet18", f"image_size={a.size}", "seed=0", "gradcam_per_class=2"]
    flags = [x for c in every for x in ("--ckpt", c)]
    run([py, "-m", "eval", "fer2013", str(SHARED / "fer2013"), *flags, "--report", str(out / "fer2013"),
         "protocol=linear", f"epochs={a.probe_epochs}", *common])
    run([py, "-m", "eval", "lfw", str(SHARED / "lfw-20"), *flags, "--report", str(out / "lfw"), *common])
    fer = json.loads((out / "fer2013" / "metrics.json").read_text())["checkpoints"]
    lfw = json.loads((out / "lfw" / "metrics.json").read_text())["checkpoints"]

    def lookup(table, ckpt):
        return next(v for k, v in table.items() if k.startswith("random" if ckpt == "random" else
                                                                   f"{Path(ckpt).parent.name}/"))

    rows, per_run = [], {}
    for preset, cs in ckpts.items():
        f1 = [lookup(fer, c)["linear_expr"]["test"]["f1"] for c in cs]
        acc = [lookup(fer, c)["linear_expr"]["test"]["acc"] for c in cs]
        knn = [lookup(lfw, c)["fr_knn"]["acc"] for c in cs]
        per_run[preset] = {"fer_f1": f1, "fer_acc": acc, "fr_knn": knn}
        fmt = lambda v: f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}" if len(v) > 1 else f"{100 * v[0]:.1f}"
        rows.append(f"| {preset} | {len(cs)} | {fmt(f1)} | {fmt(acc)} | {fmt(knn)} |")
    n_test = next(iter(fer.values()))["linear_expr"]["test"]["n"]
    table = "\n".join(["| pretraining | runs | FER2013 linear F1 (%) | FER2013 linear Acc (%) | LFW-20 FR-KNN (%) ↓ |",
                       "|---|---:|---:|---:|---:|", *rows])
    (out / "results.md").write_text(table + f"\n\nFER2013 test images: {n_test}\n")
    (out / "per_run.json").write_text(json.dumps(per_run, indent=2))
    print("\n" + table)


if __name__ == "__main__":
    main()
