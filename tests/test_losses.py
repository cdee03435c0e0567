"""Losses and samplers against values worked out by hand."""
import math

import numpy as np
import pytest
import torch

from train.losses import byol_loss, false_negatives, info_nce, moco_loss
from train.positives.hardneg import hard_negative, hard_negative_apart
from train.positives.timeaug import frame_offset_positive, time_offset, timeaug_positive

# Four unit views: 0 and 1 are instance A's two views, 2 and 3 instance B's.
Z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.8, 0.6]])
POS = torch.tensor([1, 0, 3, 2])
TAU = 0.5


def cos(i, j):
    return float(Z[i] @ Z[j])


def test_info_nce_paper_form_by_hand():
    # view 0: positive 1, negatives {2, 3}: -s01 + log(e^s02 + e^s03)
    want = []
    for a, p in enumerate(POS.tolist()):
        negs = [k for k in range(4) if k not in (a, p)]
        want.append(-cos(a, p) / TAU + math.log(sum(math.exp(cos(a, k) / TAU) for k in negs)))
    out = info_nce(Z, POS, TAU)
    assert float(out["l1"]) == pytest.approx(sum(want) / 4, rel=1e-6)
    assert float(out["loss"]) == pytest.approx(sum(want) / 4, rel=1e-6)
    assert float(out["l2"]) == 0


def test_info_nce_simclr_form_by_hand():
    want = []
    for a, p in enumerate(POS.tolist()):
        others = [k for k in range(4) if k != a]
        want.append(-cos(a, p) / TAU + math.log(sum(math.exp(cos(a, k) / TAU) for k in others)))
    out = info_nce(Z, POS, TAU, positive_in_denominator=True)
    assert float(out["loss"]) == pytest.approx(sum(want) / 4, rel=1e-6)
    # equals cross-entropy over the other views, the textbook NT-Xent
    logits = (Z @ Z.T / TAU).masked_fill(torch.eye(4, dtype=torch.bool), float("-inf"))
    assert float(out["loss"]) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, POS)), rel=1e-6)


@pytest.mark.parametrize("with_positive", [False, True])
def test_maskfn_terms_by_hand(with_positive):
    z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, -0.8], [-1.0, 0.0], [0.0, -1.0]])
    pos = torch.tensor([1, 0, 3, 2, 5, 4])
    fn = torch.tensor([[2], [-1], [0], [-1], [-1], [-1]])  # view 0's false negative is 2, view 2's is 0
    s = (z @ z.T / TAU).tolist()
    l1, l2 = [], []
    for a in range(6):
        p = int(pos[a])
        f = [int(x) for x in fn[a] if x >= 0]
        negs = [k for k in range(6) if k not in (a, p, *f)]
        neg = sum(math.exp(s[a][k]) for k in negs)
        l1.append(-s[a][p] + math.log(neg + (math.exp(s[a][p]) if with_positive else 0)))
        for b in f:
            l2.append(-s[a][b] + math.log(neg + (math.exp(s[a][b]) if with_positive else 0)))
    out = info_nce(z, pos, TAU, fn, fn_weight=0.5, positive_in_denominator=with_positive)
    assert float(out["l1"]) == pytest.approx(np.mean(l1), rel=1e-6)
    assert float(out["l2"]) == pytest.approx(np.mean(l2), rel=1e-6)
    assert float(out["loss"]) == pytest.approx(np.mean(l1) + 0.5 * np.mean(l2), rel=1e-6)


def test_top1_counts_views_whose_positive_is_nearest():
    out = info_nce(Z, POS, TAU)
    nearest = [max((k for k in range(4) if k != a), key=lambda k: cos(a, k)) for a in range(4)]
    assert float(out["top1"]) == pytest.approx(np.mean([n == p for n, p in zip(nearest, POS.tolist())]))


def test_false_negatives_skip_self_positive_and_same_speaker():
    d = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.99, 0.1], [0.9, 0.4], [0.0, 1.0], [0.1, 1.0]])
    pos = torch.tensor([3, 4, 5, 0, 1, 2])
    speaker = torch.tensor([0, 0, 1, 0, 0, 1])  # views 0,1,3,4 one person; 2,5 another
    fn = false_negatives(d, pos, speaker, 1)
    assert fn[0].tolist() == [2]       # 1 and 3 share its speaker, so the nearest allowed is 2
    assert fn[2].tolist() == [1]       # 5 is its positive (and same speaker); of the others, 1 is nearest
    fn2 = false_negatives(d, pos, speaker, 3)
    assert fn2[2].tolist() == [1, 0, 3]  # ranked by cosine similarity of the descriptors
    assert fn2[0].tolist() == [2, 5, -1]  # only two views of another speaker exist


def test_moco_and_byol_losses_by_hand():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    out = moco_loss(q, k, queue, 1.0)
    want = -0.0 + math.log(math.exp(0) + math.exp(1) + math.exp(0))
    assert float(out["loss"]) == pytest.approx(want, rel=1e-6)
    assert float(byol_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))) == pytest.approx(2.0)


