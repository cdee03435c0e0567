"""The small real-data experiment of docs/results.md (`make experiment`).

Shards from ../shared/data/talking-faces; for each preset and seed, pretraining of a ResNet-18 on the CPU with the
same budget (steps, instances per step, input size), with the online monitor (kNN on a FER2013 sample, FR-KNN on
lfw-20) every --monitor-every steps; then the FER2013 linear probe trained with --probe-seeds head seeds
(validation and test carved once from the training folder: the official test split is not in ../shared) and
FR-KNN on lfw-20, with a random-initialised backbone as the floor. Prints a Markdown table (mean ± std over
pretraining seeds of the mean over probe seeds; the probe seeds' own spread beside it) and writes it, with every
per-run number and the monitor's curves, under --out."""
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


def plot_curves(runs: dict[str, list[Path]], out: Path) -> None:
    """Instance top-1 and the monitor's two scores against the step, one line per run, a colour per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    titles = ("instance top-1 (training batches)", "monitor: expression kNN acc ↑", "monitor: FR-KNN acc (identity) ↓")
    for colour, (preset, dirs) in zip(("tab:blue", "tab:red", "tab:green", "tab:orange"), runs.items()):
        for n, d in enumerate(dirs):
            rows = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
            label = preset if n == 0 else None
            for ax, key in zip(axes, ("top1", "monitor_expr_knn", "monitor_id_knn")):
                pts = [(r["step"], r[key]) for r in rows if key in r]
                if pts:
                    ax.plot(*zip(*pts), color=colour, lw=1, alpha=0.8, label=label,
                            marker="o" if key.startswith("monitor") else None, ms=2)
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


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
    p.add_argument("--probe-seeds", type=int, default=3, help="head seeds of the linear probe (probe_seeds)")
    p.add_argument("--monitor-every", type=int, default=50)
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
                 f"seed={seed}", "workers=1", "log_every=10", f"monitor={SHARED / 'fer2013' / 'train'}",
                 f"monitor_identity={SHARED / 'lfw-20'}", f"monitor_every={a.monitor_every}"])
        ckpts.setdefault(preset, []).append(str(run_dir / "backbone.pt"))
    every = [c for cs in ckpts.values() for c in cs]
    flags = [x for c in every for x in ("--ckpt", c)]
    common = ["arch=resnet18", f"image_size={a.size}", "seed=0", "gradcam_per_class=2"]
    if not (out / "fer2013" / "metrics.json").is_file():
        run([py, "-m", "eval", "fer2013", str(SHARED / "fer2013"), *flags, "--report", str(out / "fer2013"),
             "protocol=linear", f"epochs={a.probe_epochs}", f"probe_seeds={a.probe_seeds}", *common])
    if not (out / "lfw" / "metrics.json").is_file():
        run([py, "-m", "eval", "lfw", str(SHARED / "lfw-20"), *flags, "--report", str(out / "lfw"), *common])
    fer = json.loads((out / "fer2013" / "metrics.json").read_text())["checkpoints"]
    lfw = json.loads((out / "lfw" / "metrics.json").read_text())["checkpoints"]

    def lookup(table, ckpt):
        return next(v for k, v in table.items() if k.startswith("random" if ckpt == "random" else
                                                                   f"{Path(ckpt).parent.name}/"))

    def fmt(v):
        return f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}" if len(v) > 1 else f"{100 * v[0]:.1f}"

    rows, per_run = [], {}
    for preset, cs in ckpts.items():
        # [checkpoint, probe seed]
        probe = [lookup(fer, c)["linear_expr"] for c in cs]
        per_seed = [p.get("test_per_seed", [p["test"]]) for p in probe]
        f1 = np.array([[t["f1"] for t in ts] for ts in per_seed])
        acc = np.array([[t["acc"] for t in ts] for ts in per_seed])
        knn = np.array([[lookup(lfw, c)["fr_knn"]["acc"]] for c in cs])
        curves = {}
        for c in cs:
            log = Path(c).parent / "log.jsonl"
            if log.is_file():
                rows_ = [json.loads(x) for x in log.read_text().splitlines()]
                curves[Path(c).parent.name] = {
                    "top1_last": next((r["top1"] for r in reversed(rows_) if "top1" in r), None),
                    "monitor": [(r["step"], r.get("monitor_expr_knn"), r.get("monitor_id_knn"))
                                for r in rows_ if "monitor_expr_knn" in r]}
        per_run[preset] = {"fer_f1": f1.tolist(), "fer_acc": acc.tolist(), "fr_knn": knn.tolist(),
                           "curves": curves}
        rows.append(f"| {preset} | {len(cs)} × {f1.shape[1]} | {fmt(f1.mean(1))} | {100 * f1.std(1).mean():.1f} | "
                    f"{fmt(acc.mean(1))} | {fmt(knn.mean(1))} |")
    n_test = next(iter(fer.values()))["linear_expr"]["test"]["n"]
    table = "\n".join(["| pretraining | runs × probe seeds | FER2013 linear F1 (%) | ± over probe seeds | "
                       "FER2013 linear Acc (%) | LFW-20 FR-KNN (%) ↓ |",
                       "|---|---:|---:|---:|---:|---:|", *rows])
    (out / "results.md").write_text(table + f"\n\nFER2013 test images: {n_test}\n")
    (out / "per_run.json").write_text(json.dumps(per_run, indent=2))
    plot_curves({p_: [Path(c).parent for c in cs] for p_, cs in ckpts.items() if p_ != "random"}, out / "curves.png")
    print("\n" + table)


if __name__ == "__main__":
    main()
