"""The real-data experiment of docs/results.md (`make experiment`): Table 1's rows side by side on real talking
faces, with seeds enough to tell them apart.

Shards from --corpus (default: ../shared/data/talking-faces-all.csv, 176 clips of 126 speakers); for each preset
and pretraining seed a ResNet-18 pretrained on the CPU with the same budget (steps, instances per step, input size),
the online monitor on (kNN on a FER2013 sample, FR-KNN on lfw-20; checkpoints/best.pt keeps the best step). The same
presets (--compare-presets) are pretrained on --compare-corpus (default: the original 32 clips) for the
five-times-the-data comparison. Every checkpoint, the last (backbone.pt) and the monitor's best (best.pt), is then
evaluated: the FER2013 linear probe with --probe-seeds head seeds under both alignments (align=landmarks, the
pretraining alignment, and align=none, whole images as usual for FER2013; validation and test carved once from the
training folder: the official test split is not in ../shared) and FR-KNN on lfw-20, with a random-initialised
backbone as the floor. Writes results.md (mean ± std over pretraining seeds of the mean over probe seeds, the probe
seeds' spread beside it), per_run.json, curves.png and cost.json under --out; reruns skip what is done."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
TABLE1_ROWS = {"simclr": "SimCLR", "timeaug": "(a) TimeAug", "timeaug-hardneg": "(b) + HardNeg",
               "timeaug-hardneg-cutmix": "(c) TimeAug + HardNeg + CutMix",
               "timeaug-faceswap-maskfn": "(d) TimeAug + FaceSwap + MaskFN",
               "timeaug-hardneg-faceswap": "(e) TimeAug + HardNeg + FaceSwap", "sslfer": "(f) all four"}
# (row, the row it adds an idea to): what each idea adds, as Table 1 reads
TABLE1_STEPS = [("timeaug", "simclr"), ("timeaug-hardneg", "timeaug"), ("timeaug-hardneg-cutmix", "timeaug-hardneg"),
                ("timeaug-faceswap-maskfn", "timeaug"), ("timeaug-hardneg-faceswap", "timeaug-hardneg"),
                ("sslfer", "timeaug-hardneg-faceswap"), ("sslfer", "simclr")]


def difference(a: np.ndarray, b: np.ndarray) -> str:
    """Mean difference of two rows' per-run scores (points) ± its standard error (sample variances over the
    pretraining seeds); 'within noise' when it is under two standard errors."""
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if min(len(a), len(b)) > 1 else float("nan")
    d = a.mean() - b.mean()
    verdict = "within noise" if not abs(d) >= 2 * se else ("higher" if d > 0 else "lower")
    return f"{100 * d:+.1f} ± {100 * se:.1f} ({verdict})"


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def plot_curves(runs: dict[str, list[Path]], out: Path) -> None:
    """Instance top-1 and the monitor's two scores against the step, one line per run, a colour per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    titles = ("instance top-1 (training batches)", "monitor: expression kNN acc ↑", "monitor: FR-KNN acc (identity) ↓")
    cmap = plt.get_cmap("tab10")
    for k, (preset, dirs) in enumerate(runs.items()):
        for n, d in enumerate(dirs):
            rows = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
            for ax, key in zip(axes, ("top1", "monitor_expr_knn", "monitor_id_knn")):
                pts = [(r["step"], r[key]) for r in rows if key in r]
                if pts:
                    ax.plot(*zip(*pts), color=cmap(k % 10), lw=1, alpha=0.8, label=preset if n == 0 else None,
                            marker="o" if key.startswith("monitor") else None, ms=2)
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def pretrain(corpus: Path, out: Path, plan: list[tuple[str, str]], a, py: str) -> dict[str, list[Path]]:
    """Shards of the corpus and one run per (preset, seed); returns the run folders by preset."""
    shards = out / "shards"
    if not (shards / "manifest.parquet").is_file():
        run([py, "-m", "preprocess", "build", str(corpus), str(shards), "region_descriptor=landmarks"])
    runs: dict[str, list[Path]] = {}
    for preset, seed in plan:
        run_dir = out / "runs" / f"{preset}-s{seed}"
        if not (run_dir / "summary.json").is_file():
            run([py, "-m", "train", str(shards), str(run_dir), "--preset", preset, "arch=resnet18",
                 f"image_size={a.size}", f"batch_size={a.batch}", "anchors_per_clip=8", f"max_steps={a.steps}",
                 f"seed={seed}", "workers=1", "log_every=10", f"monitor={SHARED / 'fer2013' / 'train'}",
                 f"monitor_identity={SHARED / 'lfw-20'}", f"monitor_every={a.monitor_every}",
                 f"monitor_max_images={a.monitor_images}", *a.train.split()])
        runs.setdefault(preset, []).append(run_dir)
    return runs


