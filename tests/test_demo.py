"""`make demo`: its synthetic corpus (expression changes within a clip, identity does not) and its report."""
import csv
import json
import re

import cv2
import numpy as np
import pytest


def _mouth_shape(frames):
    """Per frame: (mouth width, mouth opening) in inter-ocular distances, from the face mesh."""
    from sslfer.face_geometry import inter_ocular
    from sslfer.landmarks import FaceTracker

    shapes = []
    with FaceTracker(1, 8, 0.3) as tracker:
        for frame in frames:
            lm = tracker.detect(frame).landmarks
            assert lm is not None
            iod = inter_ocular(lm)
            shapes.append((np.linalg.norm(lm[61, :2] - lm[291, :2]) / iod,
                           np.linalg.norm(lm[13, :2] - lm[14, :2]) / iod))
    return np.array(shapes)


def _decode(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_expression_changes_within_a_clip_and_follows_its_labels(tmp_path):
    from preprocess import synthetic

    synthetic.make_expression_corpus(tmp_path, n_people=1, clips_per_person=1, seconds=8.0, fps=10)
    with open(tmp_path / "labels.csv") as f:
        labels = [r["expression"] for r in csv.DictReader(f)]
    frames = _decode(tmp_path / "id00000" / "clip0" / "00001.mp4")
    assert len(frames) == len(labels) == 80
    assert len(set(labels)) >= 2  # the expression changes within the clip
    moving = _mouth_shape(frames)
    person = synthetic.people(1, 0)[0]  # the same person and head motion, expression held neutral
    still = _mouth_shape(synthetic.render_frames(person.photo, 40, (224, 224), 3, photo_at=lambda i: person.face({})))
    spread = lambda s: s.max(0) - s.min(0)
    assert (spread(moving) > 3 * spread(still) + 0.05).any(), (spread(moving), spread(still))
    labels = np.array(labels)
    mean = {e: moving[labels == e].mean(0) for e in set(labels)}
    for e in mean:  # smiles widen the mouth, surprise opens it, more than any other expression here
        if e != "smile" and "smile" in mean:
            assert mean["smile"][0] > mean[e][0] + 0.05, mean
        if e != "surprise" and "surprise" in mean:
            assert mean["surprise"][1] > mean[e][1] + 0.05, mean

def test_expression_schedule_holds_then_blends():
    from preprocess.synthetic import EXPRESSIONS, expression_schedule

    weights, labels = expression_schedule(250, 25.0, np.random.default_rng(0))
    assert len(weights) == len(labels) == 250 and set(labels) <= set(EXPRESSIONS)
    runs = [[labels[0], 1]]
    for a in labels[1:]:
        if a == runs[-1][0]:
            runs[-1][1] += 1
        else:
            runs.append([a, 1])
    assert len(runs) >= 3
    assert all(n >= 25 for _, n in runs[1:-1])  # held ≥ 1.2 s less the blend: frames 1 s apart mostly agree
    assert all(0 < sum(w.values()) <= 1.0 + 1e-9 for w in weights)


def test_people_differ_in_identity(tmp_path):
    from preprocess.synthetic import people

    a, b, c = people(3, 0)
    assert a.photo.shape == c.photo.shape  # the same shipped photo...
    assert np.abs(a.photo.astype(int) - c.photo.astype(int)).mean() > 2  # ... with its own face and colouring
    assert not np.array_equal(people(1, 1)[0].photo, a.photo)  # another seed, other people (held apart)


def test_verdict_names_the_best_and_by_how_much():
    from eval.demo import verdict

    one = lambda f1, sd, knn: {"expr_f1": [f1], "expr_f1_std": [sd], "fr_knn": [knn]}
    scores = {"random (resnet18)": one(0.60, 0.05, 0.80), "simclr": one(0.40, 0.02, 0.95),
              "sslfer": one(0.75, 0.03, 0.85)}
    lines = verdict(scores)
    assert "**sslfer** encodes it best" in lines[0] and "+15.0 points" in lines[0] and "±5.0" in lines[0]
    assert "beats its baseline" in lines[1] and "+35.0 points" in lines[1]
    # one pretraining seed: no identity verdict, only the values
    assert lines[2].startswith("Identity: not compared with one pretraining seed") and "sslfer 85.0%" in lines[2]
    scores["sslfer"]["expr_f1"] = [0.30]
    assert "does not beat" in verdict(scores)[1]


def test_verdict_over_pretraining_seeds_states_the_spread_and_whether_identity_holds():
    from eval.demo import verdict

    scores = {"simclr": {"expr_f1": [0.60, 0.62, 0.58], "expr_f1_std": [0.01] * 3, "fr_knn": [0.70, 0.60, 0.65]},
              "sslfer": {"expr_f1": [0.80, 0.74, 0.56], "expr_f1_std": [0.02] * 3, "fr_knn": [0.60, 0.55, 0.64]}}
    lines = verdict(scores)
    assert "sslfer** encodes it best, macro-F1 70.0% (56.0–80.0 over 3 seeds)" in lines[0]
    assert "+10.0 points" in lines[1] and "higher in 2 of 3 pretraining seeds" in lines[1]
    assert "**sslfer** encodes less of it in every one of 3 pretraining seeds" in lines[2]
    scores["sslfer"]["fr_knn"][1] = 0.61  # above simclr's 0.60 in seed 1: the ranking flips
    assert "no verdict, the ranking flips across 3 pretraining seeds (sslfer lower in 2)" in verdict(scores)[2]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_demo_runs_every_stage_and_writes_the_report(tmp_path):
    from eval.demo import main

    out = tmp_path / "demo"
    assert main(["--out", str(out), "--steps", "4", "--people", "4", "--eval-people", "3", "--seeds", "0,1"]) == 0
    report = (out / "report.md").read_text()
    for row in ("| random (resnet18) |", "| simclr/backbone.pt |", "| sslfer/backbone.pt |",
                "| simclr-s1/backbone.pt |", "| sslfer-s1/backbone.pt |"):
        assert row in report
    assert "## Verdict" in report and "encodes it best" in report and "over 2 seeds" in report
    assert re.search(r"Identity: (\*\*\w+\*\* encodes less of it in every one of 2|no verdict)", report)
    assert "not real-world accuracy" in report
    expr = json.loads((out / "reports" / "expressions" / "metrics.json").read_text())
    assert expr["classes"] == ["neutral", "smile", "surprise"]
    assert (out / "reports" / "expressions" / "gradcam.png").is_file()
    assert "Grad-CAM at layer1 (8x8 at 32 px)" in " ".join(expr["notes"])  # not the 1x1 map of layer4
    # the thesis as a picture: the map with its silhouettes for random, simclr and sslfer, and a clip over time
    assert (out / "embed" / "expressions-map.png").stat().st_size > 10_000
    assert "## Expression or identity, as a picture" in report and "expressions-map.png" in report
    for row in ("random (resnet18)", "simclr/backbone.pt", "sslfer/backbone.pt"):
        assert re.search(rf"\| {re.escape(row)} \| [+-]\d\.\d{{3}} \| [+-]\d\.\d{{3}} \|", report), row
    assert len(list((out / "embed").glob("clip-*-time.png"))) == 1
    knn = json.loads((out / "reports" / "identities" / "metrics.json").read_text())
    assert all(r["fr_knn"]["people"] == 3 for r in knn["checkpoints"].values())