def test_time_offsets_follow_the_decreasing_triangular_distribution():
    rng = np.random.default_rng(0)
    t = np.array([time_offset(rng, 1.0) for _ in range(40000)])
    assert t.min() >= 0 and t.max() <= 1
    assert t.mean() == pytest.approx(1 / 3, abs=0.01)
    for q in (0.1, 0.25, 0.5, 0.75):  # CDF F(t) = 1 - (1 - t)^2
        assert (t <= q).mean() == pytest.approx(1 - (1 - q) ** 2, abs=0.01)
    hist, _ = np.histogram(t, bins=5, range=(0, 1))
    assert all(np.diff(hist) < 0)  # decreasing


def test_timeaug_positive_uses_timestamps_both_directions_within_t1():
    rng = np.random.default_rng(1)
    times = np.arange(0, 20, 0.01)  # dense: offsets follow the distribution closely
    offs = np.array([times[timeaug_positive(times, 1000, rng, 1.0)] - times[1000] for _ in range(20000)])
    assert np.abs(offs).max() <= 1.0 + 1e-9
    assert (offs > 0).mean() == pytest.approx(0.5, abs=0.02)
    assert np.abs(offs).mean() == pytest.approx(1 / 3, abs=0.01)
    # at the clip's start, offsets go forward; an irregular stream uses its real timestamps
    irregular = np.array([0.0, 0.1, 0.5, 0.55, 1.7, 2.0])
    picks = {timeaug_positive(irregular, 0, rng, 1.0) for _ in range(500)}
    assert picks <= {0, 1, 2, 3} and irregular[max(picks)] <= 1.0
    assert timeaug_positive(np.array([0.0, 5.0]), 0, rng, 1.0) == 0  # no other frame within T1


def test_hard_negative_is_at_least_the_gap_away():
    rng = np.random.default_rng(2)
    times = np.arange(0, 8, 0.24)
    for a in range(len(times)):
        h = hard_negative(times, a, rng, 3.0)
        assert h is None or abs(times[h] - times[a]) >= 3.0 - 1e-9
    assert hard_negative(np.arange(0, 2.5, 0.24), 3, rng, 3.0) is None


def test_near_duplicates_are_neither_positive_nor_negative_by_hand():
    """Six views of three instances. Views 0 and 2 are one clip 0.5 s apart (near-duplicates); view 4 is the
    same clip 5 s away (a hard negative: stays a negative)."""
    from train.losses import near_duplicates

    z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, -0.8], [-1.0, 0.0], [0.0, -1.0]])
    pos = torch.tensor([3, 4, 5, 0, 1, 2])
    clip = torch.tensor([7, 8, 7, 7, 8, 7])
    time_ = torch.tensor([1.0, 0.0, 1.5, 1.2, 0.4, 6.0])
    ignore = near_duplicates(clip, time_, 3.0)
    # clip 7: views 0 (1.0 s), 2 (1.5 s), 3 (1.2 s) are within 3 s of each other; 5 (6.0 s) is not
    want_pairs = {(0, 2), (0, 3), (2, 3), (1, 4)}
    assert {(i, j) for i, j in ignore.nonzero().tolist() if i < j} == want_pairs
    s = (z @ z.T / TAU).tolist()
    l1 = []
    for a in range(6):
        p = int(pos[a])
        negs = [k for k in range(6) if k not in (a, p) and (min(a, k), max(a, k)) not in want_pairs]
        l1.append(-s[a][p] + math.log(sum(math.exp(s[a][k]) for k in negs)))
    out = info_nce(z, pos, TAU, ignore=ignore)
    assert float(out["loss"]) == pytest.approx(np.mean(l1), rel=1e-6)
    # pairs that are not a view's designated positive: (0,2), (2,3), (1,4) is 1's positive, (0,3) is 0's
    assert float(out["masked_pairs"]) == 2
    # top-1: the positive competes with the negatives only, not with the masked views
    top = [max([k for k in range(6) if k != a and (k == pos[a] or (min(a, k), max(a, k)) not in want_pairs)],
               key=lambda k: s[a][k]) == pos[a] for a in range(6)]
    assert float(out["top1"]) == pytest.approx(np.mean(top))


