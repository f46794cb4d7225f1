"""cserve: an LLM inference server and library, a drop-in for vLLM."""

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "StructuredOutputsParams", "RequestOutput", "CompletionOutput", "Logprob", "cmake_prefix_path"]

# Loaded on first use, so `cserve serve --help` and the CLI start without the C++ extension.
_LAZY = {"LLM": "cserve.llm", "SamplingParams": "cserve.sampling_params",
         "StructuredOutputsParams": "cserve.sampling_params", "RequestOutput": "cserve.outputs",
         "CompletionOutput": "cserve.outputs", "Logprob": "cserve.outputs"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cserve' has no attribute {name!r}")


def cmake_prefix_path() -> str:
    """The prefix where cserve's C++ package (cserveConfig.cmake, headers, libraries) is installed."""
    from pathlib import Path

    from cserve import _core

    # Installed beside the extension (an editable install keeps it out of the source tree).
    return str(Path(_core.__file__).parent)
