"""Compiled Cython extensions built from the repository's ``cpu/*.pyx`` (one module per op)."""