def test_losses_under_bf16_autocast_equal_fp32():
    from train.losses import near_duplicates

    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 128, generator=g)
    pos = (torch.arange(64) + 32) % 64
    region = torch.randn(64, 32, generator=g)
    speaker = torch.arange(64) % 16
    clip = torch.arange(64) % 40
    ignore = near_duplicates(clip, torch.zeros(64), 3.0)
    ref = info_nce(z, pos, 0.07, false_negatives(region, pos, speaker, 1), 0.5, False, ignore)
    raw = info_nce.__wrapped__  # the same function without the fp32 guard: proves the test can fail
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = info_nce(z, pos, 0.07, false_negatives(region, pos, speaker, 1), 0.5, False, ignore)
        unguarded = raw(z, pos, 0.07, false_negatives(region, pos, speaker, 1), 0.5, False, ignore)
        moco = moco_loss(z[:8], z[8:16], z[16:], 0.07)
    for k in ("loss", "l1", "l2"):
        assert float(got[k]) == pytest.approx(float(ref[k]), abs=1e-5)
    assert abs(float(unguarded["loss"]) - float(ref["loss"])) > 1e-4
    assert float(moco["loss"]) == pytest.approx(float(moco_loss(z[:8], z[8:16], z[16:], 0.07)["loss"]), abs=1e-5)


def test_official_timeaug_offsets_follow_the_frame_weights():
    rng = np.random.default_rng(3)
    offs = np.array([frame_offset_positive(100, 50, rng, [2, 3, 4, 5, 6], [5, 4, 3, 2, 1]) - 50
                     for _ in range(30000)])
    assert set(np.abs(offs)) == {2, 3, 4, 5, 6}
    for d, w in zip([2, 3, 4, 5, 6], [5, 4, 3, 2, 1]):
        assert (np.abs(offs) == d).mean() == pytest.approx(w / 15, abs=0.01)
    assert (offs > 0).mean() == pytest.approx(0.5, abs=0.01)
    assert all(frame_offset_positive(10, 1, rng, [2, 3], [1, 1]) in (3, 4) for _ in range(50))  # only forward
    assert frame_offset_positive(3, 1, rng, [5], [1]) == 2  # neither side fits: the clip's far end
    assert all(frame_offset_positive(100, 41, rng, [2, 3], [1, 1], (40, 46)) in (43, 44) for _ in range(50))


@pytest.mark.parametrize("official", [False, True])
def test_a_hardneg_group_keeps_its_four_negatives_when_the_clip_allows(official):
    """Anchor a, its positive p, hard negative h and h's positive hp: h and hp are >= T2 from a and p whenever
    some frame of the clip is >= T2 from both a and p, for TimeAug by time and by frame offsets."""
    rng = np.random.default_rng(4)
    gap = 2.88 if official else 3.0

    def positive(t, i, bounds=None):
        if official:
            return frame_offset_positive(len(t), i, rng, [2, 3, 4, 5, 6], [5, 4, 3, 2, 1], bounds)
        return timeaug_positive(t, i, rng, 1.0, bounds)

    kept = 0
    for seconds in (4.0, 6.0, 8.2, 20.0):
        t = np.arange(0, seconds, 6 / 25)
        for _ in range(300):
            a = int(rng.integers(len(t)))
            p = positive(t, a)
            found = hard_negative_apart(t, a, p, rng, gap)
            far = (np.abs(t - t[a]) >= gap - 1e-9) & (np.abs(t - t[p]) >= gap - 1e-9)
            assert (found is not None) == far.any()
            if found is None:
                continue
            h, (lo, hi) = found
            assert far[lo:hi + 1].all() and (lo == 0 or not far[lo - 1]) and (hi == len(t) - 1 or not far[hi + 1])
            hp = positive(t, h, (lo, hi))
            assert min(abs(t[i] - t[j]) for i in (a, p) for j in (h, hp)) >= gap - 1e-9
            assert abs(t[hp] - t[h]) <= (6 * 6 / 25 if official else 1.0) + 1e-9
            kept += hp != h
    assert kept > 300  # the hard negative's positive is a TimeAug frame, not just the frame itself


def test_near_duplicates_are_masked_between_groups_only():
    """Two groups of one clip (a step that repeats a clip): inside a group the views 1 s apart stay what they
    are; the same distance across groups is masked."""
    from train.losses import near_duplicates

    clip = torch.tensor([5, 5, 5, 5])
    t = torch.tensor([0.0, 1.0, 0.5, 1.5])
    group = torch.tensor([0, 0, 1, 1])
    ignore = near_duplicates(clip, t, 3.0, group)
    assert {(i, j) for i, j in ignore.nonzero().tolist() if i < j} == {(0, 2), (0, 3), (1, 2), (1, 3)}
    assert near_duplicates(clip, t, 3.0).sum() == 12


def test_a_hard_negative_exactly_t2_away_is_not_masked():
    from train.losses import near_duplicates

    times = np.arange(0, 10, 6 / 25)  # 25/6 fps
    gap = 2.88  # 12 frames, the official gap
    t = torch.tensor([[times[a], times[a + 12]] for a in range(20)], dtype=torch.float64).reshape(-1)
    clip = torch.arange(20).repeat_interleave(2)
    assert not near_duplicates(clip, t, gap).any()
    assert near_duplicates(clip, t + torch.tensor([0.0, -0.01]).repeat(20), gap).sum() == 40
