"""The batch stage end to end on clips the tests make: outputs, reruns, resume, parts, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from preprocess import synthetic
from sslfer.shards.schema import MANIFEST, REJECTS, ClipSample, decode_npy, read_manifest, shard_paths
from tests.conftest import SHARED, build

ROOT = Path(__file__).resolve().parents[1]


def read_samples(shards: Path) -> list[ClipSample]:
    urls = [str(p) for p in shard_paths(shards)]
    return [ClipSample.from_wds(s) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


@pytest.fixture(scope="module")
def built(good_corpus, tmp_path_factory):
    shards = tmp_path_factory.mktemp("shards")
    summary = build(good_corpus, shards)
    return shards, summary


def test_build_writes_shards_manifest_and_summary(built):
    shards, summary = built
    assert summary["clips"] == 4 and summary["clips_failed"] == 0
    manifest = read_manifest(shards).to_pylist()
    samples = read_samples(shards)
    assert sorted(s.key for s in samples) == sorted({r["key"] for r in manifest})
    assert len(manifest) == sum(len(s) for s in samples) == summary["frames_kept"]
    by_key = {s.key: s for s in samples}
    for row in manifest:
        s = by_key[row["key"]]
        assert s.meta["speaker"] == row["speaker"]
        assert s.time[row["frame"]] == pytest.approx(row["timestamp"])
    for s in samples:
        assert np.all(np.diff(s.time) > 0)
        assert s.region.shape == (len(s), 1024) and s.region.dtype == np.float16
        assert s.landmarks.shape == (len(s), 478, 2) and s.landmarks.dtype == np.float16
        face = s.image("faces", 0)
        assert face.shape == (128, 128, 3)
        assert s.image("eyes", 0).shape == s.image("mouth", 0).shape == (64, 64, 3)
        # landmarks and boxes are in crop pixels: the eyes sit inside the eye box, inside the crop
        eyes_box, mouth_box = s.boxes[0].astype(np.float32)
        assert 0 < eyes_box[0] < eyes_box[2] < 128 and eyes_box[3] < mouth_box[1] < mouth_box[3] < 128
    # FaceSwap donors are frames of other speakers, named by key/frame
    speakers = {s.key: s.meta["speaker"] for s in samples}
    donors = [(s, i, d) for s in samples for i, ds in enumerate(s.meta["donors"]) for d in ds.split(";") if d]
    assert donors and all(speakers[d.rsplit("/", 1)[0]] != s.meta["speaker"] for s, _, d in donors)
    assert summary["composites"] == sum(int(s.swap_slots().sum()) for s in samples) == len(donors)
    # coverage by mouth opening: every kept frame in one bin, composites counted per frame
    from sslfer.face_geometry import MOUTH_BINS, mouth_bin, mouth_opening

    cov = summary["composite_coverage"]["by_mouth_opening"]
    assert list(cov) == [name for name, _ in MOUTH_BINS]
    for b, (name, _) in enumerate(MOUTH_BINS):
        in_bin = [(mouth_bin(mouth_opening(s.landmarks)) == b) for s in samples]
        assert cov[name]["frames"] == sum(int(m.sum()) for m in in_bin)
        assert cov[name]["with_composite"] == sum(int((s.has_swap() & m).sum()) for s, m in zip(samples, in_bin))
    # up to swaps_per_frame (2) composites per frame, each with another donor clip
    assert max(s.swap_slots().shape[1] for s in samples) == 2 and any(s.swap_slots()[:, 1].any() for s in samples)
    for s, i, d in donors:
        frame_donors = s.meta["donors"][i].split(";")
        assert len(set(x.rsplit("/", 1)[0] for x in frame_donors)) == len(frame_donors)
        assert s.image("swaps", i, frame_donors.index(d)).shape == (128, 128, 3)


def test_timestamps_follow_the_sampling_grid_of_the_stream(built):
    shards, _ = built
    rows = [r for r in read_manifest(shards).to_pylist() if "espaces" in r["source"]]
    times = np.array(sorted(r["timestamp"] for r in rows))  # 30 fps source, 4 s
    assert len(times) == 17  # grid points 0, 0.24, ... 3.84
    np.testing.assert_allclose(times, np.ceil(np.arange(17) * 6 / 25 * 30 - 1e-6) / 30, atol=1e-3)


def test_no_pickle_in_shards(built):
    shards, _ = built
    allowed = {"meta.json", "time.npy", "frame.npy", "landmarks.npy", "boxes.npy", "region.npy"} | \
        {f"{n}.{e}" for n in ("faces", "swaps", "eyes", "mouth") for e in ("jpgs", "idx.npy")}
    for path in shard_paths(shards):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                ext = member.name.split(".", 1)[1]
                assert ext in allowed
                if ext.endswith(".npy"):
                    decode_npy(tar.extractfile(member).read())  # allow_pickle=False: raises on pickled arrays


def test_rerun_with_nothing_changed_does_no_work(built, good_corpus):
    shards, _ = built
    before = {p: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    indexes = {p: p.stat().st_mtime_ns for p in (shards / ".cache").rglob("*.parquet")}
    summary = build(good_corpus, shards)
    assert summary["work_done"] == {"content_read": 0, "faces": 0, "region": 0, "faceswap": 0, "pack": 0}
    assert before == {p: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    assert indexes and indexes == {p: p.stat().st_mtime_ns for p in (shards / ".cache").rglob("*.parquet")}


def test_reruns_read_a_file_only_when_its_stamp_changed(good_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(good_corpus, corpus)
    shards = tmp_path / "s"
    first = build(corpus, shards, "faceswap=false")
    assert first["work_done"]["content_read"] == first["clips"]
    clip = sorted(corpus.rglob("*.mp4"))[0]
    os.utime(clip, ns=(time.time_ns(), time.time_ns()))  # touched: read again, same content, no work
    touched = build(corpus, shards, "faceswap=false")
    assert touched["work_done"] == {"content_read": 1, "faces": 0, "region": 0, "faceswap": 0, "pack": 0}
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 0xFF  # changed content: read and processed again
    clip.write_bytes(bytes(data))
    changed = build(corpus, shards, "faceswap=false")
    assert changed["work_done"]["content_read"] == 1 and changed["work_done"]["faces"] == 1


def test_faceswap_change_reruns_only_faceswap_and_pack(good_corpus, tmp_path):
    shards = tmp_path / "s"
    build(good_corpus, shards)
    summary = build(good_corpus, shards, "swap_seed=7")
    assert summary["work_done"] == {"content_read": 0, "faces": 0, "region": 0, "faceswap": 4, "pack": 1}
    assert len(list((shards / ".cache" / "faceswap").glob("*.npz"))) == 4  # the older versions were deleted
    read_manifest(shards)


def test_adding_clips_processes_and_writes_only_the_new_ones(good_corpus, tmp_path, photos):
    """Sticky donors: adding a clip redoes FaceSwap for it alone and writes one shard; removing a clip redoes
    FaceSwap only for the clips it was a donor of, and rewrites only their shards."""
    from preprocess import faceswap as fs

    corpus = tmp_path / "corpus"
    shutil.copytree(good_corpus, corpus)
    shards = tmp_path / "s"
    options = ("swap_tries=2", "shard_max_mb=0.000001")  # two donors each; one clip per shard
    build(corpus, shards, *options)
    stamp = lambda: {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("shard-*.tar")}
    planned = lambda: fs.read_donor_table(shards / "faceswap-donors.parquet", 0, 2)
    used = lambda: {s.key: {d.rsplit("/", 1)[0] for ds in s.meta["donors"] for d in ds.split(";") if d}
                    for s in read_samples(shards)}
    before, donors_before = stamp(), planned()
    assert len(donors_before) == 4 and all(used()[k] <= set(ds) for k, ds in donors_before.items())

    synthetic.make_clip(corpus / "id00009" / "new" / "00001.mp4", photos["hopper"], seed=42, hue_shift=60)
    summary = build(corpus, shards, *options)
    new = [s for s in read_samples(shards) if s.meta["speaker"] == "id00009"]
    assert len(new) == 1 and summary["work_done"]["region"] == len(new[0])
    assert {k: summary["work_done"][k] for k in ("faces", "faceswap", "pack")} == {"faces": 1, "faceswap": 1,
                                                                                  "pack": 1}
    assert summary["pack"]["shards_written"] == 1 and summary["pack"]["shards_kept"] == 4
    after = stamp()
    assert {k: after[k] for k in before} == before  # no existing shard touched
    donors_after = planned()
    assert {k: donors_after[k] for k in donors_before} == donors_before and len(donors_after[new[0].key]) == 2

    build(corpus, shards, *options, "max_clips=2")  # a run that sees only some clips forgets no one's donors
    build(corpus, shards, *options)
    assert planned() == donors_after and all(used()[k] <= set(ds) for k, ds in donors_after.items())

    gone = next(k for k in donors_before if any(k in ds for ds in donors_before.values()))
    served = {k for k, ds in donors_after.items() if gone in ds}
    source = next(s.meta["source"] for s in read_samples(shards) if s.key == gone)
    (corpus / source).unlink()
    summary = build(corpus, shards, *options)
    assert summary["work_done"]["faceswap"] == summary["pack"]["shards_written"] == len(served)
    donors_now = planned()
    assert gone not in donors_now and all(gone not in ds for ds in donors_now.values())
    assert {k: ds for k, ds in donors_now.items() if k not in served} == \
        {k: ds for k, ds in donors_after.items() if k not in served and k != gone}
    assert not any(gone in ds for ds in used().values())

    fresh = tmp_path / "fresh"  # sticky_donors=false: the choice from the current corpus alone
    build(corpus, fresh, *options, "sticky_donors=false")
    samples = read_samples(fresh)
    assert fs.read_donor_table(fresh / "faceswap-donors.parquet", 0, 2) == \
        fs.choose_donor_clips([(s.key, s.meta["speaker"]) for s in samples], 0, 2)


def test_killed_run_resumes_without_duplicates_or_losses(good_corpus, tmp_path, built):
    reference, _ = built
    shards = tmp_path / "s"
    cmd = [sys.executable, "-m", "preprocess", "build", str(good_corpus), str(shards), "workers=1",
           "region_weights=random"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((shards / ".cache" / "faces").glob("*.npz")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-way through the faces step
    proc.wait()
    assert not (shards / MANIFEST).exists()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((shards / "summary.json").read_text())
    assert 0 < summary["work_done"]["faces"] < 4  # finished only what the killed run had not
    rows = read_manifest(shards).to_pylist()
    ref = read_manifest(reference).to_pylist()
    strip = lambda rs: sorted((r["key"], r["frame"], r["timestamp"], r["swap_donor"]) for r in rs)
    assert strip(rows) == strip(ref)
    assert not list(shards.rglob("*.tmp"))


def test_parts_then_merge_equal_a_single_run(good_corpus, tmp_path, built):
    reference, _ = built
    shards = tmp_path / "s"
    for i in range(2):
        build(good_corpus, shards, f"part={i}/2", "faceswap=false")
    from preprocess.pack import merge_parts

    merge_parts(shards)
    rows = read_manifest(shards).to_pylist()
    ref = read_manifest(reference).to_pylist()
    assert sorted((r["key"], r["frame"]) for r in rows) == sorted((r["key"], r["frame"]) for r in ref)
    assert sum(len(s) for s in read_samples(shards)) == len(rows)


def test_landmark_descriptor_needs_no_weights(good_corpus, tmp_path):
    summary = build(good_corpus, tmp_path / "s", "region_descriptor=landmarks", "faceswap=false", "max_clips=1")
    s = read_samples(tmp_path / "s")[0]
    assert s.region.shape == (len(s), 144) and np.isfinite(s.region.astype(np.float32)).all()
    assert summary["composites"] == 0


def test_missing_imagenet_weights_say_how_to_get_them(tmp_path, monkeypatch):
    from sslfer import imagenet
    from sslfer.imagenet import WeightsMissing, imagenet_resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = "file://" + str(tmp_path / "nowhere" / "resnet18-f37072fd.pth")  # a download that fails at once
    monkeypatch.setattr(imagenet, "weights_url", lambda: url)
    with pytest.raises(WeightsMissing, match="Download file://.*resnet18-f37072fd.pth on a machine"):
        imagenet_resnet18("")
    bad = tmp_path / "w.pth"
    bad.write_text("junk")
    with pytest.raises(WeightsMissing, match="not a ResNet18 state dict"):
        imagenet_resnet18(str(bad))


def test_missing_imagenet_weights_are_downloaded_and_hash_checked(tmp_path, monkeypatch):
    import hashlib

    import torch
    import torchvision

    from sslfer import imagenet

    source = tmp_path / "server" / "w.pth"
    source.parent.mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), source)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    served = source.rename(source.with_name(f"resnet18-{sha[:8]}.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(imagenet, "weights_url", lambda: "file://" + str(served))
    path = imagenet.resnet18_weights("")
    assert path == tmp_path / "home" / "hub" / "checkpoints" / served.name and path.read_bytes() == served.read_bytes()
    assert imagenet.imagenet_resnet18("")(torch.zeros(1, 3, 64, 64)).shape == (1, 512)
    wrong = served.with_name("resnet18-00000000.pth")  # a file whose hash does not match its name
    served.rename(wrong)
    monkeypatch.setattr(imagenet, "weights_url", lambda: "file://" + str(wrong))
    with pytest.raises(imagenet.WeightsMissing):
        imagenet.resnet18_weights("")
    assert not (tmp_path / "home" / "hub" / "checkpoints" / wrong.name).exists()


def test_imagenet_weights_load_from_a_file(tmp_path):
    import torch
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    from sslfer.imagenet import imagenet_resnet18

    assert imagenet_resnet18(str(path))(torch.zeros(1, 3, 64, 64)).shape == (1, 512)


def test_bad_inputs_are_logged_and_the_run_continues(bad_corpus, tmp_path):
    from preprocess.__main__ import EXIT_SOME_FAILED, main

    shards = tmp_path / "s"
    code = main(["build", str(bad_corpus), str(shards), "workers=2", "region_weights=random"])
    summary = json.loads((shards / "summary.json").read_text())
    rejects = pq.read_table(shards / REJECTS).to_pylist()
    reasons = {Path(r["source"]).name: r["reason"] for r in rejects if r["frame"] == -1}
    assert code == EXIT_SOME_FAILED
    assert reasons["empty.mp4"] == "empty file (0 bytes)"
    assert reasons["text.mp4"].startswith("not a readable video")
    assert reasons["truncated_no_index.mp4"].startswith("not a readable video")
    assert "kept" in reasons["truncated_playable.mp4"]  # decoded up to the damage
    assert reasons["no_face.mp4"].startswith("no usable face")
    assert reasons["dangling.mp4"].startswith("file not found")
    frame_reasons = {r["reason"].split(" (")[0] for r in rejects if Path(r["source"]).name == "tiny_face.mp4"}
    assert frame_reasons & {"face too small", "no face found"}
    failed = {Path(f["source"]).name for f in summary["failed"]}
    expected_failed = {"empty.mp4", "text.mp4", "truncated_no_index.mp4", "no_face.mp4", "dangling.mp4",
                       "tiny_face.mp4"} | ({"unreadable.mp4"} if os.geteuid() != 0 else set())
    assert failed == expected_failed and summary["clips_failed"] == len(expected_failed)
    rows = read_manifest(shards).to_pylist()
    kept = {Path(r["source"]).name for r in rows}
    assert {"good.mp4", "truncated_playable.mp4", "two_faces.mp4", "rotated.mp4", "portrait.mp4"} <= kept
    assert max(r["n_faces"] for r in rows if r["source"].endswith("two_faces.mp4")) >= 2
    # a second run does not retry the failures
    again = build(bad_corpus, shards, workers=2)
    assert again["work_done"]["faces"] == 0 and again["clips_failed"] == len(expected_failed)


def test_frames_layout_orders_by_frame_number_and_maps_speaker_ids(tmp_path, photos):
    import cv2

    clip_dir = tmp_path / "unzippedIntervalFaces" / "data" / "A.J._Buckley" / "1.6" / "1zcIwhmdeo4" / "1"
    clip_dir.mkdir(parents=True)
    frames = list(synthetic.render_frames(photos["astronaut"], 12, (224, 224), 3))
    numbers = [375 + 6 * i for i in range(12)]
    for i in np.random.default_rng(0).permutation(12):  # written out of order
        cv2.imwrite(str(clip_dir / f"{numbers[i]:07d}.jpg"), cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
    (tmp_path / "vox1_meta.csv").write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
                                            "id10001\tA.J._Buckley\tm\tIreland\tdev\n")
    build(tmp_path / "unzippedIntervalFaces", tmp_path / "s", "faceswap=false")
    rows = read_manifest(tmp_path / "s").to_pylist()
    assert {r["speaker"] for r in rows} == {"id10001"}
    assert [r["source_frame"] for r in rows] == sorted(r["source_frame"] for r in rows)
    np.testing.assert_allclose([r["timestamp"] for r in rows], [r["source_frame"] / 25 for r in rows])
    assert len(rows) >= 10


def test_csv_layout(tmp_path, good_corpus):
    videos = sorted(good_corpus.rglob("*.mp4"))[:2]
    (tmp_path / "list.csv").write_text("path,speaker\n" + "".join(f"{p},person{i}\n" for i, p in enumerate(videos)))
    build(tmp_path / "list.csv", tmp_path / "s")
    assert {r["speaker"] for r in read_manifest(tmp_path / "s").to_pylist()} == {"person0", "person1"}


@pytest.mark.skipif(not (SHARED / "talking-faces").is_dir(), reason="../shared/data not present")
def test_real_talking_faces(tmp_path):
    corpus = tmp_path / "corpus"
    clips = sorted((SHARED / "talking-faces").glob("*/*/*.mp4"))
    for p in [clips[0], clips[5], clips[-1]]:
        dst = corpus / p.relative_to(SHARED / "talking-faces")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(p)
    summary = build(corpus, tmp_path / "s", "workers=2")
    assert summary["clips_failed"] == 0
    assert summary["frames_kept"] >= 0.9 * summary["frames_sampled"]
    assert summary["composites"] > 0.5 * summary["frames_kept"]
    # FaceSwap's fit leaves the lips out: talking (open-mouth) frames get composites about as often as the rest
    cov = summary["composite_coverage"]["by_mouth_opening"]
    shares = {k: c["with_composite"] / c["frames"] for k, c in cov.items() if c["frames"] >= 20}
    assert len(shares) >= 2 and max(shares.values()) - min(shares.values()) < 0.15, shares


def test_merge_validates_parts_and_handles_empty_ones(good_corpus, tmp_path):
    import pyarrow.parquet as pq

    from preprocess.pack import merge_parts

    corpus = tmp_path / "corpus"
    shutil.copytree(good_corpus, corpus)
    (corpus / "stray.mp4").write_bytes(b"x")  # outside the layout: a discovery reject every part sees
    shards = tmp_path / "s"
    for i in range(6):  # 4 clips over 6 parts: some parts hold no clip at all
        build(corpus, shards, f"part={i}/6", "faceswap=false", workers=0)
    rows_per_part = [pq.read_metadata(shards / "parts" / f"{i}-of-6" / MANIFEST).num_rows for i in range(6)]
    assert 0 in rows_per_part
    summary = merge_parts(shards)
    assert summary["parts"] == 6 and summary["frames"] == sum(rows_per_part) == len(read_manifest(shards))
    rejects = pq.read_table(shards / REJECTS).to_pylist()
    assert sum(r["source"] == "stray.mp4" for r in rejects) == 1
    assert sum(len(s) for s in read_samples(shards)) == summary["frames"]

    (shards / "parts" / "0-of-4").mkdir()  # a stale folder of another split
    with pytest.raises(ValueError, match="parts of 4 and 6"):
        merge_parts(shards)
    (shards / "parts" / "0-of-4").rmdir()
    build(corpus, shards, "part=1/6", "faceswap=false", "sample_fps=2", workers=0)  # one part, other options
    with pytest.raises(ValueError, match="different options .*sample_fps"):
        merge_parts(shards)


def test_packing_is_incremental(good_corpus, tmp_path, photos, monkeypatch):
    monkeypatch.setattr("preprocess.pack.ROWS_PER_FLUSH", 7)  # manifests streamed in many row groups
    corpus = tmp_path / "corpus"
    shutil.copytree(good_corpus, corpus)
    shards = tmp_path / "s"
    one_clip_per_shard = ("faceswap=false", "shard_max_mb=0.000001")
    first = build(corpus, shards, *one_clip_per_shard, workers=0)
    stamp = lambda: {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("shard-*.tar")}
    before = stamp()
    assert len(before) == first["clips"] == 4

    synthetic.make_clip(corpus / "id00009" / "new" / "00001.mp4", photos["hopper"], seed=42, hue_shift=60)
    added = build(corpus, shards, *one_clip_per_shard, workers=0)
    after = stamp()
    assert added["pack"]["shards_written"] == 1 and added["pack"]["shards_kept"] == 4
    assert {k: after[k] for k in before} == before and len(after) == 5  # the old shards were not touched

    removed_clip = sorted(corpus.rglob("*.mp4"))[0]
    removed_clip.unlink()
    removed = build(corpus, shards, *one_clip_per_shard, workers=0)
    assert removed["pack"]["shards_written"] == 0 and removed["pack"]["shards_kept"] == 4
    assert set(stamp().items()) < set(after.items())  # one shard deleted, the others untouched

    fresh = tmp_path / "fresh"
    build(corpus, fresh, *one_clip_per_shard, workers=0)
    strip = lambda rows: sorted((r["key"], r["frame"], r["timestamp"], r["sample_hash"]) for r in rows)
    assert strip(read_manifest(shards).to_pylist()) == strip(read_manifest(fresh).to_pylist())
    ours = {s.key: s for s in read_samples(shards)}
    for s in read_samples(fresh):
        assert np.array_equal(ours[s.key].landmarks, s.landmarks) and ours[s.key].meta == s.meta


def test_long_clips_are_stored_as_windows(good_corpus, tmp_path, built):
    from sslfer.shards.index import ShardIndex

    reference, _ = built
    shards = tmp_path / "s"
    build(good_corpus, shards, "window_s=1.5")
    whole = {s.key: s for s in read_samples(reference)}
    windows = read_samples(shards)
    assert len(windows) > len(whole)
    by_clip: dict = {}
    for w in windows:
        by_clip.setdefault(w.meta.get("clip_key", w.key), []).append(w)
    assert set(by_clip) == set(whole)
    for key, parts in by_clip.items():
        parts.sort(key=lambda w: w.meta.get("window", [0])[0])
        span = lambda w: float(w.time[-1] - w.time[0])
        assert all(span(w) <= 1.5 + 1e-9 for w in parts)
        if len(parts) > 1:
            assert all(w.key == f"{key}_w{k}" and w.meta["window"] == [k, len(parts)] for k, w in enumerate(parts))
        ref = whole[key]
        assert np.array_equal(np.concatenate([w.time for w in parts]), ref.time)
        assert np.array_equal(np.concatenate([w.landmarks for w in parts]), ref.landmarks)
        frames = [w.image("faces", i) for w in parts for i in range(len(w))]
        assert all(np.array_equal(a, ref.image("faces", i)) for i, a in enumerate(frames))
        swaps = [w.image("swaps", i, j) for w in parts for i in range(len(w)) for j in range(2)]
        assert all(a is None and ref.image("swaps", i // 2, i % 2) is None or
                   np.array_equal(a, ref.image("swaps", i // 2, i % 2)) for i, a in enumerate(swaps))
        assert sum((w.meta["donors"] for w in parts), []) == ref.meta["donors"]
    manifest = read_manifest(shards)
    assert len(manifest) == len(read_manifest(reference))
    index = ShardIndex.build(shards)  # the trainer: windows of one clip share a clip id
    origin = dict(zip(index.keys, index.origin))
    for key, parts in by_clip.items():
        assert len({origin[w.key] for w in parts}) == 1
    assert len(set(origin.values())) == len(by_clip)


def test_faceswap_mask_keeps_mouth_corners_and_brows_whole():
    from preprocess import faceswap as fs
    from preprocess.settings import ShardsConfig
    from preprocess.synthetic import face_photos, photo_landmarks
    from sslfer.face_geometry import EYES_AND_BROWS, NOSE_AND_MOUTH

    lm = photo_landmarks("astronaut")
    shape = face_photos()["astronaut"].shape[:2]
    hull_points = []
    for group in (EYES_AND_BROWS, NOSE_AND_MOUTH):  # the landmarks on each hull's edge
        hull = cv2.convexHull(np.round(lm[group]).astype(np.int32), returnPoints=False).ravel()
        hull_points += [group[i] for i in hull]
    at = lambda mask: mask[np.round(lm[hull_points, 1]).astype(int), np.round(lm[hull_points, 0]).astype(int)]
    cfg = ShardsConfig()
    grown = fs.blend_mask(lm, lm, shape, cfg.swap_feather, cfg.swap_dilate)
    assert at(grown).min() > 0.95  # every edge landmark (mouth corners, brow ends) comes from the face
    plain = fs.blend_mask(lm, lm, shape, cfg.swap_feather, 0.0)
    assert at(plain).min() < 0.7  # feathering alone left them half donor


def test_build_writes_a_faceswap_contact_sheet(built):
    shards, summary = built
    sheet = cv2.imread(str(shards / "faceswap-sheet.png"))
    assert summary["composites"] > 0 and sheet is not None
    assert sheet.shape[1] == 3 * 128 and (sheet.shape[0] - 22) % 128 == 0 and sheet.shape[0] > 22
