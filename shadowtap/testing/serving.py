"""Any ASGI app (a simulated model, or the proxy itself) served by uvicorn in a thread on loopback."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette

from shadowtap.testing.server import SimulatedLLM

__all__ = ["ServerHandle", "bind", "serve_in_thread"]


class ServerHandle:
    """A uvicorn server running in a daemon thread on loopback; a context manager that stops it."""

    def __init__(
        self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int, scheme: str = "http"
    ) -> None:
        self.server = server
        self.thread = thread
        self.port = port
        self.url = f"{scheme}://{host}:{port}"
        self.base_url = self.url + "/v1"

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful shutdown (in-flight requests finish, lifespan shutdown runs); forced past `timeout`."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5.0)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _lifespan_mode(app: Any) -> Literal["on", "auto"]:
    """Apps known to speak the lifespan protocol get "on", so a failing start-up fails loudly."""
    return "on" if isinstance(app, Starlette | SimulatedLLM) else "auto"


def serve_in_thread(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    lifespan: Literal["on", "off", "auto"] | None = None,
    start_timeout_s: float = 15.0,
    graceful_shutdown_s: float = 5.0,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> ServerHandle:
    """Run `app` under uvicorn in a daemon thread with its own event loop; return once it accepts connections.

    The socket is bound here (port 0 picks a free one), so the port is known and held before start-up.
    With a certificate and key it serves https.
    """
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level=log_level,
        log_config=None,  # leave the process's logging alone; uvicorn's records reach the root logger
        access_log=False,
        lifespan=lifespan or _lifespan_mode(app),
        server_header=False,
        date_header=False,
        # uvicorn annotates this as int, but hands it to asyncio.wait_for, which takes seconds as a float
        timeout_graceful_shutdown=graceful_shutdown_s,  # type: ignore[arg-type]
        # The proxy brings its own protocol (proxy/protocol.py) and the uvicorn settings its limits need.
        **getattr(app, "server_options", {"http": "auto"}),
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported by the waiting caller below
            failure.append(exc)
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"uvicorn-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            reason = repr(failure[0]) if failure else "see the log for uvicorn's reason"
            raise RuntimeError(f"server for {app!r} did not start on {host}:{bound_port}: {reason}")
        time.sleep(0.002)
    return ServerHandle(server, thread, host, bound_port, "https" if ssl_certfile else "http")
