"""`make demo`: the whole pipeline on a small corpus it makes itself (or on DATA, a folder of the user's
clips): shards -> pretraining (ResNet-18, small input) -> evaluation (linear probe on a labelled set the demo
also makes, FR-KNN, Grad-CAM) -> a summary on screen and build/demo/report.md with its PNGs."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from eval import report as R


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__)
    p.add_argument("--data", help="a corpus of your own (videos tree, frames tree or CSV); default: made here")
    p.add_argument("--out", default="build/demo", help="where everything goes")
    p.add_argument("--steps", type=int, default=400, help="pretraining steps")
    a = p.parse_args(argv)
    from eval.__main__ import main as evaluate
    from preprocess.__main__ import main as shards
    from preprocess.synthetic import make_corpus, make_expression_sets
    from train.__main__ import main as pretrain

    out = Path(a.out)
    times = {}
    t = time.time()
    corpus = Path(a.data) if a.data else out / "corpus"
    if not a.data and not corpus.is_dir():
        print("making a synthetic corpus (4 speakers x 2 clips, 8 s each) ...")
        make_corpus(corpus, speakers=4, clips_per_speaker=2, seconds=8.0)
    eval_sets = out / "eval"
    if not (eval_sets / "expressions").is_dir():
        make_expression_sets(eval_sets, identities=4, per_class=12)
    times["data"] = time.time() - t

    t = time.time()
    code = shards(["build", str(corpus), str(out / "shards"), "region_descriptor=landmarks"])
    if code not in (0, 3):
        return code
    times["shards"] = time.time() - t
    t = time.time()
    run = out / "run"
    code = pretrain([str(out / "shards"), str(run), "--preset", "sslfer", "arch=resnet18", "image_size=64",
                     "batch_size=32", "anchors_per_clip=8", "warm_epochs=2", f"max_steps={a.steps}", "workers=1",
                     "log_every=5"])
    if code:
        return code
    times["pretrain"] = time.time() - t

    t = time.time()
    ckpts = ["--ckpt", "random", "--ckpt", str(run / "backbone.pt")]
    common = ["arch=resnet18", "image_size=64", f"cache_dir={out / 'cache'}", "workers=1"]
    reports = out / "reports"
    code = evaluate(["folder", str(eval_sets / "expressions"), *ckpts, "--report", str(reports / "expressions"),
                     "protocol=linear", "epochs=40", "batch_size=16", "val_fraction=0.2", "test_fraction=0.25",
                     "gradcam_per_class=3", *common])
    code = code or evaluate(["lfw", str(eval_sets / "identities"), *ckpts, "--report", str(reports / "identities"),
                             "knn_min_images=10", *common])
    if code:
        return code
    times["evaluate"] = time.time() - t

    table = R.join([reports / "expressions", reports / "identities"])
    rel = lambda path: path.relative_to(out)
    pngs = [run / "curves.png", *sorted((reports / "expressions").glob("*.png"))]
    md = ["# sslfer demo", "", f"Corpus: {corpus}. Pretraining: `sslfer` preset, ResNet-18, 64 px, {a.steps} steps "
          "(CPU). Evaluation: a 3-class expression set made by warping faces around their landmarks (neutral, "
          "smile, surprise; linear probe) and the same images by identity (FR-KNN, lower = less identity).", "",
          table, "", *[f"![{png.stem}]({rel(png)})" for png in pngs]]
    (out / "report.md").write_text("\n".join(md) + "\n")
    print("\n== make demo ==")
    print("time          " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) +
          f" (total {sum(times.values()):.0f} s)")
    print(table)
    print(f"report        {out / 'report.md'} (tables, training curves, confusion matrices, Grad-CAM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
