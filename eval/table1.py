"""`make table1`: the paper's Table 1 in one command. Pretrains every preset that has no finished run
(RUNS/<preset>/summary.json), evaluates all of them on each dataset given (one evaluation per dataset, so faces
are aligned once), and joins the reports into one Table-1-shaped table. With --slurm it writes one sbatch script
per step and a submit.sh that chains them with job dependencies instead of running anything.

    python -m eval.table1 --shards SHARDS [--affectnet DIR] [--fer2013 DIR] [--rafdb DIR] [--lfw DIR]
        [--presets "simclr ... sslfer"] [--runs runs] [--out reports/table1]
        [--monitor DIR] [--checkpoint last|best|paper] [--train "key=value ..."] [--eval "key=value ..."]
        [--slurm [--sbatch "#SBATCH lines"] [--nodes N] [--gpus-per-node G] [--cpus-per-task C]]

Which checkpoint a row is: the paper saves checkpoints every 5 epochs once instance top-1 reaches 60% and reports
the best stage (its Table 3: 150-250 epochs, best at 210). Here the choice is stated in the table:
`--checkpoint last` (the default) evaluates the end of training (RUN/backbone.pt); `--checkpoint best` evaluates
RUN/checkpoints/best.pt, the trained step with the best online expression kNN on the --monitor folder (pick a set
that is not a column of the table). `last` stays the default until a measurement shows `best` beating it on data
apart from the monitor's. `--checkpoint paper` is the paper's rule: every checkpoint the pretraining kept
(RUN/checkpoints/epoch-*.pt: every 5 epochs once instance top-1 reaches 60%, keep_every= and keep_top1=) is
evaluated, and the table shows each run's best by its first column, with its epoch; the per-dataset tables under it
list every epoch (the shape of the paper's Table 3). Selecting on the reported numbers is optimistic, as the
paper's was."""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

PRETRAIN_SBATCH = Path(__file__).resolve().parents[1] / "configs" / "slurm" / "pretrain.sbatch"
# Table 1's rows, in its order
TABLE1_PRESETS = ["simclr", "mocov2", "byol", "timeaug", "timeaug-hardneg", "timeaug-hardneg-cutmix",
                  "timeaug-faceswap-maskfn", "timeaug-hardneg-faceswap", "sslfer"]


def table1_datasets() -> list:
    """The registered datasets with Table 1 columns (eval/registry.py), in its order."""
    from eval.registry import DATASETS

    return [d for d in DATASETS.values() if d.columns]


def finished(run: Path) -> bool:
    return (run / "summary.json").is_file() and (run / "backbone.pt").is_file()


def plan(a) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]], list[str]]:
    """(pretraining steps, evaluation steps, the join command), each a (name, argv)."""
    py = sys.executable
    runs, out = Path(a.runs), Path(a.out)
    presets = a.presets.split()
    monitor = [f"monitor={a.monitor}"] if a.monitor else []
    train = [(f"pretrain-{p}", [py, "-m", "train", a.shards, str(runs / p), "--preset", p, *monitor,
                                *shlex.split(a.train)])
             for p in presets if not finished(runs / p)]
    chosen = {"best": "checkpoints/best.pt", "paper": "checkpoints/epoch-*.pt"}.get(a.checkpoint, "backbone.pt")
    ckpts = [x for p in presets for x in ("--ckpt", str(runs / p / chosen))]
    evals = []
    for ds in table1_datasets():
        data = getattr(a, ds.name)
        if data:
            evals.append((f"eval-{ds.name}", [py, "-m", "eval", ds.name, data, *ckpts, "--report", str(out / ds.name),
                                              "--paper-settings", *ds.table1_args, *shlex.split(a.eval)]))
    rule = {"best": f"Each row is its run's checkpoints/best.pt: the step with the best online expression kNN on "
                    f"{a.monitor} (checked every monitor_every steps).",
            "paper": "Each row is the best of its run's kept epoch checkpoints (checkpoints/epoch-*.pt, the paper's "
                     "rule) by the table's first column, selected on these test numbers as the paper's Table 3 "
                     "does; every epoch is in the tables below."}.get(a.checkpoint,
                                                                      "Each row is its run's last step (backbone.pt).")
    join = [py, "-m", "eval", "report", *[str(out / ds.name) for ds in table1_datasets() if getattr(a, ds.name)],
            "--out", str(out / "table1.md"), "--note", rule, *(["--best-epoch"] if a.checkpoint == "paper" else [])]
    return train, evals, join


