"""Scorer plug-ins (format, refusal, judge, latency/length) and the worker that runs them."""