def checkpoint_files(run_dir: Path) -> dict:
    """The last step's weights and the monitor's best, and the best's step (0: the monitor never beat the
    initialisation); where the best is the last step (same weights), both name backbone.pt so the one checkpoint is
    evaluated once."""
    from eval.backbones import checkpoint_meta

    last, best = run_dir / "backbone.pt", run_dir / "checkpoints" / "best.pt"
    best_step = checkpoint_meta(str(best)).get("step")
    same = best_step == checkpoint_meta(str(last)).get("step")
    return {"last": last, "best": last if same else best, "best_step": best_step}


def evaluate_once(report: Path, cmd: list[str]) -> float:
    """Runs an evaluation unless its report is done; its seconds, kept in the report's done file."""
    done = report / "done"
    if not done.is_file():
        t = time.time()
        run(cmd)
        done.write_text(f"{time.time() - t:.0f}\n")
    return float(done.read_text().strip() or 0)


def lookup(metrics: dict, ckpt: str) -> dict:
    """A checkpoint's row in an evaluation's metrics.json: found by the file each row records (its provenance;
    two corpora's runs share folder names), random by its architecture."""
    rows = metrics["checkpoints"]
    if ckpt == "random":
        return next(v for k, v in rows.items() if k.startswith("random"))
    return rows[next(k for k, v in metrics["provenance"].items() if v["file"] == ckpt)]


def fmt(v) -> str:
    return f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}" if len(v) > 1 else f"{100 * v[0]:.1f}"