def write_slurm(a, train, evals, join) -> Path:
    """One sbatch script per step, and submit.sh: evaluations after every pretraining, the table after them.
    A pretraining job runs configs/slurm/pretrain.sbatch on a.nodes x a.gpus_per_node ranks (one per GPU,
    requeued from its checkpoint at the time limit); an evaluation job asks for one GPU; the table for none."""
    folder = (Path(a.out) / "slurm").resolve()
    if any(c.isspace() for c in str(folder)):
        raise ValueError(f"{folder}: SLURM's #SBATCH --output cannot hold a path with spaces")
    directives = ["#SBATCH" + d.rstrip() for d in a.sbatch.split("#SBATCH")[1:]]
    gpu_lines = [d for d in directives if re.search(r"--(gres|gpus|gpus-per-node|gpus-per-task)[= ]", d)]
    if gpu_lines:
        raise ValueError(f"--sbatch {gpu_lines[0]!r}: give the pretraining's GPUs with --nodes and "
                         f"--gpus-per-node (make table1 NODES= GPUS_PER_NODE=); each evaluation asks for one GPU")
    folder.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    gpus, cpus = a.gpus_per_node, a.cpus_per_task
    # a requeued evaluation keeps the rows it had finished (eval/rows.py) and does the rest
    eval_resources = ["#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={cpus}", "#SBATCH --requeue",
                      "#SBATCH --open-mode=append"] + (
        ["#SBATCH --gres=gpu:1"] if gpus else [])

    def script(name: str, body: str, resources: list[str], extra: list[str] = ()) -> str:
        path = folder / f"{name}.sbatch"
        path.write_text("\n".join(["#!/bin/bash", f"#SBATCH --job-name={name}",
                                   f"#SBATCH --output={folder}/{name}-%j.log", *extra, *directives, *resources,
                                   "set -euo pipefail", f"cd {shlex.quote(str(cwd))}"]) + "\n" + body)
        return shlex.quote(str(path))

    def pretraining(name: str, argv: list[str]) -> str:
        # argv: python -m train SHARDS RUN --preset P [options]; the options go in a file, intact (the job script
        # reads ARGS_FILE), as make pretrain-slurm hands them over
        options = folder / f"{name}.args"
        options.write_bytes(b"".join(o.encode() + b"\0" for o in argv[7:]))
        env = {"WORKDIR": str(cwd), "PYTHON": argv[0], "SHARDS": argv[3], "RUN": argv[4], "PRESET": argv[6],
               "ARGS_FILE": str(options)}
        return ("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
                + f"exec bash {shlex.quote(str(PRETRAIN_SBATCH))}\n")

    tasks = gpus or a.tasks_per_node
    train_resources = [f"#SBATCH --nodes={a.nodes}", f"#SBATCH --ntasks-per-node={tasks}",
                       f"#SBATCH --cpus-per-task={cpus}"] + ([f"#SBATCH --gres=gpu:{gpus}"] if gpus else [])
    lines = ["#!/bin/bash", "# submits Table 1's steps with their dependencies (a pretraining that has finished "
             "meanwhile exits at once)", "set -euo pipefail", "train_jobs=''"]
    for name, argv in train:
        run_dir = Path(argv[4]).resolve()
        body = (f"if [ -f {shlex.quote(str(run_dir / 'summary.json'))} ]; then echo 'already finished'; exit 0; fi\n"
                + pretraining(name, argv))
        path = script(name, body, train_resources, ["#SBATCH --signal=USR1@120", "#SBATCH --requeue",
                                                    "#SBATCH --open-mode=append"])
        lines.append(f"train_jobs=\"$train_jobs:$(sbatch --parsable {path})\"")
    lines.append("eval_jobs=''")
    for name, argv in evals:
        path = script(name, shlex.join(argv) + "\n", eval_resources)
        lines.append(f"eval_jobs=\"$eval_jobs:$(sbatch --parsable ${{train_jobs:+--dependency=afterok$train_jobs}} "
                     f"{path})\"")
    table = script("table1", shlex.join(join) + "\n", ["#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=1"])
    lines.append(f"sbatch --parsable ${{eval_jobs:+--dependency=afterok$eval_jobs}} {table}")
    submit = folder / "submit.sh"
    submit.write_text("\n".join(lines) + "\n")
    submit.chmod(0o755)
    return submit


