"""Units of the batch stage: config, geometry, grid sampling, schema round trip."""
import dataclasses
import math

import numpy as np
import pytest

from preprocess.settings import STEPS, ShardsConfig
from sslfer import face_geometry as geo
from sslfer.config import ConfigError, load_config, step_options, to_toml
from sslfer.decode import grid_select
from sslfer.shards.schema import ClipSample, join_jpegs, encode_jpeg


def test_config_file_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('workers = 3\n[faceswap]\nswap_seed = 5\n')
    cfg = load_config(ShardsConfig, f, ["sample_fps=25/6", "faceswap=false", "swap_seed=9"])
    assert cfg.workers == 3 and cfg.swap_seed == 9 and cfg.faceswap is False
    assert math.isclose(cfg.sample_fps, 25 / 6)
    again = tmp_path / "resolved.toml"
    again.write_text(to_toml(cfg))
    assert load_config(ShardsConfig, again) == cfg


@pytest.mark.parametrize("override, message", [("nosuch=1", "unknown option"), ("workers=two", "expected int"),
                                                ("faceswap=maybe", "expected bool"), ("workers", "key=value")])
def test_config_errors_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ShardsConfig, None, [override])


def test_every_cached_option_names_a_known_step():
    steps = {f.metadata["step"] for f in dataclasses.fields(ShardsConfig)} - {None}
    assert steps <= set(STEPS)
    assert "swap_seed" in step_options(ShardsConfig(), "faceswap")
    assert "swap_seed" not in step_options(ShardsConfig(), "faces")


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (20, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    m = geo.similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-7)


def test_alignment_maps_the_five_points_onto_the_template():
    lm = np.zeros((geo.N_LANDMARKS, 2))
    template = geo.TEMPLATE_UNIT * 300 + 40  # a face at another scale and place
    for idx, p in zip([geo.RIGHT_EYE, geo.LEFT_EYE, [geo.NOSE_TIP], geo.MOUTH_CORNERS[:1],
                       geo.MOUTH_CORNERS[1:]], template):
        lm[idx] = p
    m = geo.alignment_matrix(lm, 128)
    np.testing.assert_allclose(geo.apply(m, geo.five_points(lm)), geo.TEMPLATE_UNIT * 128, atol=1e-6)


def test_landmark_groups_match_mediapipe():
    conn = pytest.importorskip("mediapipe.python.solutions.face_mesh_connections")
    idx = lambda s: sorted({i for e in s for i in e})
    assert geo.RIGHT_EYE == idx(conn.FACEMESH_RIGHT_EYE)
    assert geo.LEFT_EYE == idx(conn.FACEMESH_LEFT_EYE)
    assert geo.LIPS == idx(conn.FACEMESH_LIPS)
    assert geo.NOSE == idx(conn.FACEMESH_NOSE)
    assert geo.RIGHT_BROW == idx(conn.FACEMESH_RIGHT_EYEBROW)


@pytest.mark.parametrize("src_fps", [10, 24, 25, 29.97, 30, 60])
def test_grid_select_keeps_first_frame_of_each_sampling_interval(src_fps):
    rate = 25 / 6
    times = [i / src_fps for i in range(int(src_fps * 10))]
    chosen = [times[i] for i in grid_select(times, rate)]
    # one frame per grid cell [k/rate, (k+1)/rate) that holds any frame, and it is the cell's first frame
    cells = [math.floor(t * rate + 1e-9) for t in times]
    assert len(chosen) == len(set(cells))
    for t in chosen:
        k = math.floor(t * rate + 1e-9)
        assert t >= k / rate - 1e-9 and t - k / rate < 1 / src_fps + 1e-9
    gaps = np.diff(chosen)
    assert abs(np.mean(gaps) - 1 / rate) < 1 / src_fps


