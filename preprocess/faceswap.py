"""Step `faceswap`: paste each kept frame's inner face (eyes+brows, nose+mouth) onto a frame of another
speaker, giving a positive that keeps the expression and changes the identity (paper §3.2.2).

Unlike the authors' code (see shared notes) the mask is feathered, values are clipped before the cast to
uint8, and everything stays RGB. Donors: the `swap_tries` clips of other speakers that follow the clip's
seeded point on a hash ring of all clips (consistent hashing: O(log N + swap_tries) per clip, and adding clips
to the corpus changes few existing choices), kept from run to run while they stay valid (sticky_donors: then
adding clips changes none); one seeded random frame of each is tried and the best-fitting ones kept."""
from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from pathlib import Path

import cv2
import numpy as np

from preprocess.cache import Plan, StepCache
from preprocess.corpus import Clip
from preprocess.faces import output_images
from preprocess.settings import ShardsConfig
from sslfer.face_geometry import (EYES_AND_BROWS, MOUTH_BINS, NOSE_AND_MOUTH, SWAP_FIT, apply, inter_ocular,
                                  mouth_bin, mouth_opening, similarity)
from sslfer.npz import NpzArrays
from sslfer.shards.schema import SUMMARY, decode_jpeg, encode_jpeg, jpeg_at, join_jpegs


def _score(*parts) -> int:
    return int.from_bytes(hashlib.sha1("|".join(map(str, parts)).encode()).digest()[:8], "big")


def choose_donor_clips(clips: list[tuple[str, str]], seed: int, k: int) -> dict[str, list[str]]:
    """clip key -> its k donor clips, for clips given as (key, speaker): every clip hashed onto a ring, and each
    clip's donors are the first k clips of other speakers after its own seeded point. One sort, then
    O(log N + k) per clip (more only where one speaker holds most of the ring); adding or removing a clip
    changes the donors of the few clips whose walk passes it (~k / N of them). In NumPy, a block of clips at
    a time: each looks at the next k + 8 ring places at once, and walks on only where those held too few."""
    if k <= 0 or len({speaker for _, speaker in clips}) < 2:
        return {key: [] for key, _ in clips}
    keys = [key for key, _ in clips]
    codes: dict[str, int] = {}
    speaker = np.array([codes.setdefault(s, len(codes)) for _, s in clips], np.int32)
    points = np.array([_score(seed, "ring", key) for key in keys], np.uint64)
    ring = np.argsort(points, kind="stable")  # ring place -> clip
    points, ring_speaker, ring_key = points[ring], speaker[ring], np.array(keys, object)[ring]
    starts = np.searchsorted(points, np.array([_score(seed, "donor", key) for key in keys], np.uint64), "right")
    n, width = len(keys), min(k + 8, len(keys))
    donors: dict[str, list[str]] = {}
    for lo in range(0, n, 1 << 16):
        place = (starts[lo:lo + (1 << 16), None] + np.arange(width)) % n
        other = ring_speaker[place] != speaker[lo:lo + (1 << 16), None]
        taken = other & (np.cumsum(other, 1) <= k)
        whole = taken.sum(1) == k
        chosen = ring_key[place[whole][taken[whole]].reshape(-1, k)].tolist()
        for key, ds in zip((keys[i] for i in np.flatnonzero(whole) + lo), chosen):
            donors[key] = ds
        for i in np.flatnonzero(~whole) + lo:  # a speaker holding the next places: walk the whole ring
            chosen = []
            for j in range(n):
                other = (starts[i] + j) % n
                if ring_speaker[other] != speaker[i]:
                    chosen.append(ring_key[other])
                    if len(chosen) == k:
                        break
            donors[keys[i]] = chosen
    return {key: donors[key] for key in keys}


