"""The epoch plan: which clips give each step's anchors."""
import numpy as np
import pytest

from train.plan import epoch_plan, steps_per_epoch, stream_order


def shards_of(n_clips, per_shard):
    ids = np.arange(n_clips)
    return [ids[i:i + per_shard] for i in range(0, n_clips, per_shard)]


def test_stream_reads_every_clip_once_keeping_each_shards_order():
    shards = shards_of(1000, 130)
    order = stream_order(shards, 4, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(1000))
    for s in shards:
        pos = np.flatnonzero(np.isin(order, s))
        assert (order[pos] == s).all()  # in stored order
    assert not (order == np.sort(order)).all()  # interleaved


@pytest.mark.parametrize("uses", [1, 3])
def test_anchors_are_distinct_clips_and_each_clip_gives_uses_anchors(uses):
    n, anchors = 960, 64
    steps = steps_per_epoch(n, anchors, uses)
    assert steps == n * uses // anchors
    plan = epoch_plan(shards_of(n, 100), steps, anchors, uses, 4 * anchors, 16, seed=0, epoch=0)
    assert plan.shape == (steps, anchors)
    assert np.bincount(plan.ravel(), minlength=n).tolist() == [uses] * n  # the epoch visits every clip
    distinct = np.array([len(set(row)) for row in plan])
    assert (distinct[:-2] == anchors).all()  # with several uses per clip, the epoch's last steps may repeat one
    assert distinct.min() >= 0.95 * anchors


def test_a_corpus_smaller_than_a_step_repeats_clips_evenly():
    plan = epoch_plan(shards_of(8, 8), 1, 20, 1, 80, 16, seed=0, epoch=0)
    counts = np.bincount(plan[0], minlength=8)
    assert counts.min() >= 2 and counts.max() <= 3 and counts.sum() == 20


def test_epochs_differ_and_the_plan_is_reproducible():
    shards = shards_of(500, 100)
    a = epoch_plan(shards, 7, 64, 1, 256, 16, seed=1, epoch=0)
    assert (a == epoch_plan(shards, 7, 64, 1, 256, 16, seed=1, epoch=0)).all()
    assert (a != epoch_plan(shards, 7, 64, 1, 256, 16, seed=1, epoch=1)).any()


def test_clips_meet_different_clips_from_epoch_to_epoch():
    """Distinct batch-mates per clip over 10 epochs, against a uniform shuffle of the whole corpus (the
    benchmark bench/bench_batches.py measures it at the issue's size)."""
    from bench.bench_batches import batch_mates, ideal_batch_mates

    n, anchors, epochs = 600, 32, 10
    shards = shards_of(n, 150)
    steps = steps_per_epoch(n, anchors, 1)
    plans = [epoch_plan(shards, steps, anchors, 1, 4 * anchors, 16, seed=0, epoch=e) for e in range(epochs)]
    got = batch_mates(plans, n).mean()
    assert got >= 0.8 * ideal_batch_mates(n, anchors, epochs, steps)
