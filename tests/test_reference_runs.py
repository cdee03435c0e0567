"""Behaviour held across refactors: fixed-seed 30-step `sslfer` and `byol` runs on the test shards give the loss
and instance top-1 recorded in reference_runs.json at every step.

The values were recorded on main at 1270a1f, before the redesign moved any code. A change that alters them on
purpose (a new random-number order, a fixed bug) re-records them with SSLFER_RECORD_REFERENCE=1 and says why in
its commit message."""
import json
import os
from pathlib import Path

import pytest

from tests.conftest import build

REFERENCE = Path(__file__).with_name("reference_runs.json")
SETTINGS = ["arch=resnet18", "proj_hidden=64", "batch_size=4", "image_size=32", "workers=0", "seed=0",
            "max_steps=30", "log_every=1", "ckpt_minutes=1000"]


@pytest.fixture(scope="module")
def reference_shards(good_corpus, tmp_path_factory):
    shards = tmp_path_factory.mktemp("reference_shards")
    build(good_corpus, shards)
    return shards


def run_steps(shards, run, preset):
    from sslfer.config import load_config
    from train.pretrain import pretrain
    from train.settings import TrainConfig, preset_path

    pretrain(shards, run, load_config(TrainConfig, [preset_path(preset)], SETTINGS))
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {"step": [r["step"] for r in rows], "loss": [r["loss"] for r in rows], "top1": [r["top1"] for r in rows]}


@pytest.mark.parametrize("preset", ["sslfer", "byol"])
def test_fixed_seed_runs_give_the_recorded_loss_and_top1_at_every_step(preset, reference_shards, tmp_path):
    got = run_steps(reference_shards, tmp_path / "run", preset)
    if os.environ.get("SSLFER_RECORD_REFERENCE") == "1":
        recorded = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}
        REFERENCE.write_text(json.dumps({**recorded, preset: got}) + "\n")
        pytest.skip(f"recorded {preset} into {REFERENCE.name}")
    want = json.loads(REFERENCE.read_text())[preset]
    assert got["step"] == list(range(1, 31)) == want["step"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
    assert got["top1"] == pytest.approx(want["top1"], abs=1e-6)
