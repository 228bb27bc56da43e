"""Drift sentinel: a fixed, versioned evaluation set replayed on a schedule, with history and a gate."""
