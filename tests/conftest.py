import csv
import os
import shutil
import subprocess
from pathlib import Path

import cv2

import numpy as np
import pytest

from preprocess import synthetic

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    os.environ.setdefault("GLOG_minloglevel", "2")


@pytest.fixture(scope="session")
def photos():
    return synthetic.face_photos()


@pytest.fixture(scope="session")
def good_corpus(tmp_path_factory) -> Path:
    """Three speakers, four clips, VoxCeleb layout; one path with spaces and non-ASCII characters."""
    root = tmp_path_factory.mktemp("good") / "corpus"
    synthetic.make_corpus(root, speakers=3, clips_per_speaker=1, seconds=3.0)
    photos = synthetic.face_photos()
    synthetic.make_clip(root / "id00000" / "vidéo avec espaces" / "00002 é.mp4", photos["astronaut"],
                        seconds=4.0, fps=30, seed=7)
    return root


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory, photos) -> Path:
    """Every kind of bad input next to two good clips."""
    root = tmp_path_factory.mktemp("bad") / "corpus"
    good_a = synthetic.make_clip(root / "id1" / "v" / "good.mp4", photos["astronaut"], seconds=3.0)
    synthetic.make_clip(root / "id2" / "v" / "good.mp4", photos["hopper"], seconds=3.0)
    d = root / "id3" / "v"
    d.mkdir(parents=True)
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n")
    data = good_a.read_bytes()
    (d / "truncated_no_index.mp4").write_bytes(data[: len(data) // 2])  # moov atom at the end: unreadable
    fast = synthetic.make_clip(root / "tmp" / "fast.mp4", photos["hopper"], seconds=4.0,
                               extra=("-movflags", "+faststart"))
    fdata = fast.read_bytes()
    (d / "truncated_playable.mp4").write_bytes(fdata[: int(len(fdata) * 0.5)])  # index first: partly decodable
    shutil.rmtree(root / "tmp")
    blank = (np.full((240, 320, 3), 90, np.uint8) for _ in range(50))
    synthetic.encode(blank, d / "no_face.mp4", 25, (320, 240))
    synthetic.make_clip(d / "tiny_face.mp4", photos["astronaut"], size=(640, 480), face_scale=0.08)
    two = [np.hstack([a, b]) for a, b in zip(synthetic.render_frames(photos["astronaut"], 50, (240, 240), 1),
                                            synthetic.render_frames(photos["hopper"], 50, (240, 240), 2, 0.6))]
    synthetic.encode(two, root / "id4" / "v" / "two_faces.mp4", 25, (480, 240))
    src = synthetic.make_clip(root / "tmp" / "landscape.mp4", photos["hopper"], size=(320, 240))
    (root / "id5" / "v").mkdir(parents=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(root / "id5" / "v" / "rotated.mp4")], check=True)
    synthetic.make_clip(root / "id6" / "v" / "portrait.mp4", photos["astronaut"], size=(240, 400))
    shutil.rmtree(root / "tmp")
    (d / "dangling.mp4").symlink_to(d / "moved-away.mp4")
    unreadable = d / "unreadable.mp4"  # only unreadable when the tests do not run as root
    unreadable.write_bytes(data)
    unreadable.chmod(0)
    return root


def build(data, shards, *overrides, workers=1):
    """Run the batch stage in-process with test settings (random region weights)."""
    from preprocess.pipeline import build as run_build
    from preprocess.settings import ShardsConfig
    from sslfer.config import load_config

    cfg = load_config(ShardsConfig, None, [f"workers={workers}", "region_weights=random", *overrides])
    return run_build(data, shards, cfg)


def face_image(photo, seed, size=160):
    from preprocess.synthetic import render_frames

    return next(render_frames(photo, 1, (size, size), seed))


@pytest.fixture(scope="session")
def affectnet_dir(tmp_path_factory, photos):
    """AffectNet's layout and CSV format, with images made here (two photos, labels by photo)."""
    root = tmp_path_factory.mktemp("affectnet")
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
              "expression", "valence", "arousal"]
    names = list(photos)
    for split, n in (("training", 24), ("validation", 8)):
        rows = []
        for i in range(n):
            label = [1, 6][i % 2]  # happy, anger
            rel = f"{100 + i % 3}/{split}_{i}.jpg"
            p = root / "Manually_Annotated_Images" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), cv2.cvtColor(face_image(photos[names[i % 2]], i), cv2.COLOR_RGB2BGR))
            va = (0.8, 0.3) if label == 1 else (-0.6, 0.7)
            rows.append([rel, 10, 10, 140, 140, "", label, va[0] + 0.01 * i, va[1] - 0.01 * i])
        rows.append(["100/missing.jpg", 0, 0, 10, 10, "", 1, 0.1, 0.1])       # listed, not there
        rows.append([rows[0][0], 0, 0, 10, 10, "", 9, -2, -2])               # 'uncertain': dropped
        rows.append([rows[0][0], 0, 0, 10, 10, "", 12, 0, 0])                # out of range
        rows.append([rows[1][0], 0, 0, 10, 10, "", 7, -2, -2])               # contempt, no V/A
        with open(root / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([header] + rows)
    return root