def batch_checks(corpora: dict[str, dict[str, list[Path]]]) -> list[str]:
    """What the runs' batches held (their summary.json), averaged over seeds: the checks to read before
    concluding that an idea does nothing."""
    header = ("| corpus | pretraining | runs | s per run | distinct clips / anchors | hard negative missing | "
              "… from another clip | groups with a pair < T2 | masked pairs per step | FaceSwap rate | "
              "instance top-1 first → last |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for corpus, runs in corpora.items():
        for preset, dirs in runs.items():
            sums = [json.loads((d / "summary.json").read_text()) for d in dirs]

            def mean(f, sums=sums):
                return float(np.mean([f(x) for x in sums]))
            neg = 100 * mean(lambda x: x["hardneg_missing"] / x["anchors"])
            other = 100 * mean(lambda x: x["hardneg_other_clip"] / x["anchors"])
            close = 100 * mean(lambda x: x["hardneg_close"] / x["anchors"])
            lines.append(
                f"| {corpus} | {TABLE1_ROWS.get(preset, preset)} | {len(sums)} | {mean(lambda x: x['seconds']):.0f} | "
                f"{100 * mean(lambda x: x['distinct_clips'] / x['anchors']):.0f}% | {neg:.0f}% | {other:.0f}% | "
                f"{close:.1f}% | {mean(lambda x: x['masked_pairs'] / x['steps']):.1f} | "
                f"{100 * mean(lambda x: x.get('swap_rate', 0.0)):.0f}% | "
                f"{mean(lambda x: x['top1_first']):.2f} → {mean(lambda x: x['top1']):.2f} |")
    return lines


def tabulate(corpora: dict[str, dict[str, list[Path]]], files: dict[Path, dict[str, Path]], fer: dict[str, dict],
             lfw: dict) -> tuple[list[str], list[str], dict]:
    """Results table rows (each preset's mean ± std over pretraining seeds of the mean over probe seeds), the
    differences table (TABLE1_STEPS) and the per-run scores, from the evaluations' metrics.json (fer: by
    alignment, 'landmarks' and 'none')."""
    def scores(files: list[str]) -> dict:
        """Per alignment: [checkpoint, probe seed] F1 and accuracy; FR-KNN per checkpoint."""
        got = {}
        for al in fer:
            probe = [lookup(fer[al], f)["linear_expr"] for f in files]
            per_seed = [pr.get("test_per_seed", [pr["test"]]) for pr in probe]
            got[f"f1_{al}"] = np.array([[t["f1"] for t in ts] for ts in per_seed])
            got[f"acc_{al}"] = np.array([[t["acc"] for t in ts] for ts in per_seed])
        got["knn"] = np.array([lookup(lfw, f)["fr_knn"]["acc"] for f in files])
        return got

    header = ("| corpus | pretraining | checkpoint | runs × probe seeds | FER2013 F1, landmarks (%) | ± probe | "
              "FER2013 F1, whole image (%) | ± probe | FER2013 Acc, landmarks (%) | LFW-20 FR-KNN (%) ↓ |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    per_run: dict = {}

    def add(corpus: str, label: str, choice: str, files: list[str], shown: str = "") -> None:
        s = scores(files)
        per_run.setdefault(corpus, {}).setdefault(label, {})[choice] = {
            "files": files, **{k: v.tolist() for k, v in s.items()}}
        lines.append(f"| {corpus} | {label} | {shown or choice} | {len(files)} × {s['f1_landmarks'].shape[1]} | "
                     f"{fmt(s['f1_landmarks'].mean(1))} | {100 * s['f1_landmarks'].std(1).mean():.1f} | "
                     f"{fmt(s['f1_none'].mean(1))} | {100 * s['f1_none'].std(1).mean():.1f} | "
                     f"{fmt(s['acc_landmarks'].mean(1))} | {fmt(s['knn'])} |")

    add("—", "random", "—", ["random"])
    for corpus, runs in corpora.items():
        for preset, dirs in runs.items():
            for choice in ("last", "best"):
                same = sum(files[d]["best"] == files[d]["last"] for d in dirs)
                init = sum(files[d].get("best_step") == 0 for d in dirs)
                notes = [f"= {what} in {k}/{len(dirs)}" for what, k in (("last", same), ("step 0", init)) if k]
                shown = f"best ({', '.join(notes)})" if choice == "best" and notes else choice
                add(corpus, TABLE1_ROWS.get(preset, preset), choice, [str(files[d][choice]) for d in dirs], shown)
    diffs = [("| corpus | checkpoint | row | over | FER2013 F1, landmarks | FER2013 F1, whole image | "
              "LFW-20 FR-KNN ↓ |"), "|---|---|---|---|---:|---:|---:|"]
    for corpus, rows in per_run.items():
        for row, base in TABLE1_STEPS:
            ra, rb = rows.get(TABLE1_ROWS[row]), rows.get(TABLE1_ROWS[base])
            for choice in ("last", "best") if ra and rb else ():
                sa, sb = ra[choice], rb[choice]
                cells = [difference(np.mean(sa[k], axis=1), np.mean(sb[k], axis=1))
                         for k in ("f1_landmarks", "f1_none")] + [difference(np.array(sa["knn"]), np.array(sb["knn"]))]
                diffs.append(f"| {corpus} | {choice} | {TABLE1_ROWS[row]} | {TABLE1_ROWS[base]} | "
                             f"{' | '.join(cells)} |")
    return lines, diffs, per_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/experiment")
    p.add_argument("--corpus", default=str(SHARED / "talking-faces-all.csv"))
    p.add_argument("--presets", default="simclr,sslfer", help="presets run with --seeds")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--extra-presets", default="timeaug,timeaug-hardneg,timeaug-hardneg-cutmix,"
                                              "timeaug-faceswap-maskfn,timeaug-hardneg-faceswap",
                   help="more presets (Table 1's other rows), run with --extra-seeds")
    p.add_argument("--extra-seeds", default="0,1")
    p.add_argument("--compare-corpus", default=str(SHARED / "talking-faces"),
                   help="a second corpus for --compare-presets ('' = none): the five-times-the-data comparison")
    p.add_argument("--compare-presets", default="simclr,sslfer", help="run with --compare-seeds on --compare-corpus")
    p.add_argument("--compare-seeds", default="0,1")
    p.add_argument("--steps", type=int, default=100,
                   help="pretraining steps of every run (the default fits the whole experiment in ~2 h on 2 cores)")
    p.add_argument("--batch", type=int, default=64, help="instances per step (batch_size), the same for every preset")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--probe-epochs", type=int, default=20)
    p.add_argument("--probe-seeds", type=int, default=3, help="head seeds of the linear probe (probe_seeds)")
    p.add_argument("--probe-images", type=int, default=2000,
                   help="FER2013 images per split (train, validation, test; max_images=, 0 = all 28,709)")
    p.add_argument("--monitor-every", type=int, default=50)
    p.add_argument("--monitor-images", type=int, default=1000, help="images per monitor set (monitor_max_images=)")
    p.add_argument("--train", default="", help="more key=value options for every pretraining")
    p.add_argument("--eval", default="", help="more key=value options for every evaluation (e.g. max_images=)")
    a = p.parse_args()
    out = Path(a.out)
    py = sys.executable
    seeds, extra = a.seeds.split(","), [s for s in a.extra_seeds.split(",") if s]
    plan = [(p_, s) for s in seeds for p_ in a.presets.split(",") if p_]
    plan += [(p_, s) for s in extra for p_ in a.extra_presets.split(",") if p_]
    corpora = {"main": pretrain(Path(a.corpus), out / "main", plan, a, py)}
    if a.compare_corpus:
        corpora["compare"] = pretrain(Path(a.compare_corpus), out / "compare",
                                      [(p_, s) for p_ in a.compare_presets.split(",") if p_
                                       for s in a.compare_seeds.split(",") if s], a, py)

    files = {d: checkpoint_files(d) for runs in corpora.values() for dirs in runs.values() for d in dirs}
    ckpts = ["random"] + sorted({str(chosen[c]) for chosen in files.values() for c in ("last", "best")})
    flags = [x for c in ckpts for x in ("--ckpt", c)]
    common = ["arch=resnet18", f"image_size={a.size}", "seed=0", "gradcam_per_class=0", *a.eval.split()]
    reports = {align: out / f"fer2013-{align}" for align in ("landmarks", "none")}
    t_eval = sum(evaluate_once(reports[align], [
        py, "-m", "eval", "fer2013", str(SHARED / "fer2013"), *flags, "--report", str(reports[align]),
        "protocol=linear", f"epochs={a.probe_epochs}", f"probe_seeds={a.probe_seeds}", f"align={align}",
        f"max_images={a.probe_images}", *common]) for align in reports)
    t_eval += evaluate_once(out / "lfw", [py, "-m", "eval", "lfw", str(SHARED / "lfw-20"), *flags, "--report",
                                         str(out / "lfw"), *common])
    fer = {al: json.loads((r / "metrics.json").read_text()) for al, r in reports.items()}
    lfw = json.loads((out / "lfw" / "metrics.json").read_text())

    lines, diffs, per_run = tabulate(corpora, files, fer, lfw)
    cost = {"evaluate_s": round(t_eval),
            "pretrain_runs_s": round(sum(json.loads((d / "summary.json").read_text())["seconds"]
                                         for runs in corpora.values() for dirs in runs.values() for d in dirs)),
            "runs": sum(
        len(d) for runs in corpora.values() for d in runs.values()), "steps": a.steps, "batch": a.batch,
        "size": a.size}
    n_test = next(iter(fer["landmarks"]["checkpoints"].values()))["linear_expr"]["test"]["n"]
    table = "\n".join(lines)
    (out / "results.md").write_text(
        table + "\n\nWhat each idea adds (points, mean over pretraining seeds ± standard error; 'within noise' = under "
        "two standard errors):\n\n" + "\n".join(diffs) + "\n\nWhat the batches held (each run's summary.json, "
        "mean over its seeds; hard-negative shares are of the anchors):\n\n" + "\n".join(batch_checks(corpora))
        + f"\n\nFER2013 test images: {n_test}. "
        f"Corpora: main = {a.corpus}, compare = {a.compare_corpus}. "
        f"Cost: pretraining {cost['pretrain_runs_s']} s (the runs' own time), evaluation {cost['evaluate_s']} s.\n")
    (out / "per_run.json").write_text(json.dumps(per_run, indent=2))
    (out / "cost.json").write_text(json.dumps(cost, indent=2))
    plot_curves({f"{c}/{p_}": dirs for c, runs in corpora.items() for p_, dirs in runs.items()}, out / "curves.png")
    print("\n" + table)


if __name__ == "__main__":
    main()
