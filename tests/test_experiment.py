"""make experiment's bookkeeping (bench/experiment.py): which checkpoint files a run is evaluated with, and the
results and differences tables computed from the evaluations' metrics.json, checked against values worked out by
hand."""
import json

import numpy as np
import torch

from bench.experiment import TABLE1_ROWS, checkpoint_files, difference, tabulate


def _run(tmp_path, name: str, last_step: int, best_step: int):
    run = tmp_path / name
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1)}, run / "backbone.pt")
    (run / "backbone.json").write_text(json.dumps({"trained_with": {"steps": last_step, "epochs": 1}}))
    torch.save({"step": best_step, "epoch": 0, "model": {}}, run / "checkpoints" / "best.pt")
    return run


def test_best_checkpoint_is_evaluated_once_when_it_is_the_last_step(tmp_path):
    same, earlier = _run(tmp_path, "a", 100, 100), _run(tmp_path, "b", 100, 50)
    assert checkpoint_files(same) == {"last": same / "backbone.pt", "best": same / "backbone.pt", "best_step": 100}
    assert checkpoint_files(earlier) == {"last": earlier / "backbone.pt",
                                         "best": earlier / "checkpoints" / "best.pt", "best_step": 50}


def test_difference_states_its_standard_error_and_whether_it_is_noise():
    # means 0.60 and 0.50; sample variances 0.0002 and 0.0008 over 2 runs each: se = sqrt(0.0001 + 0.0004)
    assert difference(np.array([0.59, 0.61]), np.array([0.48, 0.52])) == "+10.0 ± 2.2 (higher)"
    assert difference(np.array([0.50, 0.54]), np.array([0.51, 0.49])) == "+2.0 ± 2.2 (within noise)"
    assert difference(np.array([0.40, 0.42]), np.array([0.50, 0.52])) == "-10.0 ± 1.4 (lower)"
    assert difference(np.array([0.6]), np.array([0.5])) == "+10.0 ± nan (within noise)"


def test_tabulate_means_over_probe_seeds_then_runs(tmp_path):
    runs = {"simclr": [tmp_path / "simclr-s0", tmp_path / "simclr-s1"],
            "sslfer": [tmp_path / "sslfer-s0", tmp_path / "sslfer-s1"]}
    files = {d: {"last": d / "backbone.pt", "best": d / "backbone.pt"} for dirs in runs.values() for d in dirs}
    files[runs["sslfer"][1]].update(best=runs["sslfer"][1] / "best.pt", best_step=0)
    f1 = {"random": [0.20, 0.22], "simclr-s0": [0.30, 0.32], "simclr-s1": [0.34, 0.36],
          "sslfer-s0": [0.40, 0.42], "sslfer-s1": [0.44, 0.46], "sslfer-s1/best": [0.50, 0.50]}

    def metrics(shift: float, knn: bool) -> dict:
        rows, prov = {"random resnet18": {}}, {}
        for key, seeds in f1.items():
            name = "random resnet18" if key == "random" else key
            if key != "random":
                run = tmp_path / key.split("/")[0]
                prov[name] = {"file": str(run / ("best.pt" if key.endswith("best") else "backbone.pt"))}
            if knn:
                rows[name] = {"fr_knn": {"acc": seeds[0] + 0.1}}
            else:
                rows[name] = {"linear_expr": {"test": {}, "test_per_seed": [
                    {"f1": v + shift, "acc": v + 0.05} for v in seeds]}}
        return {"checkpoints": rows, "provenance": prov}

    fer = {"landmarks": metrics(0.0, False), "none": metrics(0.1, False)}
    lines, diffs, per_run = tabulate({"main": runs}, files, fer, metrics(0.0, True))
    by_row = {(c[1], c[2]): c for c in (line.split(" | ") for line in lines[2:])}
    # simclr: per-run means 0.31, 0.35 -> 33.0 ± 2.0 (population std over runs); probe spread 0.01 each
    assert by_row[("SimCLR", "last")][3:7] == ["2 × 2", "33.0 ± 2.0", "1.0", "43.0 ± 2.0"]
    assert by_row[("(f) all four", "best (= last in 1/2, = step 0 in 1/2)")][4] == "45.5 ± 4.5"  # runs 0.41 and 0.50
    assert by_row[("random", "—")][4] == "21.0"
    assert per_run["main"][TABLE1_ROWS["sslfer"]]["best"]["knn"] == [0.5, 0.6]
    # sslfer over simclr, last: 0.43 - 0.33; sample variances 0.0008 each over 2 runs: se = 0.02828
    row = next(line for line in diffs if "| last | (f) all four | SimCLR |" in line)
    assert "+10.0 ± 2.8 (higher)" in row
