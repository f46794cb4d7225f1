"""cserve: an LLM inference server and library, a drop-in for vLLM."""

from cserve.llm import LLM
from cserve.outputs import CompletionOutput, Logprob, RequestOutput
from cserve.sampling_params import SamplingParams

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob", "cmake_prefix_path"]


def cmake_prefix_path() -> str:
    """The prefix where cserve's C++ package (cserveConfig.cmake, headers, libraries) is installed."""
    from pathlib import Path

    from cserve import _core

    # Installed beside the extension (an editable install keeps it out of the source tree).
    return str(Path(_core.__file__).parent)
