"""The `cserve` command line: `cserve serve` and the vLLM flag table."""
