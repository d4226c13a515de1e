"""Serving across GPUs and hosts: the inference server as a Ray Serve application (`python -m core serve
--cluster`, docs/serving.md "Past one GPU").

A replica is one engine with its scheduler and its pool of session caches on one GPU (`num_gpus=1`; on a
cluster without GPUs, or with `--device cpu`, on one CPU), serving through the single server's
`InferenceServer`: every rule of a session (token, protocol version, message limits, bad clients, admission,
idle time) is that server's, reached through `AsgiConnection`, so the wire protocol is unchanged and a
client cannot tell a replica from `python -m core serve`, except by the `replica` id in `ready`.

Ray Serve's proxy, on every host of the cluster at `--port`, takes each WebSocket connection and hands it to
one replica for the connection's whole life (a session's cache lives on that replica's GPU). A new one goes
to the replica with the fewest ongoing sessions (Serve's power-of-two-choices router: of two replicas drawn
at random, the one with fewer). A replica is sent at most its cache slots plus one: when every replica is
full, that one more is refused by the replica with 4002 and the server's reason, not queued at the proxy.
When a replica's process dies its clients' connections drop; `RemoteSession` opens a new session, re-seeded
with the commentary so far, which the proxy sends to a live replica, while Serve's controller starts a
replacement. Importing this module imports Ray, FastAPI and Starlette; nothing else in core does.
"""

# No `from __future__ import annotations`: FastAPI reads the route's `websocket: WebSocket` annotation as
# a type, and as a string in the class view that Serve's ingress builds it would not know it.
import contextlib
import dataclasses
import logging
from pathlib import Path

import ray
from fastapi import FastAPI, WebSocket
from ray import serve
from starlette.websockets import WebSocketDisconnect

from core.config import EngineConfig
from core.errors import ConfigError, StreamVLMError
from core.pool import MAX_AUTO_SLOTS, MAX_AUTO_SLOTS_CPU
from core.remote.server import Disconnected, InferenceServer, check_exposure

log = logging.getLogger(__name__)

APP = "streamvlm"  # the Serve application's name
MAX_REPLICAS = 1024
# Seconds Serve waits for a stopping replica's sessions before it ends the process: its clients then
# reconnect (to a live replica, or until they give up when the whole application stopped).
GRACE_S = 2.0


@dataclasses.dataclass(frozen=True)
class ReplicaSettings:
    """What every replica's `InferenceServer` runs with (the single server's options)."""

    token: str | None = None
    max_sessions: int | str = "auto"  # cache slots per replica, or "auto" (as many as its GPU's memory holds)
    idle_timeout: float = 60.0
    budget: float = 2.0


class AsgiConnection:
    """A `core.remote.server.Connection` over an ASGI WebSocket, as Ray Serve's proxy hands it to a replica.

    The proxy passes on messages up to its own size limit (16 MiB); the server holds them to the
    protocol's (`InferenceServer._recv`). Once the client is gone, `recv` and `send` raise `Disconnected`.
    """

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        client = websocket.client
        self.host = client.host if client else "unknown"
        self.peer = f"{client.host}:{client.port}" if client else "unknown"
        self._ended: str | None = None  # why the connection ended, once it has

    async def recv(self) -> str | bytes:
        if self._ended is not None:
            raise Disconnected(self._ended)
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            self._ended = f"the client went away (code {message.get('code', 1005)})"
            raise Disconnected(self._ended)
        data = message.get("bytes")
        return data if data is not None else message.get("text") or ""

    async def send(self, message: str) -> None:
        if self._ended is not None:
            raise Disconnected(self._ended)
        try:
            await self.websocket.send_text(message)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:  # the client or the proxy went away
            self._ended = f"sending failed ({exc or type(exc).__name__})"
            raise Disconnected(self._ended) from None

    async def close(self, code: int, reason: str) -> None:
        if self._ended is None:
            self._ended = reason
            # Already gone: there is no one to tell.
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.websocket.close(code, reason)

    async def wait_closed(self) -> None:
        while self._ended is None:
            message = await self.websocket.receive()  # anything the client still sends is dropped
            if message["type"] == "websocket.disconnect":
                self._ended = "the client went away"


api = FastAPI()