def test_clip_sample_round_trip():
    n = 3
    faces = [encode_jpeg(np.full((8, 8, 3), 30 * i, np.uint8), 95) for i in range(n)]
    swaps = [faces[0], b"", faces[2]]
    jpegs = {"faces": join_jpegs(faces), "eyes": join_jpegs(faces), "mouth": join_jpegs(faces),
             "swaps": join_jpegs(swaps)}
    frames = {"time": np.arange(n, dtype=np.float64) / 4, "source_frame": np.arange(n, dtype=np.int32),
              "landmarks": np.zeros((n, 478, 2), np.float16), "boxes": np.zeros((n, 2, 4), np.float16),
              "region": np.ones((n, 4), np.float16)}
    s = ClipSample("k-1", {"schema": 1, "speaker": "a"}, frames, jpegs)
    raw = s.to_wds()
    assert all(isinstance(v, bytes) for k, v in raw.items() if k != "__key__")
    back = ClipSample.from_wds(raw)
    assert back.has_swap().tolist() == [True, False, True]
    assert back.image("swaps", 1) is None
    assert abs(int(back.image("faces", 2).mean()) - 60) <= 2
    np.testing.assert_array_equal(back.time, s.time)


def test_shipped_config_file_matches_the_defaults():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "shards.toml"
    assert load_config(ShardsConfig, path) == ShardsConfig()


def test_npy_array_reads_and_writes_like_numpy(tmp_path):
    from sslfer.files import ArrayWriter, NpyArray

    expected = np.random.default_rng(0).integers(0, 255, (50, 4, 3), dtype=np.uint8)
    out = ArrayWriter(tmp_path / "a.npy", expected.shape, np.uint8)
    out.array.write(0, expected[:20])
    for i in range(20, 50):
        out.array[i] = expected[i]
    assert not (tmp_path / "a.npy").exists()  # only complete files under the final name
    a = out.finish()
    assert np.array_equal(np.load(tmp_path / "a.npy"), expected)  # a plain .npy file
    idx = np.array([7, 3, 4, 5, 49, 0, 3, -1])  # unordered, repeated, negative, runs
    mask = np.arange(50) % 3 == 0
    for key in (idx, mask, slice(5, 40, 2), slice(None), 4, np.int64(-2), np.array([], int)):
        assert np.array_equal(a[key], expected[key]), key
    assert np.array_equal(np.asarray(a, np.float32), expected.astype(np.float32))
    assert len(a) == 50 and a.shape == expected.shape and a.dtype == np.uint8
    assert a[np.array([[1, 2], [3, 4]])].shape == (2, 2, 4, 3)  # an index array's shape is kept
    for bad in (np.array([50]), np.array([-51]), np.ones(49, bool), np.array([1.0]), (3, 5)):
        with pytest.raises(IndexError):
            a[bad]
    import pickle

    assert np.array_equal(pickle.loads(pickle.dumps(a))[[1, 2]], expected[[1, 2]])  # reopened by path
    with pytest.raises(ValueError):
        NpyArray(tmp_path / "a.npy", writable=True).write(45, expected[:10])


def _donor_corpus(n: int, speakers: int, offset: int = 0) -> list[tuple[str, str]]:
    return [(f"id{i % speakers:03d}-clip{i:05d}", f"id{i % speakers:03d}") for i in range(offset, offset + n)]


def test_donors_are_k_clips_of_other_speakers_and_few_change_when_clips_are_added():
    from preprocess.faceswap import choose_donor_clips

    clips = _donor_corpus(2000, 40)
    speaker = dict(clips)
    donors = choose_donor_clips(clips, 0, 5)
    assert all(len(set(ds)) == 5 and all(speaker[d] != speaker[k] for d in ds) for k, ds in donors.items())
    used = np.bincount([int(d[-5:]) for ds in donors.values() for d in ds], minlength=2000)
    assert used.mean() == 5 and used.max() <= 40  # every clip serves ~k others: no donor hoards the ring
    grown = choose_donor_clips(clips + _donor_corpus(20, 40, offset=2000), 0, 5)
    changed = sum(grown[k] != donors[k] for k in donors) / len(donors)
    assert 0.01 < changed < 0.1  # ~k per added clip (1%): consistent hashing, not a reshuffle
    assert choose_donor_clips(clips, 1, 5) != donors  # the seed matters


