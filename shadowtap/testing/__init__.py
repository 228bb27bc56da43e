"""Test doubles: scripted OpenAI-compatible upstreams and pair records made to order.

The demo and the benchmarks use the simulated upstreams too, so they ship in the package, but nothing
outside tests, the demo and the benchmarks imports from here.
"""