@serve.deployment(name="InferenceServer", graceful_shutdown_timeout_s=GRACE_S)
@serve.ingress(api)
class Replica:
    """One engine on one GPU behind the single server's session handling."""

    def __init__(self, config: EngineConfig, settings: ReplicaSettings) -> None:
        from core.loading import open_engine

        engine = open_engine(config, sessions=settings.max_sessions, batched=True)
        self.server = InferenceServer(
            engine,
            token=settings.token,
            max_sessions=settings.max_sessions if isinstance(settings.max_sessions, int) else 4,
            idle_timeout=settings.idle_timeout,
            budget=settings.budget,
            replica=serve.get_replica_context().replica_id.unique_id,
        )
        log.info("replica %s: %d sessions at most", self.server.replica, self.server.max_sessions)

    @api.websocket("/")
    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        await self.server.run_session(AsgiConnection(websocket))


def placement(device: str, replicas: int | str, gpus: int, cpus: int) -> tuple[int, int]:
    """(replicas, GPUs per replica) for `--device` and `--replicas` on a cluster with `gpus` GPUs and
    `cpus` CPUs; ConfigError for a choice the cluster cannot place. A GPU replica takes one whole GPU
    (Ray gives it as its `cuda`); with no GPU in the cluster, or `--device cpu`, a replica takes a CPU."""
    if device.startswith("cuda:"):
        raise ConfigError(
            f"--device {device} names one GPU, but Ray gives each replica a GPU of its own; use --device cuda or auto"
        )
    if device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda, but the Ray cluster has no GPUs; add GPU hosts or use --device cpu")
    on_cpu = device == "cpu" or gpus == 0
    if replicas == "auto":
        if on_cpu:
            raise ConfigError(
                "--replicas auto starts one replica per GPU, and the cluster has none for it; give --replicas N"
            )
        return gpus, 1
    count = int(replicas)
    if on_cpu and count > cpus:
        raise ConfigError(
            f"--replicas {count} needs {count} CPUs, one per replica; the Ray cluster has {cpus}"
        )
    if not on_cpu and count > gpus:
        raise ConfigError(
            f"--replicas {count} needs {count} GPUs, one per replica; the Ray cluster has {gpus}: "
            "add hosts or give fewer replicas"
        )
    return count, 0 if on_cpu else 1


@dataclasses.dataclass
class Cluster:
    """The application running on a Ray cluster: `url` for clients, `stop()` to take it down."""

    url: str
    replicas: int
    owns_serve: bool  # this process started Serve (a local Ray instance): stopping shuts Serve down too

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # already gone (a test stopped it, the cluster went away)
            serve.delete(APP)
        if self.owns_serve:
            with contextlib.suppress(Exception):
                serve.shutdown()
        ray.shutdown()


def deploy(
    config: EngineConfig,
    settings: ReplicaSettings,
    *,
    replicas: int | str = "auto",
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    tls: tuple[Path, Path] | None = None,
    ray_options: dict | None = None,
) -> Cluster:
    """Start the application: connect to the Ray cluster at `address` (None: start a local instance, or join
    the one `ray start` runs on this host), start Serve's proxies on `host`:`port` of every host (HTTPS
    with `tls`, certificate and key, which every host must have at those paths) and `replicas` replicas,
    each loading the model. Returns when every replica is ready; StreamVLMError when they fail to start."""
    check_exposure(host, settings.token)
    ray.init(address=address, **(ray_options or {}))
    try:
        resources = ray.cluster_resources()
        count, gpus = placement(
            config.model.device, replicas, int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        )
        slots = settings.max_sessions
        if not isinstance(slots, int):  # auto: known once a replica has measured its memory
            slots = MAX_AUTO_SLOTS if gpus else MAX_AUTO_SLOTS_CPU
        http = {"host": host, "port": port}
        if tls is not None:
            http |= {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])}
        serve.start(http_options=http)
        app = Replica.options(
            num_replicas=count,
            # A session is one ongoing request for its whole life. One more than the slots: when every
            # replica is full, the next session is refused by a replica (4002, the reason), not queued.
            max_ongoing_requests=slots + 1,
            ray_actor_options={"num_gpus": gpus, "num_cpus": 0 if gpus else 1},
        ).bind(config, settings)
        try:
            serve.run(app, name=APP, route_prefix="/")
        except RuntimeError as exc:  # Serve gave up on the replicas' constructors (a model that fails)
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise StreamVLMError(
                f"the cluster's replicas failed to start ({last}); the Ray logs have the traceback"
            ) from None
    except BaseException:
        ray.shutdown()
        raise
    scheme = "wss" if tls is not None else "ws"
    return Cluster(url=f"{scheme}://{host}:{port}", replicas=count, owns_serve=address is None)
