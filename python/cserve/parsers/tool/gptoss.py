"""openai: gpt-oss tool calls in the harmony format (vLLM's `openai` parser).

gpt-oss writes a run of messages, ``[<|start|>assistant]<|channel|>CHANNEL[ to=RECIPIENT]
[ <|constrain|>FORMAT]<|message|>BODY`` each closed by ``<|end|>``, ``<|call|>`` or ``<|return|>``
(the recipient may also stand before the channel). A message to ``functions.NAME`` is a call of
NAME whose arguments are its body, the JSON text as generated (on any channel: gpt-oss sometimes
calls from analysis, and vLLM takes those too). The body must be a JSON object, whatever format
the header names (gpt-oss writes ``<|constrain|>json``), else the message is malformed.

The text comes either straight from the model or as the content of the ``openai_gptoss``
reasoning parser, which keeps call messages verbatim (header and closer) and turns the rest
into plain text; both read the same here:
- final and commentary bodies without a recipient (preambles) are content, headers and
  closers removed; text outside any message is content too;
- analysis bodies without a recipient are reasoning, which is the reasoning parser's to report:
  seen here (no ``--reasoning-parser openai_gptoss``) they are left out, as vLLM's parser leaves
  them out of the content;
- the closer that ends the output is usually missing (``<|call|>`` and ``<|return|>`` are
  gpt-oss's stop tokens, and the stop token is not text), so a call message still open when the
  output ends, or when the next message starts, is complete when its body is;
- a call that is malformed, cut off, or addressed to a recipient that is not a function
  (``browser.search``, ``python``: built-in tools, which chat completions do not run) comes
  back as content, verbatim, header and closer included.

Why not openai-harmony: its parser works on token ids through ``load_harmony_encoding``, which
downloads the o200k tiktoken vocabulary at load time (``HarmonyError: error downloading or
loading vocab file`` on a machine without internet, or one that may reach package registries
only), and the tool parser gets text, not token ids. The text format is small and fixed, so it
is parsed here, and cserve needs no extra dependency for gpt-oss.

Differences from vLLM 0.15 (``vllm/tool_parsers/openai_tool_parser.py``,
``vllm/entrypoints/openai/chat_completion/stream_harmony.py``): vLLM's non-streamed arguments
are ``json.dumps(json.loads(body))`` (ASCII escapes, re-spaced) while its streamed ones are the
body as generated; here both are the body as generated. vLLM's non-streamed content is the last
final body, else the last preamble, and its streamed content is every final and preamble body;
here it is every one of them, streamed or not. vLLM keeps a call whose body is not JSON (with
the raw text as arguments, as it does for a format other than JSON) and drops cut-off calls and
messages to built-in tools; here they are content.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._base import WAIT, Call, ToolParser, match_marker

_MESSAGE = "<|message|>"
_OPENS = ("<|start|>", "<|channel|>")
_CLOSERS = ("<|end|>", "<|call|>", "<|return|>")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")


def _find(buf: str, i: int, markers: tuple[str, ...], eof: bool) -> tuple[int, Any]:
    """The first of `markers` (all start with "<") in buf from i: (pos, marker), (pos, WAIT) where
    buf ends inside what may become one, or (-1, None)."""
    i = buf.find("<", i)
    while i >= 0:
        m = match_marker(buf, i, markers, eof)
        if m is not None:
            return i, m
        i = buf.find("<", i + 1)
    return -1, None


class OpenAIToolParser(ToolParser):
    name = "openai"
    needs_special_tokens = True
    starts = _OPENS
    drops = _CLOSERS  # a closer outside a message (after a final body) just goes

    def scan_block(self, marker: str, buf: str, eof: bool) -> Any:
        # the header runs to <|message|> (one <|channel|> may follow <|start|>); another marker
        # first means it is broken
        i, channels = 0, int(marker == "<|channel|>")
        while True:
            pos, m = _find(buf, i, (_MESSAGE,) + _OPENS + _CLOSERS, eof)
            if m is WAIT or (m is None and not eof):
                return WAIT
            if m is None:
                return len(buf), None  # a header cut off by the end of the output
            if m == "<|channel|>" and not channels:
                i, channels = pos + len(m), 1
                continue
            if m != _MESSAGE:
                return pos, None
            break
        header = marker + buf[:pos]
        start = pos + len(_MESSAGE)
        recipient = _RECIPIENT.search(header)
        channel = _CHANNEL.search(header)
        if recipient is None and not (channel and channel.group(1) == "analysis"):
            return start, []  # final / preamble: the body streams as content
        end = self._body_end(buf, start, eof)
        if end is WAIT:
            return WAIT
        body_end, consumed = end
        if recipient is None:
            return consumed, []  # analysis: reasoning, not content
        call = self._call(recipient.group(1), buf[start:body_end])
        return consumed, None if call is None else [call]

    @staticmethod
    def _body_end(buf: str, start: int, eof: bool) -> Any:
        """(end of the body, end of the message) or WAIT: the body ends at a closer (which the
        message includes), at the next message's start, or at the end of the output."""
        end, m = _find(buf, start, _CLOSERS + _OPENS, eof)
        if m is WAIT or (m is None and not eof):
            return WAIT
        if m is None:
            return len(buf), len(buf)
        return end, end + (len(m) if m in _CLOSERS else 0)

    @staticmethod
    def _call(recipient: str, body: str) -> Call | None:
        name = recipient[len("functions."):] if recipient.startswith("functions.") else ""
        if not name:
            return None
        try:
            args = json.loads(body)
        except ValueError:
            return None
        return Call(name, body) if isinstance(args, dict) else None
