"""A real single-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd started in a
temporary state folder (proctrack/linuxproc, task/none, cons_tres over this machine's CPUs), stopped by process
id. Two partitions on the node: `test` (the default) and `urgent`, whose jobs preempt test's as a cluster with
preemption does (preempt/partition_prio, PreemptMode=REQUEUE, test's GraceTime 60 s). `LocalSlurm.unavailable()` says why it cannot run here (then the tests skip with that reason)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = ("slurm-wlm", "munge")


def _missing() -> list[str]:
    return [d for d in DAEMONS if not (shutil.which(d) or Path(f"/usr/sbin/{d}").exists())] + \
        [c for c in ("sbatch", "squeue", "scontrol", "scancel") if not shutil.which(c)]


def install_if_root() -> str | None:
    """Install Debian's slurm-wlm and munge when missing and running as root; None when ready, else why not."""
    if not _missing():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"SLURM is not installed ({', '.join(_missing())} missing) and installing it needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            return f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr.strip().splitlines()[-1:]}"
    return None if not _missing() else f"still missing after apt-get: {', '.join(_missing())}"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class LocalSlurm:
    """One node named after this host, with every CPU of this process; the clients find it through
    `self.env` (SLURM_CONF)."""

    def __init__(self, root: Path, cpus: int | None = None, memory_mb: int = 8000):
        self.root = Path(root)
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self.memory_mb = memory_mb
        self.node = socket.gethostname().split(".")[0]
        self.pids: dict[str, int] = {}
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        r = self.root
        for d in ("state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        ctl_port, d_port = _free_ports(2)
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        self.conf.write_text(f"""\
ClusterName=sslfer-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={ctl_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={r}/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=defer_batch
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=60
PartitionName=urgent Nodes={self.node} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
""")

    def _start(self, name: str, argv: list[str], pid_file: Path, timeout: float = 30) -> None:
        with open(self.root / "log" / f"{name}.stdout", "ab") as log:  # the daemons fork and keep their own logs
            done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, timeout=timeout)
        deadline = time.time() + timeout
        while time.time() < deadline and not (pid_file.is_file() and pid_file.read_text().strip()):
            time.sleep(0.1)
        if done.returncode or not pid_file.is_file():
            raise RuntimeError(f"{name} did not start (exit {done.returncode}): {self.log_tail(name)}")
        self.pids[name] = int(pid_file.read_text().split()[0])

    def log_tail(self, name: str, lines: int = 15) -> str:
        texts = []
        for p in (self.root / "log").glob(f"{name}*"):
            texts += p.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(texts)

    def start(self) -> "LocalSlurm":
        self._write_config()
        r = self.root
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._start("munged", [_daemon("munged"), "--force", f"--socket={r}/munge.socket", f"--key-file={key}",
                               f"--pid-file={r}/munged.pid", f"--log-file={r}/log/munged.log",
                               f"--seed-file={r}/munged.seed"], r / "munged.pid")
        self._start("slurmctld", [_daemon("slurmctld"), "-f", str(self.conf), "-i"], r / "slurmctld.pid")
        self._start("slurmd", [_daemon("slurmd"), "-f", str(self.conf), "-N", self.node], r / "slurmd.pid")
        deadline = time.time() + 60
        while time.time() < deadline:
            out = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            if out in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the node did not become idle (sinfo: {out!r}):\n{self.log_tail('slurm')}")

    def stop(self) -> None:
        for name in reversed(DAEMONS):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.time() + 15
            while time.time() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def run(self, *argv: str, check: bool = True, cwd=None, env=None) -> subprocess.CompletedProcess:
        done = subprocess.run(list(argv), capture_output=True, text=True, env={**self.env, **(env or {})}, cwd=cwd,
                              timeout=120)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def job_state(self, job: str) -> str:
        """The job's state (for an array, the states of its tasks joined by ','); '' once it is forgotten."""
        out = self.run("scontrol", "show", "job", job, "-o", check=False).stdout
        states = [w.split("=", 1)[1] for line in out.splitlines() for w in line.split() if w.startswith("JobState=")]
        return ",".join(states)

    def wait(self, job: str, timeout: float = 600, poll: float = 1.0, requeued: bool = False) -> str:
        """Wait until every task of the job has ended; returns its final state(s). requeued: a preemption is not
        an end (the job is requeued and runs again)."""
        ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                 "DEADLINE"} | (set() if requeued else {"PREEMPTED"})
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            state = self.job_state(job)
            if state and all(s in ended for s in state.split(",")):
                return state
            time.sleep(poll)
        raise TimeoutError(f"job {job} still {state!r} after {timeout:.0f} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