def test_donors_follow_the_ring_walk_where_one_speaker_crowds_it():
    """The vectorised choice against the rule walked clip by clip: the first k clips of other speakers after
    the clip's seeded point, round the ring; a speaker holding long runs of the ring (and too few others)
    sends the choice down its walk-on path."""
    from preprocess.faceswap import _score, choose_donor_clips

    def walk(clips, seed, k):
        ring = sorted((_score(seed, "ring", key), key, s) for key, s in clips)
        out = {}
        for key, s in clips:
            start = sum(point <= _score(seed, "donor", key) for point, _, _ in ring)
            others = [ring[(start + j) % len(ring)] for j in range(len(ring))]
            out[key] = [other for _, other, o in others if o != s][:k]
        return out

    crowded = [(f"a{i}", "A") for i in range(300)] + [(f"b{i}", "B") for i in range(3)]
    for clips in (_donor_corpus(500, 7), crowded, _donor_corpus(4, 2)):
        for k in (1, 5, 12):
            assert choose_donor_clips(clips, 3, k) == walk(clips, 3, k)


def test_sticky_donors_keep_existing_choices_and_replace_only_removed_donors():
    from preprocess.faceswap import choose_donor_clips, sticky_donor_clips

    def sticky(clips, previous, corpus=None):
        return sticky_donor_clips(clips, previous, 0, 5, corpus={k for k, _ in corpus or clips})

    clips = _donor_corpus(2000, 40)
    first, remembered = sticky(clips, {})
    assert first == remembered == choose_donor_clips(clips, 0, 5)  # nothing remembered: the history-free choice

    added = _donor_corpus(20, 40, offset=2000)
    grown, remembered = sticky(clips + added, first)
    assert all(grown[k] == first[k] for k in first) and remembered == grown  # no existing clip changes donors
    assert all(len(grown[k]) == 5 for k, _ in added)

    removed = {k for k, _ in clips[::100]}
    kept = [c for c in clips if c[0] not in removed]
    shrunk, remembered = sticky(kept, first)
    served = {k for k, _ in kept if removed & set(first[k])}
    assert served and {k for k, _ in kept if shrunk[k] != first[k]} == served  # only the clips they served
    fresh = choose_donor_clips(kept, 0, 5)
    assert all(shrunk[k] == fresh[k] for k in served) and remembered == shrunk

    # the same clips unusable for one run only (failed jobs, max_clips): this run works around them, and what
    # is remembered is unchanged, so the run after that is the same as if nothing had happened
    used, remembered = sticky(kept, first, corpus=clips)
    assert used == shrunk and remembered == first
    assert sticky(clips, remembered) == (first, first)
    alone = [c for c in clips if c[1] == "id000"]  # a run that sees one speaker only: no donors this run
    used, remembered = sticky(alone, first, corpus=clips)
    assert all(ds == [] for ds in used.values()) and remembered == first

    one_speaker = [("a-1", "a"), ("a-2", "a")]  # no donor possible, then one appears: the clips get it
    none, _ = sticky(one_speaker, {})
    assert none == {"a-1": [], "a-2": []}
    assert sticky(one_speaker + [("b-1", "b")], none)[0]["a-1"] == ["b-1"]


def test_donor_table_round_trip_and_option_change(tmp_path):
    from preprocess.faceswap import read_donor_table, write_donor_table

    donors = {"a-1": ["b-1", "c-1"], "b-1": ["a-1"], "c-1": []}
    path = tmp_path / "donors.parquet"
    write_donor_table(path, donors, seed=3, k=2)
    assert read_donor_table(path, 3, 2) == donors
    assert read_donor_table(path, 4, 2) == {} and read_donor_table(path, 3, 5) == {}  # other options: afresh
    path.write_bytes(b"damaged")
    assert read_donor_table(path, 3, 2) == {}


def test_stamps_read_only_changed_files_and_forget_missing_ones(tmp_path):
    import os

    from preprocess.cache import Stamps
    from preprocess.corpus import Clip

    files = []
    for i in range(3):
        f = tmp_path / f"c{i}.mp4"
        f.write_bytes(bytes([i]) * 100)
        files.append(Clip("video", str(f), f"s/v/c{i}.mp4", "s", "v", f"c{i}"))
    table = tmp_path / "stamps.parquet"
    first = Stamps(table)
    fps = first.fingerprints(files)
    first.save()
    assert first.read == 3 and len(set(fps)) == 3

    again = Stamps(table)
    assert again.fingerprints(files) == fps and again.read == 0 and again.now is None  # nothing to rewrite
    files[1].path.write_bytes(b"x" * 101)  # changed size: read again
    os.utime(files[2].path, ns=(1, 1))     # changed mtime, same bytes: read again, same fingerprint
    changed = Stamps(table)
    new = changed.fingerprints(files)
    assert changed.read == 2 and new[0] == fps[0] and new[1] != fps[1] and new[2] == fps[2]
    changed.save()

    files[0].path.unlink()  # gone: fingerprinted by its error, not remembered
    gone = Stamps(table)
    gone_fps = gone.fingerprints(files)
    gone.save()
    assert gone.read == 0 and gone_fps[1:] == new[1:] and gone_fps[0] != fps[0]
    assert Stamps(table).known.column("rel").to_pylist() == ["s/v/c1.mp4", "s/v/c2.mp4"]


