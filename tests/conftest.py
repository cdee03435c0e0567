import os
import shutil
import subprocess
from pathlib import Path

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
    from preprocess.config import load_config
    from preprocess.pipeline import build as run_build
    from preprocess.settings import ShardsConfig

    cfg = load_config(ShardsConfig, None, [f"workers={workers}", "region_weights=random", *overrides])
    return run_build(data, shards, cfg)
