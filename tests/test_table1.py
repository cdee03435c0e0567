"""`make table1`: pretrain what is missing, evaluate every preset on each dataset, one Table-1-shaped table."""
import json

from tests.conftest import build

TRAIN = "arch=resnet18 proj_hidden=64 batch_size=4 image_size=32 workers=0 max_steps=2"
EVAL = "arch=resnet18 image_size=32 epochs=1 batch_size=8 workers=1 gradcam_per_class=0 knn_min_images=4"


def test_table1_end_to_end_then_nothing_to_pretrain_and_slurm_scripts(good_corpus, affectnet_dir, tmp_path, capfd):
    from eval.table1 import main
    from preprocess.synthetic import make_expression_sets

    shards = tmp_path / "shards"
    build(good_corpus, shards)
    _, people = make_expression_sets(tmp_path / "sets", identities=2, per_class=3)
    args = ["--shards", str(shards), "--affectnet", str(affectnet_dir), "--lfw", str(people),
            "--presets", "simclr sslfer", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"),
            "--train", TRAIN, "--eval", EVAL]
    assert main(args) == 0
    table = (tmp_path / "rep" / "table1.md").read_text()
    header = table.splitlines()[2]
    for column in ("Freeze-AffectNet F1", "Finetune-AffectNet Acc", "Valence CCC", "Arousal RMSE", "FR-KNN ↓"):
        assert column in header
    assert "| simclr/backbone.pt |" in table and "| sslfer/backbone.pt |" in table
    # the table says which checkpoint each row is, and its epoch and step
    assert "Each row is its run's last step (backbone.pt)." in table
    assert "simclr/backbone.pt = " in table and "(epoch 1, step 2)" in table
    assert json.loads((tmp_path / "rep" / "table1.json").read_text())["pretrained_now"] == ["pretrain-simclr",
                                                                                             "pretrain-sslfer"]
    first = {ds: json.loads((tmp_path / "rep" / ds / "metrics.json").read_text()) for ds in ("affectnet", "lfw")}
    capfd.readouterr()
    assert main(args) == 0  # finished runs are not trained again, finished evaluations not redone
    assert json.loads((tmp_path / "rep" / "table1.json").read_text())["pretrained_now"] == []
    kept = [line for line in capfd.readouterr().out.splitlines() if line.startswith("kept ")]
    assert len(kept) == 4 and all("same checkpoint content and settings" in line for line in kept)  # 2 x 2 rows
    for ds, metrics in first.items():
        again = json.loads((tmp_path / "rep" / ds / "metrics.json").read_text())
        assert again["checkpoints"] == metrics["checkpoints"]
    # --monitor: every pretraining watches the set and each row is the best step by its kNN score
    expressions, _ = make_expression_sets(tmp_path / "sets", identities=2, per_class=3)
    best = ["--shards", str(shards), "--lfw", str(people), "--presets", "simclr", "--runs", str(tmp_path / "runs2"),
            "--out", str(tmp_path / "rep2"), "--monitor", str(expressions), "--checkpoint", "best", "--eval", EVAL,
            "--train", TRAIN + " monitor_every=1 monitor_max_images=20"]
    assert main(best) == 0
    table = (tmp_path / "rep2" / "table1.md").read_text()
    assert "| simclr/best.pt |" in table and "best online expression kNN on " + str(expressions) in table
    assert "simclr/best.pt = " in table and "monitor kNN 0." in table
    # --checkpoint paper: every kept epoch checkpoint evaluated, the table shows each run's best with its epoch
    paper = ["--shards", str(shards), "--affectnet", str(affectnet_dir), "--lfw", str(people), "--presets", "simclr",
             "--runs", str(tmp_path / "runs3"), "--out", str(tmp_path / "rep3"), "--checkpoint", "paper",
             "--eval", EVAL, "--train", TRAIN + " max_steps=0 epochs=3 keep_every=1 keep_top1=0"]
    assert main(paper) == 0
    kept_epochs = sorted(p.name for p in (tmp_path / "runs3" / "simclr" / "checkpoints").glob("epoch-*.pt"))
    assert kept_epochs == ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]
    table = (tmp_path / "rep3" / "table1.md").read_text()
    first_table = table.split("## affectnet")[0]
    rows = [line for line in first_table.splitlines() if line.startswith("| simclr/epoch-")]
    assert len(rows) == 1 and "(the best of 3 kept epochs by Freeze-AffectNet F1)" in rows[0]
    f1 = {n: r["linear_expr"]["test"]["f1"] for n, r in json.loads(
        (tmp_path / "rep3" / "affectnet" / "metrics.json").read_text())["checkpoints"].items()}
    best_f1 = max(f1.values())
    assert rows[0].split(" (the best")[0][2:] == max(n for n, v in f1.items() if v == best_f1)  # a tie: later
    assert all(f"| {n} |" in table.split("## affectnet")[1] for n in f1)  # every epoch in the dataset's table
    slurm_args = [*args, "--presets", "simclr byol", "--slurm", "--sbatch", "#SBATCH --time=2:00:00 #SBATCH -p gpu"]
    assert main([*slurm_args, "--sbatch", "#SBATCH --gres=gpu:8"]) != 0  # GPUs come from --gpus-per-node
    assert main([*slurm_args, "--nodes", "2", "--gpus-per-node", "8"]) == 0
    slurm = tmp_path / "rep" / "slurm"
    assert sorted(p.name for p in slurm.glob("*.sbatch")) == ["eval-affectnet.sbatch", "eval-lfw.sbatch",
                                                             "pretrain-byol.sbatch", "table1.sbatch"]
    submit = (slurm / "submit.sh").read_text()
    assert "--dependency=afterok$train_jobs" in submit and "--dependency=afterok$eval_jobs" in submit
    byol = (slurm / "pretrain-byol.sbatch").read_text().splitlines()
    # every GPU it asks for has a rank: 2 nodes x 8 tasks x 8 GPUs, started by configs/slurm/pretrain.sbatch
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gres=gpu:8", "#SBATCH --requeue",
                 "#SBATCH --signal=USR1@120", "#SBATCH --time=2:00:00", "#SBATCH -p gpu"):
        assert line in byol, line
    assert any(line.startswith("exec bash") and line.endswith("configs/slurm/pretrain.sbatch") for line in byol)
    assert "export PRESET=byol" in byol
    assert any("summary.json" in line and "exit 0" in line for line in byol)  # finished meanwhile: nothing to do
    for name in ("eval-affectnet", "eval-lfw"):
        lines = (slurm / f"{name}.sbatch").read_text().splitlines()
        assert "#SBATCH --gres=gpu:1" in lines and "#SBATCH --ntasks=1" in lines
    assert not any("gpu" in line for line in (slurm / "table1.sbatch").read_text().splitlines()
                   if line.startswith("#SBATCH") and "-p gpu" not in line)
