"""Evaluation: metrics by hand, dataset loaders, checkpoint loading, protocols end to end on tiny data."""
import csv
import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch

from eval import metrics as M
from eval.settings import EvalConfig
from sslfer.config import load_config
from tests.conftest import SHARED, face_image as _face_image

TINY = ["arch=resnet18", "image_size=32", "epochs=2", "batch_size=8", "workers=1", "gradcam_per_class=1"]


def config(tmp_path, *overrides):
    return load_config(EvalConfig, None, [*TINY, f"cache_dir={tmp_path / 'cache'}", *overrides])


def test_macro_f1_and_accuracy_by_hand():
    y = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0])
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: 0
    np.testing.assert_allclose(M.per_class_f1(y, p, 3), [0.5, 0.8, 0.0])
    assert M.macro_f1(y, p, 3) == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert M.accuracy(y, p) == pytest.approx(0.6)
    assert M.confusion(y, p, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_ccc_and_rmse_by_hand():
    t = np.array([0.0, 1.0, 2.0])
    p = np.array([0.0, 1.0, 3.0])
    # means 1 and 4/3; var_t 2/3, var_p 14/9; cov 1; ccc = 2 / (2/3 + 14/9 + 1/9) = 6/7
    assert M.ccc(p, t) == pytest.approx(6 / 7)
    assert M.ccc(t, t) == pytest.approx(1.0)
    assert M.rmse(p, t) == pytest.approx(math.sqrt(1 / 3))
    loss = M.ccc_loss(torch.tensor([[0.0, 5.0], [1.0, 5.0], [3.0, 6.0]]),
                      torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 2.0]]))
    assert float(loss) == pytest.approx(((1 - 6 / 7) + (1 - M.ccc([5, 5, 6], [1, 1, 2]))) / 2, rel=1e-5)


def test_balanced_softmax_by_hand():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    counts = torch.tensor([90.0, 10.0])
    labels = torch.tensor([1, 0])
    want = 0.0
    for z, y in zip(logits.tolist(), labels.tolist()):
        a = [z[0] + math.log(90), z[1] + math.log(10)]
        want += -(a[y] - math.log(math.exp(a[0]) + math.exp(a[1]))) / 2
    assert float(M.balanced_softmax_loss(logits, labels, counts)) == pytest.approx(want, rel=1e-6)


def test_affectnet_loader_reads_the_csv_format(affectnet_dir):
    from eval.datasets import affectnet

    ds = affectnet(affectnet_dir, 8, 0.25, 0)
    assert ds.classes[1] == "happy" and len(ds.classes) == 8
    assert len(ds.splits["test"]) == 9  # 8 + contempt
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == 25
    assert ds.skipped == {"image listed but missing": 2, "class 9 not used": 2, "label out of range": 2}
    contempt = [it for it in ds.splits["test"] if it.label == 7][0]
    assert math.isnan(contempt.valence)  # -2 means no V/A
    ds7 = affectnet(affectnet_dir, 7, 0.25, 0)
    assert len(ds7.splits["test"]) == 8 and ds7.skipped["class 7 not used"] == 2
    train_sources = {it.source for it in ds.splits["train"]}
    assert not train_sources & {it.source for it in ds.splits["val"]}


def test_affectnet_end_to_end_both_protocols_and_tasks(affectnet_dir, tmp_path):
    from eval.__main__ import main

    report = tmp_path / "rep"
    code = main(["affectnet", str(affectnet_dir), "--ckpt", "random", "--report", str(report), *TINY,
                 f"cache_dir={tmp_path / 'cache'}", "task=both", "protocol=both", "classes=7"])
    assert code == 0
    m = json.loads((report / "metrics.json").read_text())
    row = m["checkpoints"]["random (resnet18)"]
    assert set(row) == {"linear_expr", "linear_va", "finetune_expr", "finetune_va"}
    t = row["linear_expr"]["test"]
    assert t["n"] == 8 and 0 <= t["f1"] <= 1 and np.array(t["confusion"]).sum() == 8
    assert -1 <= row["finetune_va"]["test"]["v_ccc"] <= 1 and row["finetune_va"]["test"]["a_rmse"] >= 0
    assert m["alignment"]["test"].get("landmarks", 0) >= 6  # the made-up faces are found
    for png in ("curves.png", "gradcam.png"):
        assert (report / png).stat().st_size > 1000
    assert "| random (resnet18) |" in (report / "report.md").read_text()