def main(argv=None) -> int:
    from sslfer.plugins import plugins_loaded

    if not plugins_loaded():
        return 2
    p = argparse.ArgumentParser(prog="python -m eval.table1", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="make shards output (the pretraining corpus)")
    for ds in table1_datasets():
        p.add_argument(f"--{ds.name}", default="", help=f"{ds.data} (its columns are left out when not given)")
    p.add_argument("--presets", default=" ".join(TABLE1_PRESETS), help="presets, in the table's order")
    p.add_argument("--runs", default="runs", help="run folders: RUNS/<preset>")
    p.add_argument("--out", default="reports/table1", help="reports per dataset and table1.md")
    p.add_argument("--monitor", default="", help="labelled expression folder (<class>/*.jpg) the pretraining "
                                                 "watches (monitor=): kNN accuracy every monitor_every steps, "
                                                 "best step kept as checkpoints/best.pt")
    p.add_argument("--checkpoint", choices=["last", "best", "paper"], default=None,
                   help="which checkpoint each row evaluates: last (default), best (by the monitor, --monitor) or "
                        "paper (every kept epoch checkpoint, the best of each run shown with its epoch)")
    p.add_argument("--train", default="", help="options for every pretraining, 'key=value ...'")
    p.add_argument("--eval", default="", help="options for every evaluation, 'key=value ...'")
    p.add_argument("--slurm", action="store_true", help="write sbatch scripts and submit.sh instead of running")
    p.add_argument("--sbatch", default="", help="#SBATCH lines for every script (partition, account, time ...; "
                                                "not GPUs: see the next options)")
    p.add_argument("--nodes", type=int, default=1, help="nodes of each pretraining job (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8,
                   help="GPUs per node of each pretraining job, one rank each (default 8); each evaluation job "
                        "asks for one; 0 = CPU ranks (--tasks-per-node of them)")
    p.add_argument("--tasks-per-node", type=int, default=1, help="CPU ranks per node when --gpus-per-node 0")
    p.add_argument("--cpus-per-task", type=int, default=8, help="CPUs of each rank and of each evaluation job")
    a = p.parse_args(argv)
    if not any(getattr(a, ds.name) for ds in table1_datasets()):
        p.error(f"give at least one of {' '.join('--' + ds.name for ds in table1_datasets())}")
    a.checkpoint = a.checkpoint or "last"
    if a.checkpoint == "best" and not a.monitor:
        p.error("--checkpoint best needs --monitor DIR (the set whose kNN score picks the step)")
    if a.monitor and not Path(a.monitor).is_dir():
        p.error(f"--monitor {a.monitor}: no such folder")
    train, evals, join = plan(a)
    if a.slurm:
        try:
            submit = write_slurm(a, train, evals, join)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {len(train) + len(evals) + 1} sbatch scripts; submit them with: bash {shlex.quote(str(submit))}")
        return 0
    for name, cmd in [*train, *evals, ("table1", join)]:
        print(f"== {name}: {shlex.join(cmd)}", flush=True)
        code = subprocess.run(cmd).returncode
        if code:
            print(f"error: step {name} failed (exit {code}); rerun the same command to continue", file=sys.stderr)
            return code
    table = Path(a.out) / "table1.md"
    print(f"\n== make table1 ==\npresets       {a.presets}\nruns          {a.runs}/<preset> "
          f"({len(train)} pretrained now)\ncheckpoint    {a.checkpoint}\nreports       {a.out}/<dataset>\n"
          f"table         {table}")
    summary = {"presets": a.presets.split(), "pretrained_now": [n for n, _ in train],
               "datasets": [n for n, _ in evals], "checkpoint": a.checkpoint, "monitor": a.monitor}
    (Path(a.out) / "table1.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
