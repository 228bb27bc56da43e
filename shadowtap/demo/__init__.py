"""`shadowtap demo`: the whole pipeline on one machine, with simulated models and a scripted workload."""
