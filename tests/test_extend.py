"""Extending the project from outside the package, as docs/architecture.md's "How to add" recipes say: a
positive-pair piece, an SSL method and an evaluation dataset, each registered by a module of the user's and run
end to end on tiny data (in-process, and through SSLFER_PLUGINS in a real command)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import build, face_image

ROOT = Path(__file__).resolve().parents[1]
TINY = ["arch=resnet18", "proj_hidden=64", "batch_size=4", "image_size=32", "workers=0"]

# ---------------------------------------------------------------- the user's modules
MIRROR = '''
from train.positives import PositivePair, register_positive


@register_positive("mirror")
class Mirror(PositivePair):
    """The positive is its frame mirrored left to right."""

    def edit_images(self, images, anchors, rng, stats):
        m = len(anchors)
        for i in range(m):
            images[m + i] = images[m + i][:, ::-1].copy()
'''

ALIGN = '''
import torch
import torch.nn.functional as F

from train.methods import SSLMethod, register_method
from train.methods.base import ProjectedBackbone


@register_method("align")
class Align(SSLMethod):
    """Pull each view's projection towards its positive's (no negatives): 2 - 2 cos."""

    def __init__(self, cfg):
        super().__init__()
        self.net = ProjectedBackbone(cfg.arch, cfg.proj_hidden, cfg.proj_dim)

    @property
    def backbone(self):
        return self.net.backbone

    def forward(self, views, batch):
        z = F.normalize(self.net(views).float(), dim=1)
        a, b = z.chunk(2)
        loss = (2 - 2 * (a * b).sum(1)).mean()
        top1 = ((a @ b.T).argmax(1) == torch.arange(len(a))).float().mean()
        return {"loss": loss, "l1": loss.detach(), "top1": top1}
'''

TWO_FOLDERS = '''
from pathlib import Path

from eval.datasets import Dataset, Item, carve
from eval.registry import EvalDataset, register_dataset


def smiles(root, cfg):
    """<root>/smile/*.png and <root>/frown/*.png; a fifth of each for the test."""
    items = [Item(str(p), label) for label, name in enumerate(("frown", "smile"))
             for p in sorted((Path(root) / name).glob("*.png"))]
    train, test = carve(items, 0.2, cfg.seed, "test")
    train, val = carve(train, cfg.val_fraction, cfg.seed, "val")
    return Dataset("smiles", ["frown", "smile"], {"train": train, "val": val, "test": test})


register_dataset(EvalDataset("smiles", smiles, "<root>/smile/*.png and <root>/frown/*.png",
                             columns=(("Smiles F1", "linear_expr", "f1", "pct"),)))
'''


def plugin(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return path


@pytest.fixture(scope="module")
def shards(good_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("extend_shards")
    build(good_corpus, out)
    return out


def config(*overrides):
    from sslfer.config import load_config
    from train.settings import TrainConfig, preset_path

    return load_config(TrainConfig, [preset_path("simclr")], [*TINY, *overrides])


def run_command(module: str, args: list[str], plugins: list[Path]) -> subprocess.CompletedProcess:
    env = {**os.environ, "SSLFER_PLUGINS": ",".join(str(p) for p in plugins)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, env=env)


# ---------------------------------------------------------------- (a) a positive-pair piece
def test_a_positive_pair_piece_of_the_users_makes_the_positives_and_trains(shards, tmp_path):
    from sslfer.plugins import load_plugins
    from sslfer.shards.index import ShardIndex
    from train.data import BatchStream, anchors_per_step
    from train.plan import steps_per_epoch

    load_plugins(str(plugin(tmp_path, "mirror", MIRROR)))
    cfg = config("positives=mirror")
    index = ShardIndex.build(shards)
    stream = BatchStream(index, cfg, 0, 1, 0, 1, steps_per_epoch(len(index), anchors_per_step(cfg), 1))
    images = stream.batch(0)["images"]  # [first views; positives], N x 3 x H x W, before augmentation
    m = len(images) // 2
    np.testing.assert_array_equal(images[m:], images[:m, :, :, ::-1])  # no TimeAug: the same frame, mirrored

    done = run_command("train", [str(shards), str(tmp_path / "run"), "--preset", "simclr", *TINY, "max_steps=2",
                                 "positives=mirror"], [tmp_path / "mirror.py"])
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
    bad = run_command("train", [str(shards), str(tmp_path / "run2"), *TINY, "positives=nosuch"], [])
    assert bad.returncode == 2 and "no piece named nosuch" in bad.stderr


# ---------------------------------------------------------------- (b) an SSL method
def test_an_ssl_method_of_the_users_trains_exports_and_evaluates(shards, tmp_path):
    from sslfer import load_encoder

    done = run_command("train", [str(shards), str(tmp_path / "run"), "--preset", "simclr", *TINY, "max_steps=3",
                                 "method=align", "log_every=1"], [plugin(tmp_path, "align", ALIGN)])
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(0 <= r["loss"] <= 4 for r in rows)
    net = load_encoder(str(tmp_path / "run" / "backbone.pt"))
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
    unknown = run_command("train", [str(shards), str(tmp_path / "run2"), *TINY, "method=align"], [])
    assert unknown.returncode == 2 and "method=align: expected one of" in unknown.stderr
    missing = run_command("train", [str(shards), str(tmp_path / "run3"), *TINY], [tmp_path / "nosuch.py"])
    assert missing.returncode == 2 and "error: SSLFER_PLUGINS: cannot import" in missing.stderr.splitlines()[-1]


# ---------------------------------------------------------------- (c) an evaluation dataset
def test_an_evaluation_dataset_of_the_users_is_a_command_and_a_table1_column(photos, tmp_path):
    data = tmp_path / "smiles"
    for label, photo in (("frown", "astronaut"), ("smile", "hopper")):
        (data / label).mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(data / label / f"{i}.png"), cv2.cvtColor(face_image(photos[photo], i), cv2.COLOR_RGB2BGR))
    plugins = [plugin(tmp_path, "smiles", TWO_FOLDERS)]
    args = ["smiles", str(data), "--ckpt", "random", "--report", str(tmp_path / "rep"), "arch=resnet18",
            "image_size=32", "epochs=2", "batch_size=8", "workers=1", "gradcam_per_class=0", "protocol=linear",
            f"cache_dir={tmp_path / 'cache'}"]
    done = run_command("eval", args, plugins)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["dataset"] == "smiles" and metrics["images"]["test"] == 4
    joined = run_command("eval", ["report", str(tmp_path / "rep")], plugins)
    assert joined.returncode == 0 and "| checkpoint | Smiles F1 |" in joined.stdout
    helped = run_command("eval", ["--help"], plugins)
    assert "smiles: <root>/smile/*.png" in helped.stdout


# ---------------------------------------------------------------- (d) a shard field
MOUTH = '''
import numpy as np

from sslfer.face_geometry import mouth_opening
from sslfer.shards.schema import FrameField, register_frame_field

register_frame_field(FrameField(
    "mouth_open", "mouth_open.npy", "float32 [n] inner-lip gap in inter-ocular distances",
    derive=lambda faces: mouth_opening(faces["landmarks"].astype(np.float32)).astype(np.float32)))
'''


def test_a_frame_field_of_the_users_is_packed_windowed_and_read(good_corpus, tmp_path):
    from sslfer.face_geometry import mouth_opening
    from sslfer.plugins import load_plugins
    from sslfer.shards.index import ClipReader, ShardIndex
    from sslfer.shards.schema import FRAME_FIELDS, ClipSample, shard_paths
    from sslfer.shards.tar import iter_tar_samples

    shards = tmp_path / "shards"
    build(good_corpus, shards)
    try:
        load_plugins(str(plugin(tmp_path, "mouth", MOUTH)))
        again = build(good_corpus, shards)  # only the pack step reruns
        assert {k: v for k, v in again["work_done"].items() if k != "content_read"} == \
            {"faces": 0, "region": 0, "faceswap": 0, "pack": 1}
        clips = [ClipSample.from_wds(s) for path in shard_paths(shards) for s in iter_tar_samples(path)]
        index = ShardIndex.build(shards)
        reader = ClipReader(index, 8)  # the trainer's reader
        assert len(clips) == len(index) > 0
        for clip in clips:
            want = mouth_opening(clip.landmarks.astype(np.float32))
            assert clip.mouth_open.shape == (len(clip),)
            np.testing.assert_allclose(clip.mouth_open, want, rtol=1e-6)
            np.testing.assert_array_equal(reader.get(index.keys.index(clip.key)).mouth_open, clip.mouth_open)
            windows = clip.windows(1.0)
            assert len(windows) > 1
            assert np.array_equal(np.concatenate([w.mouth_open for w in windows]), clip.mouth_open)
            assert all(len(w.mouth_open) == len(w.time) for w in windows)
        assert build(good_corpus, shards)["work_done"]["pack"] == 0  # a rerun with the field does nothing
    finally:
        FRAME_FIELDS.pop("mouth_open", None)