def test_alignment_is_cached(affectnet_dir, tmp_path):
    from eval.datasets import affectnet
    from sslfer.stills import aligned_faces

    items = affectnet(affectnet_dir, 8, 0.25, 0).splits["test"]
    a, how = aligned_faces(items, tmp_path, 1, "t")
    files = list(tmp_path.glob("faces-*.npy"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    b, how2 = aligned_faces(items, tmp_path, 1, "t")
    assert files[0].stat().st_mtime_ns == mtime and np.array_equal(a, b) and how == how2


def test_checkpoint_formats(tmp_path):
    import torchvision

    from sslfer.backbone import CheckpointError, load_backbone
    from train.methods.base import ProjectedBackbone

    model = ProjectedBackbone("resnet18", 64, 16)
    torch.save({"model": model.state_dict(), "config": {"arch": "resnet18"}}, tmp_path / "last.pt")
    name, net, width = load_backbone(str(tmp_path / "last.pt"))
    assert width == 512 and "resnet18" in name
    torch.testing.assert_close(net.conv1.weight, model.backbone.conv1.weight)
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    torch.testing.assert_close(load_backbone(str(tmp_path / "tv.pth"))[1].layer1[0].conv1.weight,
                               tv.layer1[0].conv1.weight)
    official = {f"module.backbone.{k}": v for k, v in tv.state_dict().items()}
    official.update({"module.projector.0.weight": torch.zeros(3, 3)})
    torch.save({"state_dict": official}, tmp_path / "official.pth")
    assert load_backbone(str(tmp_path / "official.pth"))[2] == 512
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_backbone(str(tmp_path / "junk.pt"))
    partial = {k: v for k, v in tv.state_dict().items() if not k.startswith("layer2.0.conv1")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="does not fit resnet18"):
        load_backbone(str(tmp_path / "partial.pth"))
    with pytest.raises(CheckpointError, match="no such file"):
        load_backbone(str(tmp_path / "nope.pt"))


def test_knn_and_verification_by_hand():
    from sslfer.knn import knn_accuracy, knn_split, verification_accuracy

    ids = ["a"] * 10 + ["b"] * 10 + ["c"] * 3
    feats = np.array([[1.0, 0.1 * i] for i in range(10)] + [[0.1 * i, 1.0] for i in range(10)] +
                     [[-1.0, 0.0]] * 3)
    gallery, probe, people = knn_split(ids, 5, 0.7, 0)
    assert people == ["a", "b"] and len(gallery) == 14 and len(probe) == 6
    assert knn_accuracy(feats, ids, gallery, probe) == 1.0
    sim = np.array([0.9, 0.8, 0.2, 0.1] * 5)
    same = np.array([True, True, False, False] * 5)
    assert verification_accuracy(sim, same, np.arange(20) % 10) == 1.0
    # two folds; the threshold learnt on one is scored on the other
    sim = np.array([0.9, 0.6, 0.5, 0.1, 0.9, 0.7, 0.65, 0.2])
    same = np.array([True, True, False, False, True, True, False, False])
    fold = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # fold 0 learns t in (0.5, 0.6]: on fold 1 0.65 >= 0.6 is a false accept (3/4); fold 1 learns t = 0.7:
    # on fold 0 0.6 is a false reject (3/4)
    assert verification_accuracy(sim, same, fold) == pytest.approx(0.75)

def test_speaker_retrieval_across_clips_by_hand():
    from sslfer.knn import cross_group_retrieval

    # speaker a: clips 0 and 1; b: clip 2 only (gallery, never a query); c: clips 3 and 4
    feats = np.array([[1, 0], [1, 0.1], [0, 1], [0.9, 0.1], [0, 1]], np.float32)
    speakers, clips = np.array(list("aabcc")), np.arange(5)
    # a0 -> a1 (right); a1 -> c3 (cos 0.99998 > a0's 0.995: wrong); c3 -> a1 (wrong); c4 -> b2 (wrong)
    # a: 1/2, c: 0/2 -> 0.25; chance: one frame of the four in each query's gallery is its speaker's
    assert cross_group_retrieval(feats, speakers, clips) == pytest.approx((0.25, 0.25))
    # the own clip never answers: a's clip 0 holds two equal frames, each the other's nearest but in the same
    # clip; b's frame is nearer than a's other clip, so every query misses
    feats2 = np.array([[1, 0], [1, 0], [0, 1], [0.9, 0.1]], np.float32)
    assert cross_group_retrieval(feats2, np.array(list("aaab")), np.array([0, 0, 1, 2]))[0] == 0.0
    with pytest.raises(ValueError, match="no label is in two groups"):
        cross_group_retrieval(feats[:3], np.array(list("abc")), np.arange(3))



def test_lfw_pairs_folds_are_contiguous_blocks(tmp_path):
    from sslfer.knn import read_pairs

    lines = ["10\t2"] + [f"A\t1\t{i + 2}" if i % 4 < 2 else f"A\t1\tB\t{i}" for i in range(40)]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    folds = [p[3] for p in read_pairs(tmp_path / "pairs.txt", tmp_path)]
    assert folds == [i // 4 for i in range(40)]


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    from eval.__main__ import main

    (tmp_path / "empty").mkdir()
    assert main(["fer2013", str(tmp_path / "empty"), "--ckpt", "random"]) == 2
    assert main(["lfw", str(tmp_path / "missing"), "--ckpt", "random"]) == 2
    assert main(["folder", str(tmp_path / "empty"), "--ckpt", "random"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)


@pytest.mark.parametrize("bad", [["protocol=freeze"], ["device=gpu"], ["task=valence"], ["classes=6"],
                                 ["val_fraction=1.5"], ["gradcam_layer=layer5"], ["device=cuda"],
                                 ["--ckpt", "missing.pt"]])
def test_bad_options_and_checkpoints_fail_before_any_alignment(bad, affectnet_dir, tmp_path, capsys):
    """One line, exit 2, and nothing aligned or extracted first: a typo in the last --ckpt of a long list is
    found before the hours of alignment and of evaluating the others."""
    import torch

    from eval.__main__ import main

    if bad == ["device=cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    args = ["affectnet", str(affectnet_dir), "--ckpt", "random", "--report", str(tmp_path / "rep"), *TINY,
            f"cache_dir={tmp_path / 'cache'}"]
    assert main([*args, *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    if bad[0].startswith(("protocol", "device=gpu", "task", "classes", "gradcam")):
        assert "expected one of" in err[0]  # the allowed values are named
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    assert not (tmp_path / "rep").exists()


def test_rows_done_are_kept_when_a_later_checkpoint_fails(affectnet_dir, tmp_path, monkeypatch):
    """metrics.json and the report are rewritten after each checkpoint."""
    from eval import run
    from eval.__main__ import main

    real = run.Evaluator.features

    def fails_on_the_second(self, spec, backbone, split):
        if spec == "imagenet-typo-made-later":
            raise ValueError("the second checkpoint broke mid-run")
        return real(self, spec, backbone, split)

    monkeypatch.setattr(run.Evaluator, "features", fails_on_the_second)
    monkeypatch.setattr(run, "check_backbones", lambda specs, cfg: None)
    real_backbone = run.Evaluator.backbone
    monkeypatch.setattr(run.Evaluator, "backbone", lambda self, spec, name: real_backbone(
        self, "random" if spec == "imagenet-typo-made-later" else spec, name))
    report = tmp_path / "rep"
    code = main(["affectnet", str(affectnet_dir), "--ckpt", "random", "--ckpt", "imagenet-typo-made-later",
                 "--report", str(report), *TINY, f"cache_dir={tmp_path / 'cache'}", "protocol=linear",
                 "gradcam_per_class=0"])
    assert code == 2
    m = json.loads((report / "metrics.json").read_text())
    assert list(m["checkpoints"]) == ["random (resnet18)"] and "linear_expr" in m["checkpoints"]["random (resnet18)"]
    assert "| random (resnet18) |" in (report / "report.md").read_text()


def test_grad_cam_localises_at_the_demo_size(photos):
    """At 32 px the last stage's map is 1x1, so a heat map taken there is uniform; auto picks a stage with an
    8x8 map, and on a face its heat map varies. At 112 px auto takes layer3 (7x7)."""
    import cv2
    import torch
    import torchvision

    from eval.gradcam import grad_cam, map_side, pick_layer

    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    head = torch.nn.Linear(512, 3)
    face = cv2.resize(photos["astronaut"], (128, 128))[None]
    uniform, _ = grad_cam(net, head, face, 32, "cpu", "layer4")
    assert uniform.std() < 1e-6
    cam, _ = grad_cam(net, head, face, 32, "cpu", "auto")
    assert pick_layer("auto", 32) == "layer1" and map_side("layer1", 32) == 8
    assert cam.std() > 0.05 and cam.max() == pytest.approx(1.0)
    assert pick_layer("auto", 112) == "layer3" and map_side("layer3", 112) == 7 and pick_layer("auto", 224) == "layer4"


def test_report_join(tmp_path):
    from eval.report import join

    for name, ds, section in (("a", "fer2013", "linear_expr"), ("b", "lfw", "fr_knn")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"dataset": ds, "checkpoints": {"ck": {section: {"test": {"f1": 0.5, "acc": 0.25}} if ds == "fer2013"
                                                   else {"acc": 0.4}}}}))
    text = join([tmp_path / "a", tmp_path / "b"])
    assert "## fer2013" in text and "| ck | 50.0% | 25.0% |" in text and "| ck | 40.0% |" in text


@pytest.mark.skipif(not (SHARED / "fer2013").is_dir(), reason="../shared/data not present")
def test_real_fer2013_and_lfw(tmp_path):
    from eval.__main__ import main

    common = [*TINY, f"cache_dir={tmp_path / 'cache'}", "protocol=linear", "epochs=3"]
    assert main(["fer2013", str(SHARED / "fer2013"), "--ckpt", "random", "--report", str(tmp_path / "fer"),
                 "max_images=1500", *common]) == 0
    m = json.loads((tmp_path / "fer" / "metrics.json").read_text())
    t = m["checkpoints"]["random (resnet18)"]["linear_expr"]["test"]
    assert t["n"] == 1500 and 0 < t["acc"] < 1
    assert main(["lfw", str(SHARED / "lfw-20"), "--ckpt", "random", "--report", str(tmp_path / "lfw"),
                 *common]) == 0
    knn = json.loads((tmp_path / "lfw" / "metrics.json").read_text())["checkpoints"]["random (resnet18)"]["fr_knn"]
    assert knn["people"] == 62 and 1 / 62 < knn["acc"] < 1


def _fake_run(root, seed, arch="resnet18"):
    import torchvision

    torch.manual_seed(seed)
    path = root / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save(getattr(torchvision.models, arch)().state_dict(), path)
    return path


def _linear(affectnet_dir, tmp_path, report, ckpts, *extra):
    from eval.__main__ import main

    flags = [x for c in ckpts for x in ("--ckpt", str(c))]
    assert main(["affectnet", str(affectnet_dir), *flags, "--report", str(tmp_path / report), *TINY,
                 f"cache_dir={tmp_path / 'cache'}", "protocol=linear", "gradcam_per_class=0", *extra]) == 0
    return json.loads((tmp_path / report / "metrics.json").read_text())["checkpoints"]


def test_two_runs_last_pt_get_two_rows_and_scores_do_not_depend_on_order(affectnet_dir, tmp_path):
    a = _fake_run(tmp_path / "runs" / "simclr", 1)
    b = _fake_run(tmp_path / "runs" / "sslfer", 2)
    c = _fake_run(tmp_path / "other" / "sslfer", 3)  # the same run name elsewhere: one more folder in its name
    forward = _linear(affectnet_dir, tmp_path, "f", ["random", a, b, c, b])
    assert list(forward) == ["random (resnet18)", "simclr/last.pt", "runs/sslfer/last.pt",
                             "other/sslfer/last.pt"]
    backward = _linear(affectnet_dir, tmp_path, "b", [c, b, a, "random"])
    for name, row in forward.items():
        assert backward[name]["linear_expr"]["test"]["f1"] == row["linear_expr"]["test"]["f1"], name
        assert backward[name]["linear_expr"]["test"]["confusion"] == row["linear_expr"]["test"]["confusion"]


def test_feature_caches_know_the_architecture_and_seed(affectnet_dir, tmp_path):
    r18 = _linear(affectnet_dir, tmp_path, "a", ["random"])
    n = len(list((tmp_path / "cache").glob("features-*.npy")))
    r34 = _linear(affectnet_dir, tmp_path, "b", ["random"], "arch=resnet34")
    assert list(r18) == ["random (resnet18)"] and list(r34) == ["random (resnet34)"]
    assert len(list((tmp_path / "cache").glob("features-*.npy"))) == 2 * n  # not the resnet18 features again
    _linear(affectnet_dir, tmp_path, "c", ["random"], "seed=5")
    assert len(list((tmp_path / "cache").glob("features-*.npy"))) == 3 * n


def test_probe_seeds_report_mean_and_spread(affectnet_dir, tmp_path):
    row = _linear(affectnet_dir, tmp_path, "p", ["random"], "probe_seeds=3")["random (resnet18)"]["linear_expr"]
    per = row["test_per_seed"]
    assert row["seeds"] == [0, 1, 2] and len(per) == 3
    assert row["test"]["f1"] == pytest.approx(np.mean([p["f1"] for p in per]))
    assert row["test_std"]["f1"] == pytest.approx(np.std([p["f1"] for p in per]))
    single = _linear(affectnet_dir, tmp_path, "q", ["random"])["random (resnet18)"]["linear_expr"]
    assert single["test"]["f1"] == per[0]["f1"]  # the first repeat is exactly the single-seed run
    assert len({p["f1"] for p in per}) > 1 or len({p["acc"] for p in per}) > 1  # the heads differ


def test_unreadable_images_are_left_out_and_counted(affectnet_dir, tmp_path):
    copy = tmp_path / "affectnet"
    shutil.copytree(affectnet_dir, copy)
    bad = sorted((copy / "Manually_Annotated_Images").rglob("validation_*.jpg"))[0]
    bad.write_text("not an image")
    from eval.__main__ import main

    assert main(["affectnet", str(copy), "--ckpt", "random", "--report", str(tmp_path / "r"), *TINY,
                 f"cache_dir={tmp_path / 'cache'}", "protocol=linear", "gradcam_per_class=0"]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["skipped"]["unreadable image (test)"] == 1
    assert m["images"]["test"] == 8 and m["checkpoints"]["random (resnet18)"]["linear_expr"]["test"]["n"] == 8


def test_report_shows_the_spread_over_probe_seeds():
    from eval.report import table

    row = {"ck": {"linear_expr": {"test": {"f1": 0.5, "acc": 0.25}, "test_std": {"f1": 0.02, "acc": 0.01}}}}
    assert "| ck | 50.0% ± 2.0 | 25.0% ± 1.0 |" in table(row)


def test_rafdb_layout_is_read_as_distributed(tmp_path, photos):
    from eval.datasets import RAFDB_CLASSES, rafdb

    root = tmp_path / "RAF-DB" / "basic"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "Image" / "aligned").mkdir(parents=True)
    lines = []
    for split, n in (("train", 12), ("test", 6)):
        for i in range(1, n + 1):
            name = f"{split}_{i:05d}.jpg"
            label = 4 if i % 2 else 7  # happiness, neutral
            lines.append(f"{name} {label}")
            img = _face_image(photos[list(photos)[i % 2]], i, 100)
            cv2.imwrite(str(root / "Image" / "aligned" / f"{split}_{i:05d}_aligned.jpg"), img[..., ::-1])
    lines += ["test_09999.jpg 3", "train_00100.jpg 9"]  # missing image; label out of range
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    ds = rafdb(root, 0.25, 0)
    assert ds.classes == RAFDB_CLASSES and len(ds.splits["test"]) == 6
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == 12
    assert {it.label for it in ds.splits["test"]} == {3, 6}
    assert ds.skipped == {"image listed but missing": 1, "bad label line": 1}
    from eval.__main__ import main

    assert main(["rafdb", str(root), "--ckpt", "random", "--report", str(tmp_path / "r"), *TINY,
                 f"cache_dir={tmp_path / 'cache'}", "protocol=linear", "gradcam_per_class=0"]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["dataset"] == "rafdb" and m["checkpoints"]["random (resnet18)"]["linear_expr"]["test"]["n"] == 6


def test_fer2013_kaggle_csv_with_spaced_headers_and_val_folders(tmp_path):
    from eval.datasets import fer2013, image_folder

    pixels = " ".join(["128"] * 48 * 48)
    rows = [["emotion", " Usage", " pixels"]] + [[str(i % 7), u, pixels] for i, u in
                                                 enumerate(["Training"] * 8 + ["PrivateTest"] * 3 + ["PublicTest"] * 2)]
    with open(tmp_path / "icml_face_data.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    ds = fer2013(tmp_path, 0.1, 0.1, 0)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 8, "val": 3, "test": 2}
    assert "PublicTest as the test set" in ds.notes[0]
    root = tmp_path / "folders"
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for c in ("happy", "sad"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(root / split / c / f"{i}.jpg"), np.full((48, 48, 3), 100, np.uint8))
    ds = image_folder(root, "x", 0.5, 0.5, 0)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 12, "val": 4, "test": 6}
    assert any("validation split" in n for n in ds.notes)


def test_affectnet_landmarks_align_without_the_detector(tmp_path, photos, monkeypatch):
    from eval.datasets import affectnet_points
    from sslfer import stills
    from sslfer.face_geometry import LEFT_EYE, MOUTH_CORNERS, NOSE_TIP, RIGHT_EYE, five_points

    img = _face_image(photos[list(photos)[0]], 3, 200)
    path = tmp_path / "face.jpg"
    cv2.imwrite(str(path), img[..., ::-1])
    lm = stills._landmarks(img)
    detected, how, _ = stills.align_one(stills.Still(str(path)))
    assert how == "landmarks"
    # AffectNet's 68-point layout carrying the same eye, nose and mouth positions
    p68 = np.zeros((68, 2))
    p68[36:42], p68[42:48] = lm[RIGHT_EYE].mean(0), lm[LEFT_EYE].mean(0)
    p68[30], p68[48], p68[54] = lm[NOSE_TIP], lm[MOUTH_CORNERS[0]], lm[MOUTH_CORNERS[1]]
    points = affectnet_points(";".join(f"{v:.3f}" for v in p68.ravel()))
    np.testing.assert_allclose(np.array(points).reshape(5, 2), five_points(lm), atol=0.01)
    assert affectnet_points("") is None and affectnet_points("1;2;x") is None
    monkeypatch.setattr(stills, "_landmarks", lambda rgb: pytest.fail("the detector ran"))
    given, how, _ = stills.align_one(stills.Still(str(path), box=(20, 20, 160, 160), points=points))
    assert how == "given landmarks"
    assert np.abs(given.astype(int) - detected.astype(int)).mean() < 2


def test_a_detected_face_outside_the_given_box_is_not_used(tmp_path, photos):
    from sslfer import stills

    img = _face_image(photos[list(photos)[0]], 3, 200)
    path = tmp_path / "face.jpg"
    cv2.imwrite(str(path), img[..., ::-1])
    items = [stills.Still(str(path), box=(30, 30, 140, 140)), stills.Still(str(path), box=(150, 150, 40, 40))]
    faces, how = stills.aligned_faces(items, tmp_path / "cache", 1, "t")
    assert how == ["landmarks", "box (detected face outside it) (placed by mean landmarks)"]


def test_report_join_refuses_mixed_settings_and_writes_table1(tmp_path):
    from eval.report import MixedSettings, join, write

    def report(name, dataset, section, values, **config):
        write(tmp_path / name, {"dataset": dataset, "classes": ["a"] * 7, "images": {"test": 10},
                                "config": {"epochs": 20, "image_size": 112, "seed": 0, "protocol": "linear",
                                           **config},
                                "checkpoints": {ck: {section: {"test": v} if section != "fr_knn" else v}
                                                for ck, v in values.items()}})
        return tmp_path / name

    a = report("a", "fer2013", "linear_expr", {"simclr/last.pt": {"f1": 0.3, "acc": 0.4}})
    b = report("b", "fer2013", "linear_expr", {"sslfer/last.pt": {"f1": 0.35, "acc": 0.45}})
    c = report("c", "fer2013", "linear_expr", {"sslfer/last.pt": {"f1": 0.5, "acc": 0.5}}, epochs=300)
    d = report("d", "lfw", "fr_knn", {"simclr/last.pt": {"acc": 0.6}, "sslfer/last.pt": {"acc": 0.5}})
    assert "Settings: classes 7, protocol linear, epochs 20, image_size 112" in (a / "report.md").read_text()
    text = join([a, b, d])
    assert "| checkpoint | Freeze-FER2013 Acc | FR-KNN ↓ |" in text
    assert "| simclr/last.pt | 40.0% | 60.0% |" in text and "| sslfer/last.pt | 45.0% | 50.0% |" in text
    with pytest.raises(MixedSettings, match="differ in epochs"):
        join([a, c])
    assert "| sslfer/last.pt | 50.0% |" in join([a, c], allow_mixed=True)
    from eval.__main__ import main

    assert main(["report", str(a), str(c)]) == 2


def test_align_none_uses_whole_images_and_its_own_cache(tmp_path, photos):
    from sslfer import stills

    img = _face_image(photos[list(photos)[0]], 3, 48)
    path = tmp_path / "face.jpg"
    cv2.imwrite(str(path), img[..., ::-1])
    items = [stills.Still(str(path))] * 2
    whole, how = stills.aligned_faces(items, tmp_path / "cache", 1, "t", "none")
    assert how == ["whole image"] * 2
    want = cv2.resize(cv2.imread(str(path))[..., ::-1], (128, 128), interpolation=cv2.INTER_AREA)
    assert np.array_equal(whole[0], want)
    aligned, how = stills.aligned_faces(items, tmp_path / "cache", 1, "t")
    assert how[0] != "whole image" and len(list((tmp_path / "cache").glob("faces-*.npy"))) == 2
    with pytest.raises(ValueError, match="align='dlib'"):
        stills.aligned_faces(items, tmp_path / "cache", 1, "t", "dlib")


def test_row_names_are_unique_per_file_and_kind(tmp_path):
    from eval.backbones import row_names

    a = tmp_path / "a" / "checkpoints" / "x.pt"
    b = tmp_path / "a" / "x.pt"
    c = tmp_path / "lr=0.1" / "checkpoints" / "best.pt"
    for p in (a, b, c):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"0")
    names = row_names([str(a), str(b), str(a), f"eyemouth={a}", str(c), "random", "eyemouth"], "resnet18")
    assert list(names) == [str(a), str(b), f"eyemouth={a}", str(c), "random", "eyemouth"]  # a given twice: one row
    assert len(set(names.values())) == len(names)
    assert names[str(c)] == "lr=0.1/best.pt" and names[f"eyemouth={a}"].startswith("eye-mouth descriptor")
    assert names["random"] == "random (resnet18)"
