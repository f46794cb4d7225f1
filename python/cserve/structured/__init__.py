"""Structured outputs: StructuredOutputsParams -> a grammar compiled for the model's tokenizer,
which the engine applies as a token mask. Compiling runs in a helper process that is killed when
it takes too long; compiled grammars are cached by their source."""

from cserve.structured.service import GrammarError, GrammarService, StructuredOutputsConfig, config_from_args

__all__ = ["GrammarError", "GrammarService", "StructuredOutputsConfig", "config_from_args"]
