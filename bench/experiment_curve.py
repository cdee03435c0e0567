"""The learning curve of docs/results.md (`make experiment-curve`): SimCLR and `sslfer` pretrained on the 176 real
clips with a checkpoint kept every --keep-every epochs (the shape of the paper's Table 3), each checkpoint scored for
expression and for identity against a random network at the same resolution.

Per checkpoint: instance top-1 (the mean over the epoch's logged training steps), the FER2013 linear probe
(macro-F1, --probe-seeds head seeds, under each --alignments; splits carved from the training folder), LFW-20 FR-KNN
(people never seen in pretraining) and speaker retrieval among the pretraining speakers: each frame of a speaker
with several clips retrieves its nearest frame among all the *other* clips of the corpus (`sslfer.knn.
cross_group_retrieval`), so only the person, not the recording, can answer. Lower identity = less of the shortcut
the paper's ideas remove. Writes results.md (tables, differences with standard errors over pretraining seeds, the
batch checks), curve.png, per_checkpoint.json and cost.json under --out; a rerun does only what is missing."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.experiment import SHARED, batch_checks, difference, evaluate_once, lookup, run  # noqa: E402

METHODS = {"simclr": "SimCLR", "sslfer": "`sslfer` (all four)"}
MEASURES = [  # (key, title, higher is)
    ("top1", "instance top-1", ""), ("f1", "FER2013 linear macro-F1 (%)", "more expression"),
    ("fr_knn", "LFW-20 FR-KNN (%)", "more identity"), ("speaker", "speaker retrieval (%)", "more identity")]


def pretrain(a, shards: Path, py: str) -> dict[str, list[Path]]:
    """One run per (preset, seed), seeds interleaved so that a stopped experiment has both methods."""
    if not (shards / "manifest.parquet").is_file():
        run([py, "-m", "preprocess", "build", a.corpus, str(shards), "region_descriptor=landmarks"])
    runs: dict[str, list[Path]] = {}
    for seed in a.seeds.split(","):
        for preset in METHODS:
            run_dir = Path(a.out) / "runs" / f"{preset}-s{seed}"
            if not (run_dir / "summary.json").is_file():
                run([py, "-m", "train", str(shards), str(run_dir), "--preset", preset, "arch=resnet18",
                     f"image_size={a.size}", f"batch_size={a.batch}", "anchors_per_clip=8", f"epochs={a.epochs}",
                     f"keep_every={a.keep_every}", "keep_top1=0", f"seed={seed}", "workers=1", "log_every=11",
                     *a.train.split()])
            runs.setdefault(preset, []).append(run_dir)
    return runs


def kept(run_dir: Path) -> dict[int, Path]:
    """The run's kept checkpoints by epoch."""
    return {int(p.stem.split("-")[1]): p for p in sorted((run_dir / "checkpoints").glob("epoch-*.pt"))}


def epoch_top1(run_dir: Path) -> dict[int, float]:
    """Instance top-1 at the end of each epoch (1-based): the mean over that epoch's logged steps."""
    by_epoch: dict[int, list[float]] = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "top1" in r:
            by_epoch.setdefault(r["epoch"] + 1, []).append(r["top1"])
    return {e: float(np.mean(v)) for e, v in by_epoch.items()}


