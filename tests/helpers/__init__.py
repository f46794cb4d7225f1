"""Shared builders for the cserve test suite (tiny random models, references, tolerances)."""
