"""Using a pretrained backbone: `make embed`, the README's Python example, the export and the figures."""
import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from preprocess.synthetic import make_expression_sets

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["arch=resnet18", "image_size=64"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """backbone.pt / .safetensors / .json as the trainer writes them, from a resnet18 model."""
    from train.checkpoint import export_backbone
    from train.methods.base import ProjectedBackbone

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run")
    model = ProjectedBackbone("resnet18", 64, 32)
    export_backbone(model, folder / "backbone.pt", "resnet18", 64, {"trained_with": {"preset": "sslfer"}})
    return folder, model


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    expressions, _ = make_expression_sets(tmp_path_factory.mktemp("sets"), identities=2, per_class=6)
    return expressions


def test_the_readme_example_runs_and_equals_the_evaluation_features(exported, labelled, tmp_path):
    from eval.probe import extract_features
    from sslfer.encoder import load_encoder
    from sslfer.stills import Still, aligned_faces

    folder, _ = exported
    text = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- embed-example -->\n```python\n(.*?)```", text, re.S).group(1)
    images = sorted(labelled.rglob("*.jpg"))[:3]
    code = (code.replace('"runs/sslfer/backbone.pt"', repr(str(folder / "backbone.pt")))
            .replace('["face1.jpg", "face2.jpg"]', repr([str(p) for p in images])))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    got = scope["embeddings"].numpy()
    assert got.shape == (3, 512)
    # the evaluation's features of the same images: its alignment cache and feature extraction
    faces, how = aligned_faces([Still(str(p)) for p in images], tmp_path, 1, "t")
    assert how == ["landmarks"] * 3
    want = extract_features(load_encoder(str(folder / "backbone.pt")), faces, 112, "cpu")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_embed_lists_bad_inputs_embeds_the_rest_and_does_not_depend_on_batch_size(exported, labelled, tmp_path,
                                                                                   capsys):
    from eval.__main__ import main

    folder, _ = exported
    data = tmp_path / "data"
    for p in sorted(labelled.rglob("*.jpg")):
        dst = data / p.parent.name / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(p.read_bytes())
    (data / "smile" / "broken.jpg").write_text("not an image")
    cv2.imwrite(str(data / "neutral" / "wall_0001.jpg"), np.full((160, 160, 3), 128, np.uint8))  # no face
    (data / "notes.txt").write_text("not an input")
    n_faces = len(list(labelled.rglob("*.jpg")))
    tables = []
    # in one go in this process, then in chunks of 5 images aligned by 2 worker processes, 7 faces per batch
    for batch, chunk, workers in ((64, 4096, 0), (7, 5, 2)):
        out = tmp_path / f"b{batch}" / "emb.parquet"
        assert main(["embed", str(data), "--ckpt", str(folder / "backbone.pt"), "--ckpt", "random", "--out",
                     str(out), f"batch_size={batch}", f"chunk={chunk}", f"workers={workers}", *SMALL]) == 0
        t = pq.read_table(out).to_pylist()
        assert len(t) == 2 * n_faces  # two checkpoints
        tables.append(t)
        rejects = {Path(r["source"]).name: r["reason"] for r in csv.DictReader(open(out.with_suffix(".rejects.csv")))}
        assert rejects == {"broken.jpg": "unreadable image", "wall_0001.jpg": "no face found"}
    printed = capsys.readouterr().out
    assert "rejected      2" in printed and "silhouette" in printed
    a, b = tables
    key = lambda r: (r["checkpoint"], r["source"])  # row order: by chunk, then checkpoint
    a, b = sorted(a, key=key), sorted(b, key=key)
    assert [key(r) for r in a] == [key(r) for r in b]
    np.testing.assert_allclose([r["embedding"] for r in a], [r["embedding"] for r in b], rtol=1e-4, atol=1e-5)
    row = a[0]
    assert row["label"] in ("neutral", "smile", "surprise") and row["identity"].startswith("person")
    assert len(row["embedding"]) == 512 and len(row["box"]) == 4 and row["box"][2] > 20
    summary = json.loads(out.with_suffix(".json").read_text())
    assert len(summary["silhouette"]) == 2 and "random (resnet18)" in summary["silhouette"]
    assert all(-1 <= v <= 1 for s in summary["silhouette"].values() for v in s.values())
    assert out.with_name("emb-map.png").stat().st_size > 10_000


def test_bad_embed_input_is_one_line_before_any_alignment(tmp_path, labelled, capsys):
    from eval.__main__ import main

    assert main(["embed", str(labelled), "--ckpt", "missing.pt", "--out", str(tmp_path / "e.parquet")]) == 2
    assert main(["embed", str(labelled), "--ckpt", "random", "--out", str(tmp_path / "e.csv")]) == 2
    assert main(["embed", str(tmp_path / "nothing"), "--ckpt", "random", "--out", str(tmp_path / "e.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert not (tmp_path / "e.parquet").exists()


def test_a_video_is_sampled_as_make_shards_samples_it_and_its_curve_follows_the_expression(tmp_path):
    """A synthetic face that holds still, neutral for 2 s, surprised for 2 s, neutral again: rows at the shards'
    sampling grid with true timestamps, and the embedding's distance to the first frame rises while the face is
    surprised and falls back after (a random backbone sees the warped face; a real clip's head motion and light
    would add their own movement)."""
    from eval.__main__ import main
    from eval.embed_plots import time_curves
    from preprocess.synthetic import encode, people

    person = people(1, seed=3)[0]
    faces = {e: cv2.resize(person.face({e: 1.0} if e != "neutral" else {}), (224, 224))
             for e in ("neutral", "surprise")}
    schedule = ["neutral"] * 50 + ["surprise"] * 50 + ["neutral"] * 50  # 25 fps
    video = encode([faces[e] for e in schedule], tmp_path / "clip.mp4", 25, (224, 224))
    out = tmp_path / "v.parquet"
    assert main(["embed", str(video), "--ckpt", "random", "--out", str(out), *SMALL]) == 0
    rows = pq.read_table(out).to_pylist()
    times = np.array([r["timestamp"] for r in rows])
    assert len(rows) >= 22 and np.all(np.diff(times) > 0) and all(r["frame"] >= 0 for r in rows)
    np.testing.assert_allclose(times * 25 / 6, np.round(times * 25 / 6), atol=0.13)  # the 25/6 fps grid
    expr = np.array([schedule[min(int(round(t * 25)), 149)] for t in times])
    _, dist = time_curves(np.array([r["embedding"] for r in rows]))
    surprised, neutral = expr == "surprise", expr == "neutral"
    assert surprised.sum() >= 6 and neutral.sum() >= 12
    assert dist[surprised].min() > 3 * dist[neutral].max()
    assert out.with_name("v-clip-time.png").stat().st_size > 10_000


def test_export_round_trips_bit_exactly_and_says_how_to_feed_it(exported):
    from safetensors.torch import load_file

    folder, model = exported
    pt = torch.load(folder / "backbone.pt", weights_only=True)
    st = load_file(str(folder / "backbone.safetensors"))
    assert pt.keys() == st.keys()
    assert all(torch.equal(pt[k], st[k]) for k in pt)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in st.items() if not k.startswith("fc."))
    card = json.loads((folder / "backbone.json").read_text())
    assert card["architecture"] == "resnet18" and card["feature_dim"] == 512
    assert card["input"]["centre_crop"] == [64, 64] and card["input"]["mean"] == [0.485, 0.456, 0.406]
    assert len(card["alignment_template_128px"]["xy"]) == 5 and card["trained_with"]["preset"] == "sslfer"


def test_timm_loads_the_export_without_this_repository(exported):
    timm = pytest.importorskip("timm")
    folder, model = exported
    net = timm.create_model("resnet18", pretrained=True, num_classes=0,
                            pretrained_cfg_overlay=dict(file=str(folder / "backbone.safetensors")))
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(x).numpy(), model.backbone(x).numpy(), rtol=1e-4, atol=1e-5)
