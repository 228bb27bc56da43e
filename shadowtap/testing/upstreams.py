"""Scripted OpenAI-compatible servers: stand-ins for real models, which cannot be had offline.

Used as primary, candidate and judge upstreams in tests, by `shadowtap demo` and by the benchmarks.
Answers come from a policy, `(route, body) -> Reply`, that can be swapped at runtime; everything served
is labelled simulated. `serve_in_thread` runs any ASGI app (this one, or the proxy) on loopback.

The pieces live in `policies` (what to answer), `script` (the choices and stream pieces a reply
becomes), `completions` and `responses` (chat and text completions, and the Responses API, on the
wire), `server` (the ASGI app and its faults) and `serving` (uvicorn in a thread); this module
gathers them and is the command line:

    python -m shadowtap.testing.upstreams --port 8001 --name primary-sim [--profile echo|slow|refuser]
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from shadowtap.testing.policies import (
    Fault,
    Policy,
    Reply,
    ToolCall,
    count_tokens,
    default_policy,
    fixed,
    keyword_policy,
    openai_error,
    sequence,
    split_chunks,
)
from shadowtap.testing.server import ReceivedRequest, SimulatedLLM
from shadowtap.testing.serving import ServerHandle, bind, serve_in_thread

__all__ = [
    "PROFILES",
    "Fault",
    "Policy",
    "ReceivedRequest",
    "Reply",
    "ServerHandle",
    "SimulatedLLM",
    "ToolCall",
    "count_tokens",
    "default_policy",
    "fixed",
    "keyword_policy",
    "main",
    "openai_error",
    "sequence",
    "serve_in_thread",
    "split_chunks",
]


def _slow(route: str, body: dict[str, Any]) -> Reply:
    return Reply(text=default_policy(route, body).text, ttft_s=0.02, token_delay_s=0.002)


PROFILES: dict[str, Policy] = {
    "echo": default_policy,
    "slow": _slow,
    "refuser": fixed(Reply(text="I'm sorry, but I can't help with that request.")),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve a SIMULATED OpenAI-compatible model (not a real LLM)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--name", default="sim-model", help="the model name it reports")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="echo")
    args = parser.parse_args(argv)
    sock = bind(args.host, args.port)
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    print(f"SIMULATED model {args.name!r} (profile {args.profile}, not a real LLM): {url}/v1", flush=True)
    sim = SimulatedLLM(args.name, PROFILES[args.profile])
    config = uvicorn.Config(sim, log_level="warning", access_log=False, lifespan="on", server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