def test_step_infos_come_from_the_index_and_a_new_hash_from_its_file(tmp_path):
    from preprocess.cache import StepCache

    cache = StepCache(tmp_path, "faces")
    for key, h, n in (("a", "h1", 1), ("b", "h1", 2), ("b", "h2", 3)):
        cache.save(key, h, {"x": np.zeros(1)}, {"sampled": n})
    assert dict(cache.infos({"a": "h1", "b": "h1"})) == {"a": {"sampled": 1}, "b": {"sampled": 2}}
    cache.path("a", "h1").unlink()  # indexed: its output file is not opened
    assert dict(cache.infos({"a": "h1", "b": "h1"})) == {"a": {"sampled": 1}, "b": {"sampled": 2}}
    records = cache.infos({"a": "h1", "b": "h2"})  # b's new hash: read from its file, the index updated
    assert records["b"] == {"sampled": 3}
    cache.path("b", "h2").unlink()
    assert cache.infos({"b": "h2"})["b"] == {"sampled": 3}
    written = cache.infos({"b": "h2", "c": "h1"}, {"c": '{"sampled": 4}'})  # as this run's jobs returned it
    assert written["c"] == {"sampled": 4} and cache.infos({"c": "h1"})["c"] == {"sampled": 4}  # now indexed
    records["a"] = {"sampled": 0, "failed": True}  # a failed job's record, kept as given
    assert records["a"]["failed"] and len(records) == 2

    swaps = StepCache(tmp_path, "faceswap")  # per-frame donors: the index keeps their count, the file the list
    swaps.save("a", "h1", {"x": np.zeros(1)}, {"donors": ["b/1", "", "c/2"], "made": 2})
    assert swaps.infos({"a": "h1"})["a"] == {"frames": 3, "made": 2}
    assert swaps.infos({"a": "h1"})["a"] == {"frames": 3, "made": 2} and swaps.load("a", "h1")[1]["donors"][0] == "b/1"


def test_missing_outputs_are_found_by_name_not_by_stat(tmp_path, monkeypatch):
    from preprocess import cache as cache_module
    from preprocess.cache import StepCache

    cache = StepCache(tmp_path, "region")
    for key, h in (("a", "h1"), ("b", "h1"), ("b-x", "h3")):
        cache.save(key, h, {"x": np.zeros(1)}, {})
    (cache.dir / "c-h1.npz.tmp").write_bytes(b"")  # a write in progress is not an output
    monkeypatch.setattr(cache_module.os.path, "isfile", None)  # one listing, no stat per output
    monkeypatch.setattr(cache_module, "_LISTING_CHUNK", 2)  # chunks of the listing and of the keys
    assert cache.missing({"a": "h1", "b": "h2", "c": "h1", "b-x": "h3", "d": "h1"}) == {"b", "c", "d"}
    assert cache.missing({}) == set()


def test_build_help_lists_every_option(capsys):
    import dataclasses

    from preprocess.__main__ import main
    from preprocess.settings import ShardsConfig

    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = capsys.readouterr().out
    assert all(f"  {f.name} (default" in out for f in dataclasses.fields(ShardsConfig))