def stage_checks(runs: dict[str, list[Path]], keep_every: int) -> list[str]:
    """The batch checks of the logged steps in each stage (the epochs up to a kept checkpoint), over seeds."""
    lines = ["| method | epochs | logged steps | distinct clips / anchors | hard negative missing | … from another "
             "clip | FaceSwap rate | masked pairs per step |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for preset, dirs in runs.items():
        stages: dict[int, list[dict]] = {}
        for d in dirs:
            for line in (d / "log.jsonl").read_text().splitlines():
                r = json.loads(line)
                if "anchors" in r:
                    stages.setdefault(r["epoch"] // keep_every, []).append(r)
        for k, rows in sorted(stages.items()):
            share = lambda key: 100 * sum(r[key] for r in rows) / sum(r["anchors"] for r in rows)
            lines.append(f"| {METHODS[preset]} | {k * keep_every + 1}–{(k + 1) * keep_every} | {len(rows)} | "
                         f"{share('distinct_clips'):.0f}% | {share('hardneg_missing'):.0f}% | "
                         f"{share('hardneg_other_clip'):.0f}% | "
                         f"{100 * np.mean([r.get('swap_rate', 0.0) for r in rows]):.0f}% | "
                         f"{np.mean([r['masked_pairs'] for r in rows]):.1f} |")
    return lines


def shard_faces(shards: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every aligned face of the shards (uint8 [N, 128, 128, 3]) with its speaker and its clip."""
    from sslfer.shards.schema import ClipSample, shard_paths
    from sslfer.shards.tar import iter_tar_samples

    faces, speakers, clips = [], [], []
    for path in shard_paths(shards):
        for sample in iter_tar_samples(path, skip=frozenset({"swaps.jpgs", "eyes.jpgs", "mouth.jpgs"})):
            clip = ClipSample.from_wds(sample)
            for i in range(len(clip)):
                faces.append(clip.image("faces", i))
            speakers += [clip.meta["speaker"]] * len(clip)
            clips += [clip.key] * len(clip)
    return np.stack(faces), np.array(speakers), np.array(clips)


def speaker_retrieval(shards: Path, ckpts: list[str], size: int, cache: Path) -> dict[str, list[float]]:
    """(accuracy, chance) of cross-clip speaker retrieval per checkpoint; kept in `cache` by file and size."""
    import torch

    from sslfer import FacePreprocess, load_encoder
    from sslfer.knn import cross_group_retrieval

    done = json.loads(cache.read_text()) if cache.is_file() else {}
    todo = [c for c in ckpts if c not in done]
    if todo:
        faces, speakers, clips = shard_faces(shards)
        prep = FacePreprocess(size, aligned=True)
        for spec in todo:
            net = load_encoder(spec, "resnet18", seed=0)
            with torch.no_grad():
                feats = torch.cat([net(prep.tensor(faces[i:i + 512])) for i in range(0, len(faces), 512)])
            done[spec] = list(cross_group_retrieval(feats.numpy(), speakers, clips))
            cache.write_text(json.dumps(done, indent=1))
    return {c: done[c] for c in ckpts}


def scores(a, runs: dict[str, list[Path]], py: str) -> tuple[dict, dict]:
    """Per checkpoint (and 'random'): every measure; and the evaluation's seconds."""
    out = Path(a.out)
    ckpts = ["random"] + [str(p) for dirs in runs.values() for d in dirs for p in kept(d).values()]
    flags = [x for c in ckpts for x in ("--ckpt", c)]
    common = ["arch=resnet18", f"image_size={a.size}", "seed=0", "gradcam_per_class=0"]
    seconds = {}
    for align in a.alignments.split(","):
        seconds[f"fer2013 {align}"] = evaluate_once(out / f"fer2013-{align}", [
            py, "-m", "eval", "fer2013", str(SHARED / "fer2013"), *flags, "--report", str(out / f"fer2013-{align}"),
            "protocol=linear", f"epochs={a.probe_epochs}", f"probe_seeds={a.probe_seeds}", f"align={align}",
            f"max_images={a.probe_images}", *common])
    seconds["lfw"] = evaluate_once(out / "lfw", [py, "-m", "eval", "lfw", str(SHARED / "lfw-20"), *flags,
                                                 "--report", str(out / "lfw"), *common])
    t = time.time()
    speakers = speaker_retrieval(Path(a.shards), ckpts, a.size, out / "speakers.json")
    seconds["speaker retrieval"] = time.time() - t
    fer = {al: json.loads((out / f"fer2013-{al}" / "metrics.json").read_text()) for al in a.alignments.split(",")}
    lfw = json.loads((out / "lfw" / "metrics.json").read_text())
    got = {}
    for c in ckpts:
        probes = {al: lookup(m, c)["linear_expr"] for al, m in fer.items()}
        got[c] = {"fr_knn": lookup(lfw, c)["fr_knn"]["acc"], "speaker": speakers[c][0],
                  "speaker_chance": speakers[c][1],
                  **{f"f1_{al}": [t["f1"] for t in pr.get("test_per_seed", [pr["test"]])]
                     for al, pr in probes.items()}}
        got[c]["f1"] = float(np.mean(got[c][f"f1_{a.alignments.split(',')[0]}"]))
    return got, seconds


def curve(runs: dict[str, list[Path]], got: dict) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """preset -> epoch -> measure -> values over the pretraining seeds."""
    table: dict = {}
    for preset, dirs in runs.items():
        for d in dirs:
            top1 = epoch_top1(d)
            for epoch, path in kept(d).items():
                row = table.setdefault(preset, {}).setdefault(epoch, {})
                for key, value in {"top1": top1[epoch], **got[str(path)]}.items():
                    if not isinstance(value, list):
                        row.setdefault(key, []).append(value)
    return {p: {e: {k: np.array(v) for k, v in row.items()} for e, row in sorted(rows.items())}
            for p, rows in table.items()}


def mean_se(v: np.ndarray, scale: float = 100.0, digits: int = 1) -> str:
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{scale * v.mean():.{digits}f} ± {scale * se:.{digits}f}"


def plot(rows: dict, random: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, title, why) in zip(axes, MEASURES):
        for k, (preset, by_epoch) in enumerate(rows.items()):
            epochs = list(by_epoch)
            m = np.array([by_epoch[e][key].mean() for e in epochs]) * (1 if key == "top1" else 100)
            se = np.array([by_epoch[e][key].std(ddof=1) / np.sqrt(len(by_epoch[e][key]))
                           if len(by_epoch[e][key]) > 1 else 0 for e in epochs]) * (1 if key == "top1" else 100)
            ax.errorbar(epochs, m, yerr=se, marker="o", ms=3, capsize=2, label=preset,
                        color=plt.get_cmap("tab10")(k))
        if key in random:
            ax.axhline(100 * random[key], color="grey", ls="--", lw=1, label="random network")
        if key == "speaker":
            title += f" (chance {100 * random['speaker_chance']:.1f})"
        ax.set_title(f"{title}: {why} ↑" if key != "top1" else title, fontsize=9)
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def report(a, runs: dict, rows: dict, random: dict, seconds: dict) -> str:
    """results.md: the curve table, sslfer - SimCLR at equal epochs and at equal instance top-1, batch checks."""
    head = ("| method | epoch | runs | instance top-1 | FER2013 F1 (%) ↑ | LFW-20 FR-KNN (%) ↓ | "
            "speaker retrieval (%) ↓ |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|",
             f"| random network | – | 1 | – | {100 * random['f1']:.1f} | {100 * random['fr_knn']:.1f} | "
             f"{100 * random['speaker']:.1f} (chance {100 * random['speaker_chance']:.1f}) |"]
    for preset, by_epoch in rows.items():
        for e, v in by_epoch.items():
            lines.append(f"| {METHODS[preset]} | {e} | {len(v['top1'])} | {mean_se(v['top1'], 1, 2)} | "
                         f"{mean_se(v['f1'])} | {mean_se(v['fr_knn'])} | {mean_se(v['speaker'])} |")
    diffs = ["| epoch | F1 | FR-KNN | speaker retrieval |", "|---:|---:|---:|---:|"]
    common = sorted(set(rows.get("simclr", {})) & set(rows.get("sslfer", {})))
    for e in common:
        s, b = rows["sslfer"][e], rows["simclr"][e]
        diffs.append(f"| {e} | " + " | ".join(difference(s[k], b[k]) for k in ("f1", "fr_knn", "speaker")) + " |")
    matched = ["| `sslfer` epoch (top-1) | SimCLR epoch (top-1) | F1 | FR-KNN | speaker retrieval |",
               "|---|---|---:|---:|---:|"]
    for e, s in rows.get("sslfer", {}).items():  # SimCLR's checkpoint whose top-1 is nearest
        eb = min(rows.get("simclr", {}), key=lambda x: abs(rows["simclr"][x]["top1"].mean() - s["top1"].mean()))
        b = rows["simclr"][eb]
        matched.append(f"| {e} ({s['top1'].mean():.2f}) | {eb} ({b['top1'].mean():.2f}) | "
                       + " | ".join(difference(s[k], b[k]) for k in ("f1", "fr_knn", "speaker")) + " |")
    return "\n".join([
        f"Curve (mean ± standard error over pretraining seeds {a.seeds}; F1 the mean over {a.probe_seeds} probe "
        f"seeds, alignment {a.alignments.split(',')[0]}):", "", *lines, "",
        "`sslfer` − SimCLR at equal epochs (points, ± standard error; 'within noise' = under two):", "", *diffs, "",
        "`sslfer` − SimCLR at equal instance top-1 (SimCLR's checkpoint nearest in top-1):", "", *matched, "",
        "What the batches held (summary.json, mean over seeds):", "", *batch_checks({"176 clips": runs}), "",
        "… and at each stage (the logged steps of the epochs up to each kept checkpoint, both seeds):", "",
        *stage_checks(runs, a.keep_every), "",
        "Cost (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + "."]) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/curve")
    p.add_argument("--corpus", default=str(SHARED / "talking-faces-all.csv"))
    p.add_argument("--shards", default="", help="shards of the corpus (default: OUT/shards, built when missing)")
    p.add_argument("--seeds", default="0,1", help="pretraining seeds of each method")
    p.add_argument("--epochs", type=int, default=40, help="epochs of every run (the cosine schedule ends there)")
    p.add_argument("--keep-every", type=int, default=5, help="epochs between kept (evaluated) checkpoints")
    p.add_argument("--batch", type=int, default=64, help="instances per step (batch_size)")
    p.add_argument("--size", type=int, default=32, help="input side in pixels (FER2013's faces are 48)")
    p.add_argument("--alignments", default="landmarks", help="FER2013 alignments, comma-separated (landmarks,none)")
    p.add_argument("--probe-epochs", type=int, default=20)
    p.add_argument("--probe-seeds", type=int, default=3)
    p.add_argument("--probe-images", type=int, default=2000, help="FER2013 images per split (max_images=)")
    p.add_argument("--train", default="", help="more key=value options for every pretraining")
    a = p.parse_args()
    out, py = Path(a.out), sys.executable
    a.shards = a.shards or str(out / "shards")
    t = time.time()
    runs = pretrain(a, Path(a.shards), py)
    got, seconds = scores(a, runs, py)
    seconds = {"pretraining (the runs' own)": sum(json.loads((d / "summary.json").read_text())["seconds"]
                                                  for dirs in runs.values() for d in dirs), **seconds,
               "this command": time.time() - t}
    rows = curve(runs, got)
    plot(rows, got["random"], out / "curve.png")
    (out / "per_checkpoint.json").write_text(json.dumps(got, indent=1))
    (out / "cost.json").write_text(json.dumps(seconds, indent=1))
    text = report(a, runs, rows, got["random"], seconds)
    (out / "results.md").write_text(text)
    print("\n" + text + f"\nplot {out / 'curve.png'}")


if __name__ == "__main__":
    main()
