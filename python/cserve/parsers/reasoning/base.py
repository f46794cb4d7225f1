"""The reasoning-parser interface, its registry, and the marker engine every built-in parser runs on.

A parser sees one request's output text, piece by piece, and splits it into reasoning and content.
Non-streaming is ``feed(whole_text)`` then ``finish()``; streaming is many ``feed`` calls then
``finish()``. Both run the same code, and the engine only commits to a marker once no other reading
of the text so far is possible, so the concatenated streamed deltas always equal the non-streamed
result, however the text is cut.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .. import load_plugin_file

REASONING = "reasoning"
CONTENT = "content"
HEADER = "header"  # text collected by the parser itself (e.g. a harmony message header)
DROP = "drop"


class ReasoningParser:
    """One request's output text, split incrementally into reasoning and content."""

    name: str = ""
    needs_special_tokens: bool = False  # True when its markers are special tokens the detokenizer must keep

    def __init__(self, chat_template_kwargs: dict | None = None) -> None:
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def feed(self, text: str) -> tuple[str, str]:
        """New output text -> (reasoning delta, content delta); may hold back a partial marker."""
        raise NotImplementedError

    def finish(self) -> tuple[str, str]:
        """End of output: flush whatever was held back."""
        raise NotImplementedError

    @property
    def reasoning_ended(self) -> bool:
        """True once content has started."""
        raise NotImplementedError

    def reasoning_end_marker(self) -> str | None:
        """The text that ends the reasoning, for structured outputs (whose grammar applies only
        after it); None when this request's output has no reasoning to wait for."""
        return None


REASONING_PARSERS: dict[str, type[ReasoningParser]] = {}


def register_reasoning_parser(*names: str) -> Callable[[type[ReasoningParser]], type[ReasoningParser]]:
    """Class decorator: register a parser under one or more names (the first becomes its ``name``)."""
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError("register_reasoning_parser needs at least one non-empty name")

    def deco(cls: type[ReasoningParser]) -> type[ReasoningParser]:
        if not (isinstance(cls, type) and issubclass(cls, ReasoningParser)):
            raise TypeError(f"{cls!r} is not a ReasoningParser subclass")
        if not cls.__dict__.get("name"):
            cls.name = names[0]
        for n in names:
            REASONING_PARSERS[n] = cls
        return cls

    return deco


def get_reasoning_parser(name: str) -> type[ReasoningParser]:
    try:
        return REASONING_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"unknown reasoning parser {name!r}; available: {', '.join(sorted(REASONING_PARSERS))}"
        ) from None


def load_reasoning_parser_plugin(path: str) -> None:
    """``--reasoning-parser-plugin FILE``: import a Python file whose classes register themselves
    with ``@register_reasoning_parser("name")``."""
    load_plugin_file(path, "reasoning parser")


# ---------------------------------------------------------------------------------------------
# The marker engine


class Literal:
    """A marker that is a fixed string."""

    def __init__(self, text: str) -> None:
        assert text
        self.text = text

    def find(self, buf: str) -> tuple[int, int] | None:
        i = buf.find(self.text)
        return (i, len(self.text)) if i >= 0 else None

    def partial(self, buf: str) -> int | None:
        """Earliest i where buf[i:] is a proper, non-empty prefix of the marker."""
        t = self.text
        for k in range(min(len(t) - 1, len(buf)), 0, -1):
            if buf.endswith(t[:k]):
                return len(buf) - k
        return None


class Lookahead:
    """``tag`` that counts only when ``follow`` comes next (after optional whitespace) and is then
    followed by one of ``follow_end``; the match covers ``tag`` alone."""

    def __init__(self, tag: str, follow: str, follow_end: str) -> None:
        self.tag, self.follow, self.follow_end = tag, follow, follow_end
        self._tag = Literal(tag)

    def _occurrences(self, buf: str):
        i = buf.find(self.tag)
        while i >= 0:
            yield i, buf[i + len(self.tag):].lstrip()
            i = buf.find(self.tag, i + 1)

    def find(self, buf: str) -> tuple[int, int] | None:
        n = len(self.follow)
        for i, rest in self._occurrences(buf):
            if rest.startswith(self.follow) and len(rest) > n and (rest[n] in self.follow_end):
                return i, len(self.tag)
        return None

    def partial(self, buf: str) -> int | None:
        for i, rest in self._occurrences(buf):
            if self.follow.startswith(rest):  # still only whitespace or a prefix of `follow`
                return i
        return self._tag.partial(buf)


Matcher = Literal | Lookahead


@dataclass(frozen=True)
class Rule:
    matcher: Matcher
    goto: str  # the next mode
    keep: bool = False  # the marker's text goes to the next mode's channel instead of vanishing
    anchored: bool = False  # only at the very start of the output


@dataclass
class Mode:
    channel: str  # REASONING, CONTENT, HEADER or DROP
    rules: list[Rule] = field(default_factory=list)
    ends_reasoning: bool = False  # being in this mode means the reasoning is over


def lit(text: str, goto: str, keep: bool = False, anchored: bool = False) -> Rule:
    return Rule(Literal(text), goto, keep, anchored)


