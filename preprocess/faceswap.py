"""Step `faceswap`: paste each kept frame's inner face (eyes+brows, nose+mouth) onto a frame of another
speaker, giving a positive that keeps the expression and changes the identity (paper §3.2.2).

Unlike the authors' code (see shared notes) the mask is feathered, values are clipped before the cast to
uint8, and everything stays RGB. Donors: the `swap_tries` clips of other speakers that follow the clip's
seeded point on a hash ring of all clips (consistent hashing: O(log N + swap_tries) per clip, and adding clips
to the corpus changes few existing choices), kept from run to run while they stay valid (sticky_donors: then
adding clips changes none); one seeded random frame of each is tried and the best-fitting ones kept."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from sslfer.face_geometry import EYES_AND_BROWS, NOSE_AND_MOUTH, SWAP_FIT, apply, inter_ocular, similarity


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
