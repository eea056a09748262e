"""Scorer modules; see :mod:`headprobe.registry` for the list."""
