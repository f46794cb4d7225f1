"""Tests of the CUDA kernels (cuda/), run only where a GPU is present."""
