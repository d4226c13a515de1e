"""A local Ray instance serving the tiny model from CPU replicas (core/remote/cluster.py), for the cluster tests.

Ray is held small on the 2-core machine (its CPUs, no dashboard, a small object store, its files in a
temporary folder), and `LocalCluster.stop` ends every process it started: Serve and Ray are shut down,
then any of this process's children still alive (a raylet, a worker) are killed by their process ids.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

import psutil
import pytest

from conftest import SMALL_STREAM
from core.config import EngineConfig, ModelConfig
from serverhelpers import GREEDY

ray = pytest.importorskip(
    "ray", reason="the cluster extra (pip install 'streamvlm[cluster]') is not installed"
)

from core.remote.cluster import Cluster, ReplicaSettings, deploy  # noqa: E402

RAY_OPTIONS = {
    "include_dashboard": False,
    "object_store_memory": 80 * 2**20,  # Serve passes little through it
    "log_to_driver": False,  # the replicas' logs stay in Ray's folder
}


def tiny_config(tiny_dir) -> EngineConfig:
    """The replicas' engine: the tiny model on the CPU in float32, greedy, small frames (as the local
    sessions the tests compare with)."""
    return EngineConfig(
        stream=SMALL_STREAM,
        generation=GREEDY,
        model=ModelConfig(path=str(tiny_dir), device="cpu", dtype="float32"),
    )


class LocalCluster:
    """`deploy` on a Ray instance of this process's own; `.cluster.url` for clients."""

    def __init__(self, tiny_dir, replicas: int, port: int, **settings) -> None:
        self._env = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
        # A loopback instance of the test's own: no token file written into the user's home, no usage report.
        os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        self.temp = tempfile.mkdtemp(prefix="ray-")
        self.children_before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            self.cluster: Cluster = deploy(
                tiny_config(tiny_dir),
                ReplicaSettings(**settings),
                replicas=replicas,
                port=port,
                ray_options={**RAY_OPTIONS, "num_cpus": replicas, "_temp_dir": self.temp},
            )
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def replica_pids() -> dict[str, int]:
        """Each live replica's id (as sent in `ready`) and the process id of its Ray actor."""
        pids = {}
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["name"].startswith("SERVE_REPLICA::"):
                handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
                with_id = actor["name"].rsplit("#", 1)[-1]
                try:
                    pids[with_id] = ray.get(handle.__ray_call__.remote(lambda _: os.getpid()), timeout=30)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    continue  # dead, or not started yet
        return pids

    def stop(self) -> None:
        if hasattr(self, "cluster"):
            self.cluster.stop()
        elif ray.is_initialized():
            ray.shutdown()
        leftovers = [
            p for p in psutil.Process().children(recursive=True) if p.pid not in self.children_before
        ]
        _, alive = psutil.wait_procs(leftovers, timeout=10)
        for process in alive:  # by id: only what this cluster started
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
