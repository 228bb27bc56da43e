"""Test doubles: scripted OpenAI-compatible upstreams and pair records made to order.

The demo and the benchmarks use the simulated upstreams too, so they ship in the package, but nothing
outside tests, the demo and the benchmarks imports from here.
"""

# Imported from the modules that define them, not from `upstreams`, so that `python -m
# shadowtap.testing.upstreams` does not find its own module already imported.
from shadowtap.testing.pairs import make_pair, make_side
from shadowtap.testing.policies import Policy, Reply, default_policy
from shadowtap.testing.server import SimulatedLLM
from shadowtap.testing.serving import ServerHandle, serve_in_thread

__all__ = [
    "Policy",
    "Reply",
    "ServerHandle",
    "SimulatedLLM",
    "default_policy",
    "make_pair",
    "make_side",
    "serve_in_thread",
]
