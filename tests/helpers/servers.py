"""Throw-away servers for the scale-out tests, on 127.0.0.1 only and always stopped by the test that starts them."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from equitune.pipeline.services import free_port, stop_pid

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "moto", "AWS_SECRET_ACCESS_KEY": "moto", "AWS_DEFAULT_REGION": "us-east-1"}
"""moto accepts any key; the tests still pass one, as a real S3 needs."""


@contextmanager
def s3_server(*buckets: str) -> Iterator[str]:
    """moto's S3 server in a thread of the test process, on a free loopback port, with ``buckets`` created; yields
    its endpoint URL (it serves over TCP: DVC in a subprocess or a SLURM job reaches it like any S3)."""
    import boto3
    from moto.server import ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="moto", aws_secret_access_key="moto")
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


SLURM_CONF = """\
ClusterName=equitune-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={controller_port}
SlurmdPort={node_port}
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm_cluster(folder: Path) -> Iterator[dict[str, str]]:
    """A private one-node SLURM cluster (munged, slurmctld, slurmd from Debian's slurm packages) on 127.0.0.1;
    yields the environment that points sbatch/squeue at it. Everything it starts is stopped on the way out."""
    import shutil
    missing = [name for name in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(name, path=(
        os.environ.get("PATH", "") + ":/usr/sbin:/sbin"))]
    assert not missing, (f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurmctld slurmd "
                         "slurm-client munge (scripts/setup.sh does it)")
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname().split(".")[0], folder=folder, cpus=os.cpu_count(),
                                      controller_port=free_port(), node_port=free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"}
    started: list[Path] = []
    try:
        subprocess.run(["munged", f"--key-file={key}", f"--socket={folder}/munge.socket", "--force",
                        f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                        f"--seed-file={folder}/munge.seed"], env=env, check=True)
        started.append(folder / "munged.pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon, "-f", str(conf)], env=env, check=True)
            started.append(folder / f"{daemon}.pid")
        deadline = time.monotonic() + 120
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                            text=True).stdout:
            assert time.monotonic() < deadline, "the SLURM node did not become idle within 120 s:\n" + (
                (folder / "slurmctld.log").read_text()[-2000:])
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
        for pid_file in reversed(started):  # slurmd, slurmctld, then munged
            stop_pid(read_pid(pid_file), group=False)
