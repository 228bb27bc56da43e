"""`shadowtap demo`: the whole pipeline on one machine, with simulated models and a scripted workload."""

from shadowtap.demo.run import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]
