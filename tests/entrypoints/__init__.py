"""Tests of cserve.entrypoints."""
