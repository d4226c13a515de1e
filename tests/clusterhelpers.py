"""A local Ray instance serving the tiny model from CPU replicas (core/remote/cluster.py), for the cluster tests.

Ray runs in a child process of its own (`clusterhost.host`), never in the test process: a Ray driver
torn down in the process that goes on running the other tests leaves native state behind that a later
garbage collection (an object reference's finaliser) or thread can touch after it was freed, a
segmentation fault in whichever test happens to run then (ray-project/ray#31145; it took down a CI run
in the first app test after the cluster's). The child starts and stops Ray, answers for the replicas'
process ids, and ends every process it started; `stop` here ends the child's whole tree if it hangs.
Ray is held small on the 2-core machine (its CPUs, no dashboard, a small object store, its files in a
temporary folder).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import shutil
import tempfile

import psutil
import pytest

from conftest import SMALL_STREAM
from core.config import EngineConfig, ModelConfig
from serverhelpers import GREEDY

pytest.importorskip("ray", reason="the cluster extra (pip install 'streamvlm[cluster]') is not installed")

from clusterhost import host  # noqa: E402

from core.remote.cluster import ReplicaSettings  # noqa: E402

RAY_OPTIONS = {
    "include_dashboard": False,
    "object_store_memory": 80 * 2**20,  # Serve passes little through it
    "log_to_driver": False,  # the replicas' logs stay in Ray's folder
}
START_SECONDS = 240  # Ray, Serve and the replicas' model loads on 2 busy cores
STOP_SECONDS = 60


def tiny_config(tiny_dir) -> EngineConfig:
    """The replicas' engine: the tiny model on the CPU in float32, greedy, small frames (as the local
    sessions the tests compare with)."""
    return EngineConfig(
        stream=SMALL_STREAM,
        generation=GREEDY,
        model=ModelConfig(path=str(tiny_dir), device="cpu", dtype="float32"),
    )


@dataclasses.dataclass(frozen=True)
class HostedCluster:
    url: str


class LocalCluster:
    """`deploy` on a Ray instance in a child process; `.cluster.url` for clients."""

    def __init__(self, tiny_dir, replicas: int, port: int, **settings) -> None:
        self.temp = tempfile.mkdtemp(prefix="ray-")
        options = {**RAY_OPTIONS, "num_cpus": replicas, "_temp_dir": self.temp}
        context = multiprocessing.get_context("spawn")  # no fork of a process holding threads and torch
        self._conn, child_end = context.Pipe()
        self._child = context.Process(
            target=host,
            args=(child_end, tiny_config(tiny_dir), ReplicaSettings(**settings), replicas, port, options),
            name="streamvlm-ray-host",
        )
        self._child.start()
        child_end.close()
        try:
            self.cluster = HostedCluster(self._answer(START_SECONDS, "start the cluster"))
        except BaseException:
            self.stop()
            raise

    def _answer(self, seconds: float, what: str):
        if not self._conn.poll(seconds):
            raise TimeoutError(f"the Ray host did not {what} within {seconds} s")
        kind, value = self._conn.recv()
        if kind == "error":
            raise value
        return value

    def replica_pids(self) -> dict[str, int]:
        """Each live replica's id (as sent in `ready`) and the process id of its Ray actor."""
        self._conn.send("pids")
        return self._answer(STOP_SECONDS, "list the replicas")

    def stop(self) -> None:
        try:
            if self._child.is_alive():
                self._conn.send("stop")
                self._answer(STOP_SECONDS, "stop")
        except (OSError, EOFError, TimeoutError):
            pass  # ended, or hung: its tree is ended below
        self._child.join(10)
        if self._child.is_alive():
            try:
                tree = psutil.Process(self._child.pid)
                processes = [*tree.children(recursive=True), tree]
            except psutil.NoSuchProcess:
                processes = []
            for process in processes:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(processes, timeout=10)
            self._child.join(10)
        self._conn.close()
        shutil.rmtree(self.temp, ignore_errors=True)