def test_shard_writer_writes_what_webdataset_writes(tmp_path):
    """The batch stage writes tars with tarfile (not importing webdataset, hence torch); the bytes must stay
    webdataset's, long (PAX) member names included."""
    import io

    import webdataset as wds

    from sslfer.shards.tar import ShardWriter

    samples = [{"__key__": "id00001-v-00001-abcd_w0", "meta.json": b'{"a": 1}', "time.npy": bytes(40),
                "faces.jpgs": b"x" * 1000}, {"__key__": "k" * 120, "meta.json": b"{}"}]
    writer = ShardWriter(tmp_path, 1e9)
    for sample in samples:
        writer.write(sample)
    writer.close()
    expected = io.BytesIO()
    tar = wds.TarWriter(expected, encoder=False, mtime=0)
    for sample in samples:
        tar.write(sample)
    tar.close()
    assert (tmp_path / writer.written[0]).read_bytes() == expected.getvalue()


def test_digests_of_many_inputs_equal_the_plain_digest():
    from preprocess.cache import digest, digest_items, digest_of

    opts = {"b": 2.5, "a": [1, "x"], "c": None}
    assert digest_of("faces", 1, tail=(opts,))("0123abcd") == digest("faces", 1, "0123abcd", opts)
    assert digest_of("faceswap", 3, tail=(opts,))("f", ["d1", "d2"]) == digest("faceswap", 3, "f", ["d1", "d2"], opts)
    assert digest_of("faceswap", 3, tail=(opts,))("f", []) == digest("faceswap", 3, "f", [], opts)
    assert digest_of()("a", "b", 'q"\\é') == digest("a", "b", 'q"\\é')
    items = [("k1", "h1", "h2", ""), ("k2", "h3", "h4", "h5")]
    assert digest_items(("pack",), iter(items), (opts,)) == digest("pack", items, opts)
    assert digest_items(("pack",), [], (opts,)) == digest("pack", [], opts)


def test_tar_members_are_tarfiles_bytes():
    """The hand-made ustar header equals tarfile's (PAX format, webdataset's fields) at every name length."""
    import tarfile

    from sslfer.shards.tar import tar_member

    for name in ["a.json", "id00001-yt000001-00001-0123abcd_w0.faces.idx.npy", "k" * 99, "k" * 100, "k" * 150,
                 "é.meta.json"]:
        for data in (b"", b"x", bytes(range(256)) * 3):
            member = tarfile.TarInfo(name)
            member.size, member.mtime, member.mode = len(data), 0, 0o444
            member.uname = member.gname = "bigdata"
            expected = member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + data + bytes(-len(data) % 512)
            assert tar_member(name, data) == expected, (name, len(data))


def test_npz_files_round_trip_through_numpy(tmp_path):
    """Step outputs written here load with np.load, and np.savez's files (stored or compressed) load here, with
    every dtype, shape and memory order kept."""
    import io
    import json

    from sslfer.npz import NpzArrays, load_npz, save_npz_bytes

    rng = np.random.default_rng(0)
    arrays = {"landmarks": rng.normal(size=(2, 478, 2)).astype(np.float16), "time": np.arange(3.0),
              "empty": np.zeros((0, 4), np.int8), "scalar": np.array(7), "flags": np.array([True, False]),
              "fortran": np.asfortranarray(rng.normal(size=(3, 5))), "big_endian": np.arange(4, dtype=">i4"),
              "text": np.array(["ab", "c"]), "large": np.arange(40_000, dtype=np.float32).reshape(200, 200)}
    ours = tmp_path / "ours.npz"
    ours.write_bytes(save_npz_bytes(arrays, {"made": 3}))
    with np.load(ours, allow_pickle=False) as z:
        assert json.loads(z["_info"].tobytes()) == {"made": 3}
        for name, a in arrays.items():
            assert z[name].dtype == a.dtype and np.array_equal(z[name], a)
    files = [ours]
    for savez in (np.savez, np.savez_compressed):
        buf = io.BytesIO()
        savez(buf, _info=np.frombuffer(b'{"made": 3}', np.uint8), **arrays)
        files.append(tmp_path / f"{savez.__name__}.npz")
        files[-1].write_bytes(buf.getvalue())
    for path in files:
        got, info = load_npz(path)
        assert info == {"made": 3} and sorted(got) == sorted(arrays)
        for name, a in arrays.items():
            assert got[name].dtype == a.dtype and got[name].shape == a.shape and np.array_equal(got[name], a)
        got["time"][0] = 1.0  # writable, as np.load's
        with NpzArrays(path) as z:
            assert "_info" not in z and len(z) == len(arrays)
            with pytest.raises(KeyError):
                z["missing"]
