"""Integrations with model libraries (above the runtime; each imports its library on its own import)."""
