"""Integrations with other libraries (above the runtime, using only maskir's public API)."""