class MarkerReasoningParser(ReasoningParser):
    """A state machine over text markers; subclasses describe the modes in ``build_modes``.

    In each mode the earliest complete marker wins (the longest at a tie), and it is acted on only
    once no marker could still begin before it or at the same place; everything before a possible
    marker start goes out at once, the possible marker is held back until the text decides it.
    """

    initial_mode = "pre"

    def __init__(self, chat_template_kwargs: dict | None = None) -> None:
        super().__init__(chat_template_kwargs)
        self.modes: dict[str, Mode] = self.build_modes()
        self._mode = self.initial_mode
        self._buf = ""
        self._consumed = 0  # characters of output already decided
        self._content_started = False
        self._header = ""
        self._out_r: list[str] = []
        self._out_c: list[str] = []
        self._finished = False

    def build_modes(self) -> dict[str, Mode]:
        raise NotImplementedError

    # hooks
    def on_enter(self, mode: str, marker: str) -> None:
        """Called after switching to ``mode`` on ``marker``, before a kept marker is emitted."""

    def resolve(self, goto: str) -> str:
        """Map a rule's goto to a mode (lets a subclass pick the mode from what it has seen)."""
        return goto

    # output
    def emit(self, channel: str, text: str) -> None:
        if not text:
            return
        if channel == REASONING:
            self._out_r.append(text)
        elif channel == CONTENT:
            self._out_c.append(text)
            self._content_started = True
        elif channel == HEADER:
            self._header += text

    def _take(self) -> tuple[str, str]:
        r, c = "".join(self._out_r), "".join(self._out_c)
        self._out_r.clear()
        self._out_c.clear()
        return r, c

    def _run(self, final: bool) -> None:
        while True:
            mode = self.modes[self._mode]
            best: tuple[int, int, Rule] | None = None
            hold = len(self._buf)
            for rule in mode.rules:
                m = rule.matcher
                if rule.anchored:
                    if self._consumed:
                        continue
                    assert isinstance(m, Literal)
                    full = (0, len(m.text)) if self._buf.startswith(m.text) else None
                    part = 0 if (len(self._buf) < len(m.text) and m.text.startswith(self._buf)) else None
                else:
                    full = m.find(self._buf)
                    part = None if final else m.partial(self._buf)
                if full is not None and (best is None or full[0] < best[0] or (full[0] == best[0] and full[1] > best[1])):
                    best = (full[0], full[1], rule)
                if part is not None and not final:
                    hold = min(hold, part)
            if best is not None and best[0] < hold:
                pos, length, rule = best
                self.emit(mode.channel, self._buf[:pos])
                marker = self._buf[pos:pos + length]
                self._buf = self._buf[pos + length:]
                self._consumed += pos + length
                self._mode = self.resolve(rule.goto)
                self.on_enter(self._mode, marker)
                if rule.keep:
                    self.emit(self.modes[self._mode].channel, marker)
                continue
            self.emit(mode.channel, self._buf[:hold])
            self._buf = self._buf[hold:]
            self._consumed += hold
            return

    def feed(self, text: str) -> tuple[str, str]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if text:
            self._buf += text
            self._run(final=False)
        return self._take()

    def finish(self) -> tuple[str, str]:
        if not self._finished:
            self._finished = True
            self._run(final=True)
        return self._take()

    @property
    def reasoning_ended(self) -> bool:
        mode = self.modes[self._mode]
        return mode.ends_reasoning or (mode.channel == CONTENT and self._content_started)


class IdentityReasoningParser(MarkerReasoningParser):
    """No reasoning: everything is content (a parser whose thinking is switched off)."""

    initial_mode = "content"

    def build_modes(self) -> dict[str, Mode]:
        return {"content": Mode(CONTENT, [], ends_reasoning=True)}


class ThinkReasoningParser(MarkerReasoningParser):
    """The "<start>reasoning<end>content" shape.

    start_optional: the chat template may already have opened the reasoning, so the output starts
        in reasoning (text before a late start marker is reasoning too); else text before the start
        marker is content and, without a start marker, everything is content.
    start_anchored: the start marker counts only at the very beginning of the output.
    implicit_ends: markers that end the reasoning and stay at the head of the content (tool calls).
    thinking_switch: (chat_template_kwargs key, default); when it reads false the parser is an identity.
    After the end marker everything is content, verbatim: later markers are plain text.
    """

    start_token: str | None = "<think>"
    end_token: str = "</think>"
    start_optional: bool = True
    start_anchored: bool = False
    implicit_ends: tuple[Matcher, ...] = ()
    thinking_switch: tuple[tuple[str, ...], bool] | None = None

    def thinking_enabled(self) -> bool:
        if self.thinking_switch is None:
            return True
        keys, default = self.thinking_switch
        for k in keys:
            if k in self.chat_template_kwargs and self.chat_template_kwargs[k] is not None:
                return bool(self.chat_template_kwargs[k])
        return default

    def reasoning_end_marker(self) -> str | None:
        return self.end_token if self.thinking_enabled() else None

    def build_modes(self) -> dict[str, Mode]:
        if not self.thinking_enabled():
            self.initial_mode = "content"
            return {"content": Mode(CONTENT, [], ends_reasoning=True)}
        self.initial_mode = "pre"
        ends = [lit(self.end_token, "content")] + [Rule(m, "content", keep=True) for m in self.implicit_ends]
        pre_rules: list[Rule] = []
        if self.start_token:
            pre_rules.append(lit(self.start_token, "think", anchored=self.start_anchored))
        if self.start_optional:
            pre_rules += ends
        return {
            "pre": Mode(REASONING if self.start_optional else CONTENT, pre_rules),
            "think": Mode(REASONING, list(ends)),
            "content": Mode(CONTENT, [], ends_reasoning=True),
        }
