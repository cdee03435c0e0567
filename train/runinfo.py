"""What a launch of the trainer runs on, checked and recorded: the device and world, ranks and GPUs per node
(every rank reports its host), torch/CUDA versions and the AMP dtype, printed as one start-up line and appended
to RUN/launches.jsonl with the command line, the git commit and the package versions. GPUs that nvidia-smi sees
but torch cannot use stop a `device=auto` run before any work; GPUs that no rank uses are a warning."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from train import distributed as dist

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "torchvision", "numpy", "pyarrow", "webdataset", "opencv-contrib-python", "mediapipe",
            "tqdm", "matplotlib", "safetensors", "tensorboard")
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
              "SLURM_JOB_NODELIST", "SLURM_JOB_PARTITION", "SLURM_CPUS_PER_TASK")


class LaunchError(RuntimeError):
    """The hardware and the launch do not fit (one line)."""


def nvidia_smi_gpus() -> int | None:
    """GPUs the driver shows (`nvidia-smi -L`), None when there is no nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def local_view(device: str) -> dict:
    """This rank's host and what it sees (sent to rank 0)."""
    view = {"host": socket.gethostname(), "device": device, "pid": os.getpid(),
            "cuda_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if (dist.launch_env() or {}).get("local_rank", 0) == 0:  # one nvidia-smi per node
        view["nvidia_smi"] = nvidia_smi_gpus()
    if device.startswith("cuda"):
        view["gpu_name"] = torch.cuda.get_device_name(torch.device(device))
    return view


def check_hardware(views: list[dict], requested: str) -> list[str]:
    """Warnings about the launch (raises LaunchError where it cannot be right): per host, GPUs visible vs
    used; GPUs the driver shows that torch cannot use."""
    warnings = []
    hosts: dict[str, list[dict]] = {}
    for v in views:
        hosts.setdefault(v["host"], []).append(v)
    build = f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'})"
    for host, vs in hosts.items():
        smi = max((v.get("nvidia_smi") or 0) for v in vs)
        visible = max(v["cuda_visible"] for v in vs)
        on_gpu = sum(v["device"].startswith("cuda") for v in vs)
        hidden = all(v.get("cuda_visible_devices") in ("", "-1") for v in vs)  # hidden on purpose
        if smi and not visible and not hidden:
            why = (f"{host}: nvidia-smi shows {smi} GPU(s) but {build} cannot use them (a CPU-only build, or a "
                   f"CUDA build newer than the driver supports: see the README's 'A cluster's own torch')")
            if requested == "auto":
                raise LaunchError(why + "; pass device=cpu to train on the CPU anyway")
            warnings.append(why)
        if on_gpu and on_gpu < visible:
            warnings.append(f"{host}: {visible} GPUs visible, {on_gpu} used ({len(vs)} rank(s)): "
                            f"{visible - on_gpu} sit idle; start one rank per GPU (make pretrain GPUS={visible}, or "
                            f"make pretrain-slurm GPUS_PER_NODE={visible})")
        if not on_gpu and visible and requested != "cpu":
            warnings.append(f"{host}: {visible} GPU(s) visible but the run is on the CPU")
    return warnings


def git_commit() -> str | None:
    """The project's commit (with '-dirty' when files differ from it), None outside a git checkout."""
    if not (ROOT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def launch_record(views: list[dict], device: str, launcher: str, argv: list[str], amp: str = "off") -> dict:
    hosts = list(dict.fromkeys(v["host"] for v in views))
    per_node = [sum(v["host"] == h for v in views) for h in hosts]
    cuda = device.startswith("cuda")
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": [sys.executable, *argv], "cwd": os.getcwd(),
        "launcher": launcher, "world": len(views), "nodes": len(hosts), "hosts": hosts, "ranks_per_node": per_node,
        "device": device.split(":")[0], "gpu": views[0].get("gpu_name"),
        "gpus_visible": [max(v["cuda_visible"] for v in views if v["host"] == h) for h in hosts],
        "gpus_nvidia_smi": [max((v.get("nvidia_smi") or 0) for v in views if v["host"] == h) for h in hosts],
        "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "amp": {"off": "off (fp32)", "fp16": "fp16 (loss scaling)"}.get(amp, amp),
        "git_commit": git_commit(), "packages": package_versions(),
        "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ},
    }


def startup_line(r: dict) -> str:
    nodes = (f"{r['nodes']} node(s) x {r['ranks_per_node'][0]} rank(s)" if len(set(r["ranks_per_node"])) == 1
             else f"ranks per node {r['ranks_per_node']}")
    gpus = ""
    if r["device"] == "cuda":
        gpus = (f", GPUs used {sum(r['ranks_per_node'])} of {sum(r['gpus_visible'])} visible"
                f" ({r['gpu']})")
    versions = f"torch {r['torch']}" + (f", CUDA {r['cuda']}, cuDNN {r['cudnn']}" if r["cuda"] else "")
    job = f", SLURM job {r['slurm']['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in r["slurm"] else ""
    restarts = r["slurm"].get("SLURM_RESTART_COUNT")
    job += f" (restart {restarts})" if restarts and restarts != "0" else ""
    return (f"pretrain: device {r['device']}, world {r['world']} = {nodes} ({r['launcher']}){gpus}, {versions}, "
            f"AMP {r['amp']}{job}, commit {r['git_commit'] or 'unknown'}")


def gather_launch(device: str, requested: str, launcher: str, argv: list[str],
                  amp: str = "off") -> tuple[dict | None, list[str]]:
    """Collective: every rank's view to rank 0, which checks it. Returns (record, warnings) on rank 0,
    (None, []) elsewhere. A LaunchError on rank 0 stops every rank."""
    views = dist.gather_objects(local_view(device))
    problem, record, warnings = None, None, []
    if dist.rank() == 0:
        try:
            warnings = check_hardware(views, requested)
            record = launch_record(views, device, launcher, argv, amp)
        except LaunchError as e:
            problem = str(e)
    problem = dist.broadcast_object(problem)
    if problem:
        raise LaunchError(problem)
    return record, warnings
