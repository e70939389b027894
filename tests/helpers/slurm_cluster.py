"""A real single-node SLURM cluster on localhost for tests: munge + slurmctld + slurmd from Debian's slurm-wlm,
partitions `cpu` (default) and `gpu`, two fake GPUs (character devices like /dev/null) as GRES.

Needs root and the packages slurmctld, slurmd, slurm-client, munge (installed by .ci/run). The config must sit at
/etc/slurm/slurm.conf: the executor plugin's jobstep strips SLURM_* variables, so SLURM_CONF alone fails. An
existing /etc/slurm/slurm.conf is moved aside and restored on stop. No accounting: status comes from squeue, and
MinJobAge keeps finished jobs visible to `scontrol show job` for the assertions.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

ETC = Path("/etc/slurm")
DAEMONS = ("slurmctld", "slurmd", "munged")


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the SLURM test needs root (it writes /etc/slurm/slurm.conf and starts the daemons)"
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "squeue", "munged") if not shutil.which(b)]
    if missing:
        return f"SLURM/munge not installed ({', '.join(missing)} missing): apt-get install slurmctld slurmd slurm-client munge"
    return None


def _node_layout() -> tuple[str, int]:
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    layout = " ".join(f"{k}={fields[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore"))
    return layout, int(fields["RealMemory"])


class LocalSlurm:
    def __init__(self, scratch: Path, gpus: int = 2, min_job_age: int = 600):
        self.dir = Path(scratch)
        self.gpus = gpus
        self.min_job_age = min_job_age
        self.host = socket.gethostname().split(".")[0]
        self._backup: dict[Path, Path] = {}

    def _write_etc(self, name: str, text: str) -> None:
        p = ETC / name
        if p.exists() and p not in self._backup:
            bak = self.dir / f"{name}.orig"
            shutil.copy2(p, bak)
            self._backup[p] = bak
        p.write_text(text)

    def start(self) -> "LocalSlurm":
        self.stop_daemons()
        for d in ("state", "spool", "log", "dev"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            dev = self.dir / "dev" / f"nvidia{i}"
            if not dev.exists():
                subprocess.run(["mknod", str(dev), "c", "1", "3"], check=True)
        layout, mem = _node_layout()
        ETC.mkdir(parents=True, exist_ok=True)
        self._write_etc("slurm.conf", f"""\
ClusterName=visfeat-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MinJobAge={self.min_job_age}
MailProg=/bin/true
StateSaveLocation={self.dir}/state
SlurmdSpoolDir={self.dir}/spool
SlurmctldPidFile={self.dir}/slurmctld.pid
SlurmdPidFile={self.dir}/slurmd.pid
SlurmctldLogFile={self.dir}/log/slurmctld.log
SlurmdLogFile={self.dir}/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
GresTypes=gpu
NodeName={self.host} NodeAddr=127.0.0.1 {layout} RealMemory={int(mem * 0.9)} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=cpu Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.host} MaxTime=INFINITE State=UP
""")
        self._write_etc("gres.conf", f"NodeName={self.host} Name=gpu File={self.dir}/dev/nvidia[0-{self.gpus - 1}]\n")
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True)
        subprocess.run(["slurmctld", "-f", str(ETC / "slurm.conf")], check=True)
        subprocess.run(["slurmd", "-f", str(ETC / "slurm.conf")], check=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.split()
            if state and all(s == "idle" for s in state):
                return self
            if any(s.startswith(("drain", "inval", "down")) for s in state):
                subprocess.run(["scontrol", "update", f"nodename={self.host}", "state=resume"], capture_output=True)
            time.sleep(0.3)
        raise RuntimeError(f"SLURM node never became idle: {state}; see {self.dir}/log")

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (finished ones for MinJobAge seconds), as key=value dicts."""
        out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True).stdout
        jobs = []
        for line in out.splitlines():
            if not line.strip() or line.startswith("No jobs"):
                continue
            d = {}
            for tok in line.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    d[k] = v
            jobs.append(d)
        return jobs

    @staticmethod
    def stop_daemons() -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], capture_output=True)
        for name in DAEMONS:
            subprocess.run(["pkill", "-x", name], capture_output=True)
        deadline = time.time() + 15
        while time.time() < deadline and any(
            subprocess.run(["pgrep", "-x", n], capture_output=True).returncode == 0 for n in DAEMONS
        ):
            time.sleep(0.2)

    def stop(self) -> None:
        self.stop_daemons()
        for p, bak in self._backup.items():
            shutil.copy2(bak, p)
        for name in ("slurm.conf", "gres.conf"):
            p = ETC / name
            if p not in self._backup:
                p.unlink(missing_ok=True)
