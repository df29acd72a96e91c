"""A real single-node SLURM cluster for tests: munged, slurmctld and slurmd on 127.0.0.1, started from a
temporary folder with free ports, and stopped afterwards. Needs Debian's `slurm-wlm` and `munge` and root
(slurmd launches jobs as their user). Without accounting (no slurmdbd), `sacct` fails: submitit then learns
that a task ended from its result file, which every finished task writes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin")


def binary(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if Path(f"{d}/{name}").is_file()), None)


def why_unavailable() -> str | None:
    """None when a cluster can be started here, else the reason (the test is skipped with it)."""
    missing = [name for name in (*DAEMONS, "sbatch", "squeue", "scontrol") if binary(name) is None]
    if missing:
        return f"SLURM not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "slurmd must run as root to launch jobs"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(root: Path, host: str, cpus: int) -> str:
    return f"""\
ClusterName=anymasktest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={root}/munge/socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm_cluster(root: Path, cpus: int = 2) -> Iterator[dict[str, str]]:
    """Start the daemons; yields the environment (SLURM_CONF) that clients such as sbatch need."""
    for name in ("munge", "state", "spool"):
        (root / name).mkdir(parents=True, mode=0o700)
    key = root / "munge" / "key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    (root / "slurm.conf").write_text(config(root, host, cpus))
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    munge = root / "munge"
    started: list[Path] = []
    try:
        subprocess.run(
            [binary("munged"), "--force", f"--socket={munge}/socket", f"--key-file={key}",
             f"--pid-file={munge}/pid", f"--log-file={munge}/log", f"--seed-file={munge}/seed"],
            check=True, env=env,
        )  # fmt: skip
        started.append(munge / "pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([binary(daemon), "-f", str(root / "slurm.conf")], check=True, env=env)
            started.append(root / f"{daemon}.pid")
        wait_until_idle(env)
        yield env
    finally:
        for pid_file in reversed(started):
            stop(pid_file)


def wait_until_idle(env: dict[str, str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
        if states.strip() == "idle":
            return
        time.sleep(0.5)
    raise RuntimeError(f"the test SLURM node never became idle (sinfo: {states.strip()!r})")


def stop(pid_file: Path, seconds: float = 20) -> None:
    """Stop the daemon whose pid file this is (only ours: the file lives in the test's folder)."""
    deadline = time.monotonic() + 5
    while not pid_file.is_file() and time.monotonic() < deadline:  # a daemon writes it once forked
        time.sleep(0.1)
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def squeue(env: dict[str, str]) -> list[tuple[str, str, str]]:
    """(job id, state, reason) of every job in the queue."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], env=env, capture_output=True, text=True).stdout
    return [tuple(line.split(maxsplit=2)) for line in out.splitlines() if line.strip()]  # type: ignore[misc]