def sticky_donor_clips(clips: list[tuple[str, str]], previous: dict[str, list[str]], seed: int, k: int,
                       corpus: set[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """choose_donor_clips for the usable `clips`, except that a clip keeps its remembered (`previous`) donors
    while each is still usable (in `clips`) and the ring would not give it more: adding clips changes no existing
    clip's donors (a history-free choice cannot do that: the new clips must become donors of ~k existing clips
    each), and removing a clip changes only the donors of the clips it served.

    Returns (donors for this run, donors to remember). What is remembered outlives one run's accidents: a clip
    of the corpus (`corpus`: every key this run could have processed) that is not usable this run (its job
    failed, max_clips left it out) keeps its entry, and a clip whose remembered donors are all still in the
    corpus, only not all usable this run, gets the ring's choice for this run and keeps its remembered ones."""
    fresh = choose_donor_clips(clips, seed, k)
    speaker = dict(clips)
    used, remembered = {}, {key: ds for key, ds in previous.items() if key in corpus and key not in speaker}
    for key, own in clips:
        prev = previous.get(key)
        if prev is not None and len(prev) == len(fresh[key]) and all(d in speaker and speaker[d] != own
                                                                      for d in prev):
            used[key] = remembered[key] = prev
        else:
            used[key] = fresh[key]
            in_corpus = prev is not None and len(prev) >= len(fresh[key]) and all(d in corpus for d in prev)
            remembered[key] = prev if in_corpus else fresh[key]
    return used, remembered


def read_donor_table(path: Path, seed: int, k: int) -> dict[str, list[str]]:
    """The donors of the previous run (key -> donor keys), if it used this seed and k; else {}."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not path.is_file():
        return {}
    try:
        t = pq.read_table(path)
        meta = t.schema.metadata or {}
        if meta.get(b"seed") != str(seed).encode() or meta.get(b"k") != str(k).encode():
            return {}
        # each key as one string, not one per mention (a clip is named as a donor ~k times)
        donors = t.column("donors").combine_chunks()
        encoded = pc.dictionary_encode(pc.list_flatten(donors))
        names = np.array(encoded.dictionary.to_pylist(), object)
        one = {name: name for name in names}
        mentions = encoded.indices.to_numpy(zero_copy_only=False)
        ends = np.cumsum(pc.list_value_length(donors).to_numpy(zero_copy_only=False)).tolist()
        out, start = {}, 0
        for key, end in zip(t.column("key").to_pylist(), ends):
            out[one.get(key, key)] = names[mentions[start:end]].tolist()
            start = end
        return out
    except Exception:  # noqa: BLE001 - a damaged table: donors are chosen afresh
        return {}


def write_donor_table(path: Path, donors: dict[str, list[str]], seed: int, k: int) -> None:
    import pyarrow as pa

    from sslfer.files import write_table

    keys = sorted(donors)
    table = pa.table({"key": pa.array(keys, pa.string()),
                      "donors": pa.array([donors[key] for key in keys], pa.list_(pa.string()))})
    write_table(path, table.replace_schema_metadata({"seed": str(seed), "k": str(k)}))


def donor_frame(seed: int, key: str, frame: int, donor: str, n_donor_frames: int) -> int:
    return _score(seed, key, frame, donor, "frame") % n_donor_frames


def misfit(lm_face: np.ndarray, lm_donor: np.ndarray) -> tuple[float, np.ndarray]:
    """RMS distance of the eye, brow and nose landmarks (SWAP_FIT: not the lips, which carry the expression
    and are pasted whole) after the best similarity alignment, in the donor's inter-ocular distances, and that
    alignment (face -> donor)."""
    src, dst = lm_face[SWAP_FIT].astype(np.float64), lm_donor[SWAP_FIT].astype(np.float64)
    m = similarity(src, dst)
    rms = np.sqrt(((apply(m, src) - dst) ** 2).sum(1).mean())
    return float(rms / max(inter_ocular(lm_donor), 1e-6)), m


def _odd(x: float) -> int:
    return max(3, int(round(x)) // 2 * 2 + 1)


def inner_face_mask(landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for group in (EYES_AND_BROWS, NOSE_AND_MOUTH):
        hull = cv2.convexHull(np.round(landmarks[group]).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255)
    return mask


def blend_mask(lm_warped: np.ndarray, lm_donor: np.ndarray, shape: tuple[int, int], feather: float,
               dilate: float) -> np.ndarray:
    """float [h, w] in [0, 1]: the inner-face hulls of both faces, grown by `dilate` and then feathered by
    `feather` (both in the donor's inter-ocular distances). Growing first keeps the feathered edge outside the
    hull, so mouth corners and brows, which carry the expression, come whole from the face."""
    h, w = shape
    iod = max(inter_ocular(lm_donor), 1.0)
    mask = np.maximum(inner_face_mask(lm_warped, (h, w)), inner_face_mask(lm_donor, (h, w)))
    r = int(round(dilate * iod))
    if r > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), sigmaX=max(feather * iod, 1e-3))


def composite(face: np.ndarray, lm_face: np.ndarray, donor: np.ndarray, lm_donor: np.ndarray,
              m: np.ndarray, feather: float, colour_blur: float, dilate: float = 0.0) -> np.ndarray:
    """The face's inner region, aligned by `m` onto the donor, colour-corrected to the donor and blended with a
    mask grown by `dilate` and feathered (blend_mask). RGB uint8 in, RGB uint8 out."""
    h, w = donor.shape[:2]
    warped = cv2.warpAffine(face, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lm_warped = apply(m, lm_face)
    iod = max(inter_ocular(lm_donor), 1.0)
    mask = blend_mask(lm_warped, lm_donor, (h, w), feather, dilate)[..., None]
    k = _odd(colour_blur * iod)
    donor_f, warped_f = donor.astype(np.float32), warped.astype(np.float32)
    blur_donor = cv2.GaussianBlur(donor_f, (k, k), 0)
    blur_warped = cv2.GaussianBlur(warped_f, (k, k), 0)
    corrected = warped_f * blur_donor / np.maximum(blur_warped, 1.0)
    out = mask * np.clip(corrected, 0, 255) + (1 - mask) * donor_f
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def contact_sheet(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path) -> None:
    """A PNG of (face, composite, donor frame) rows, to check FaceSwap by eye."""
    from sslfer.files import atomic_write_bytes

    size = 128
    tiles = [np.hstack([cv2.resize(img, (size, size)) for img in row]) for row in rows]
    head = np.full((22, 3 * size, 3), 255, np.uint8)
    for i, text in enumerate(("face", "composite", "donor")):
        cv2.putText(head, text, (i * size + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.vstack([head, *tiles]), cv2.COLOR_RGB2BGR))
    atomic_write_bytes(path, png.tobytes())


SWAP_SHEET = "faceswap-sheet.png"


DONOR_TABLE = "faceswap-donors.parquet"  # each clip's donor clips, kept from run to run (sticky_donors)


def write_contact_sheet(path: Path, usable: list[Clip], plan: Plan, caches: dict, swap_infos: dict, seed: int,
                        rows: int = 8) -> None:
    """faceswap-sheet.png: face, composite and donor frame for a few seeded frames of different clips (those
    with composites, known from their info records: no output is opened but the ones shown)."""
    rng = np.random.default_rng(seed)
    with_swaps = [c for c in usable if swap_infos[c.key]["made"]]
    picked = []
    for i in rng.permutation(len(with_swaps))[:rows]:
        clip = with_swaps[i]
        swaps, info = caches["faceswap"].load(clip.key, plan.faceswap[clip.key])
        made = [j for j, d in enumerate(info["donors"]) if d]
        j = made[rng.integers(len(made))]
        donor_key, donor_frame = info["donors"][j].split(";")[0].rsplit("/", 1)
        with caches["faces"].open(clip.key, plan.faces[clip.key]) as faces, \
                caches["faces"].open(donor_key, plan.faces[donor_key]) as donor:
            picked.append((decode_jpeg(jpeg_at(faces["faces_blob"], faces["faces_idx"], j)),
                           decode_jpeg(jpeg_at(swaps["swaps_blob"], swaps["swaps_idx"],
                                               j * info["swaps_per_frame"])),
                           decode_jpeg(jpeg_at(donor["faces_blob"], donor["faces_idx"], int(donor_frame)))))
    if picked:
        contact_sheet(picked, path)


def made_composites(out: Path) -> bool:
    """Whether the last run's summary counts composites (or there is none to tell): with no FaceSwap work to
    do, a corpus without composites has no sheet to make, and finding that out means parsing every clip's
    FaceSwap record (~10 s a rerun at VoxCeleb2 size)."""
    try:
        return json.loads((out / SUMMARY).read_bytes()).get("composites", 1) > 0
    except (OSError, ValueError, AttributeError):
        return True


def swap_job(args):
    key, h, cfg, cache_root, face_path, donor_paths = args
    with ExitStack() as files:
        arrays = files.enter_context(NpzArrays(face_path))
        donors = {d: files.enter_context(NpzArrays(p)) for d, p in donor_paths.items()}
        out, info = make_swaps(key, arrays, donors, cfg)
    StepCache(cache_root, "faceswap").save(key, h, out, info)
    return info


def make_swaps(key: str, arrays: dict, donors: dict[str, dict], cfg: ShardsConfig) -> tuple[dict, dict]:
    """Composites for every frame of one clip, given its faces output and its donor clips' outputs."""
    faces = output_images(arrays, "faces")
    lms = arrays["landmarks"].astype(np.float32)
    donor_faces: dict[tuple, np.ndarray] = {}
    k = max(1, cfg.swaps_per_frame)
    jpegs, donor_names, misfits, rejects = [], [], [], []
    made = 0
    for i, (face, lm) in enumerate(zip(faces, lms)):
        tried = []
        for d, darr in donors.items():
            j = donor_frame(cfg.swap_seed, key, i, d, len(darr["time"]))
            err, m = misfit(lm, darr["landmarks"][j].astype(np.float32))
            tried.append((err, m, d, j))
        tried.sort(key=lambda t: t[0])
        fitting = [t for t in tried if t[0] <= cfg.swap_max_misfit][:k]
        misfits.append(tried[0][0] if tried else np.nan)
        if not fitting:
            reason = "no donor of another speaker" if not tried else \
                f"landmark geometry too different from every donor tried (misfit {tried[0][0]:.3f} > " \
                f"{cfg.swap_max_misfit:g})"
            rejects.append({"source": "", "key": key, "frame": i, "timestamp": float(arrays["time"][i]),
                            "step": "faceswap", "reason": reason})
        names = []
        for err, m, d, j in fitting:  # the best-fitting donors, one composite each
            if (d, j) not in donor_faces:
                blob, idx = donors[d]["faces_blob"], donors[d]["faces_idx"]
                donor_faces[(d, j)] = decode_jpeg(jpeg_at(blob, idx, j))
            img = composite(face, lm, donor_faces[(d, j)], donors[d]["landmarks"][j].astype(np.float32), m,
                               cfg.swap_feather, cfg.swap_colour_blur, cfg.swap_dilate)
            jpegs.append(encode_jpeg(img, cfg.jpeg_quality))
            names.append(f"{d}/{j}")
        jpegs += [b""] * (k - len(fitting))
        donor_names.append(";".join(names))
        made += bool(fitting)
    blob, idx = join_jpegs(jpegs)
    bins = mouth_bin(mouth_opening(lms)) if len(lms) else np.zeros(0, int)
    covered = np.array([bool(n) for n in donor_names], bool)
    coverage = {name: [int((bins == b).sum()), int((covered & (bins == b)).sum())]
                for b, (name, _) in enumerate(MOUTH_BINS)}
    info = {"donors": donor_names, "made": made, "composites": sum(1 for j in jpegs if j),
            "swaps_per_frame": k, "rejects": rejects, "coverage": coverage}
    return {"swaps_blob": blob, "swaps_idx": idx, "misfit": np.array(misfits, np.float32)}, info
