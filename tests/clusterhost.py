"""The child process that holds a test's Ray instance (tests/clusterhelpers.py says why it is a process of
its own): deploys the application, then answers the test process over a pipe until told to stop, or until
the test process goes away."""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection

import psutil


def host(conn: Connection, config, settings, replicas: int, port: int, ray_options: dict) -> None:
    # A loopback instance of the test's own: no token file written into the user's home, no usage report.
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    from core.remote.cluster import deploy

    try:
        cluster = deploy(config, settings, replicas=replicas, port=port, ray_options=ray_options)
    except BaseException as exc:  # said in the test process, where the test fails on it
        conn.send(("error", exc))
        _end_children()
        return
    conn.send(("ready", cluster.url))
    while True:
        try:
            command = conn.recv()
        except (EOFError, OSError):  # the test process is gone
            command = "stop"
        if command == "pids":
            conn.send(("pids", _replica_pids()))
            continue
        cluster.stop()
        _end_children()
        try:
            conn.send(("stopped", None))
        except OSError:
            pass
        return


def _replica_pids() -> dict[str, int]:
    import ray

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


def _end_children() -> None:
    """Every process Ray left behind (a raylet, a worker): by process id, only this host's children."""
    leftovers = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(leftovers, timeout=10)
    for process in alive:
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    psutil.wait_procs(alive, timeout=10)
