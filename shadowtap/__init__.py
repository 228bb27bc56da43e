"""shadowtap: shadow-mode proxy and monitor for LLM serving."""

__version__ = "0.1.0"
