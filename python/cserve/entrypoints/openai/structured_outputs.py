"""Structured outputs from an OpenAI request: response_format, vLLM's `structured_outputs` object,
the legacy `guided_*` fields (which current vLLM ignores and cserve honours), and a chat's
tool_choice "required" or named. The result is one StructuredOutputsParams (or None); the engine
compiles and enforces it. Every shape error is a 400 naming the field.

The rules, as vLLM 0.15 has them:
- response_format: {"type": "text"} is no constraint; "json_object" is any JSON object;
  "json_schema" is its json_schema.schema (no schema: any JSON object); "structural_tag" in either
  form xgrammar knows (legacy "structures" + "triggers", or "format").
- One constraint at most across all the fields; the whitespace and fallback options of
  `structured_outputs` (and guided_whitespace_pattern / the guided_decoding_backend options) go
  with whichever constraint is given.
- tool_choice "required" or named replaces every other constraint and option with the tools'
  JSON schema (tool_choice.py).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from cserve.entrypoints.openai.errors import APIError
from cserve.entrypoints.openai.tool_choice import tool_choice_schema
from cserve.sampling_params import StructuredOutputsParams
from cserve.structured.service import check_backend

CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
_FLAGS = ("disable_fallback", "disable_any_whitespace", "disable_additional_properties")
RESPONSE_FORMATS = ("text", "json_object", "json_schema", "structural_tag")
# The legacy top-level fields and the constraint each one sets.
GUIDED_FIELDS = (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                 ("guided_grammar", "grammar"), ("structural_tag", "structural_tag"))
# The options of guided_decoding_backend's "name:opt,opt" form, as older vLLM read them (and the
# spelling of --guided-decoding-backend's).
BACKEND_OPTIONS = {"disable-any-whitespace": "disable_any_whitespace", "no-fallback": "disable_fallback",
                   "no-additional-properties": "disable_additional_properties",
                   "disable-additional-properties": "disable_additional_properties"}


def structured_outputs_from_request(request) -> Optional[StructuredOutputsParams]:
    """The request's constraint for CompletionRequest and ChatCompletionRequest alike (APIError 400
    on a bad field, or on more than one constraint); a request object without these fields has
    none."""
    found: list[tuple[str, str, Any]] = []  # (the field as the client wrote it, kind, value)
    options: dict[str, Any] = {}
    _from_response_format(getattr(request, "response_format", None), found)
    _from_structured_outputs(getattr(request, "structured_outputs", None), found, options)
    _from_guided_fields(request, found, options)
    if getattr(request, "tools", None) is not None:
        schema = tool_choice_schema(request)
        if schema is not None:  # vLLM: the tools' schema replaces the rest
            return StructuredOutputsParams(json=schema)
    if len(found) > 1:
        raise APIError("You can only use one kind of structured outputs constraint but multiple are specified: "
                       f"{', '.join(where for where, _, _ in found)}", 400, found[1][0].split(" ")[0])
    if not found:
        if getattr(request, "structured_outputs", None) is not None:
            # Options alone (disable_any_whitespace, ...) shape a constraint given elsewhere.
            raise APIError("You must use one kind of structured outputs constraint but none are specified: "
                           f"structured_outputs needs one of {', '.join(CONSTRAINTS)}.", 400, "structured_outputs")
        return None
    _, kind, value = found[0]
    return StructuredOutputsParams(**{kind: value}, **options)


def _from_response_format(fmt: Optional[dict], found: list) -> None:
    if fmt is None:
        return
    kind = fmt.get("type")
    if kind == "text":
        return
    where = f"response_format ({kind})"
    if kind == "json_object":
        found.append((where, "json_object", True))
    elif kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise APIError("response_format.json_schema is required with type json_schema: "
                           '{"name": ..., "schema": {...}}.', 400, "response_format.json_schema")
        if not isinstance(spec.get("name"), str):
            raise APIError("response_format.json_schema.name must be a string.", 400, "response_format.json_schema.name")
        for key, typ in (("strict", bool), ("description", str)):
            if spec.get(key) is not None and not isinstance(spec[key], typ):
                raise APIError(f"response_format.json_schema.{key} must be a {typ.__name__}.", 400,
                               f"response_format.json_schema.{key}")
        if spec.get("schema") is None:
            found.append((where, "json_object", True))
        else:
            found.append((where, "json", _json_schema(spec["schema"], "response_format.json_schema.schema")))
    elif kind == "structural_tag":
        found.append((where, "structural_tag", _structural_tag(fmt, "response_format")))
    else:
        raise APIError(f"response_format.type must be one of {', '.join(RESPONSE_FORMATS)}; got {kind!r}.", 400,
                       "response_format.type")


def _from_structured_outputs(so: Optional[dict], found: list, options: dict) -> None:
    if so is None:
        return
    for kind in CONSTRAINTS:
        value = so.get(kind)
        if value is None:
            continue
        where = f"structured_outputs.{kind}"
        if kind == "json_object":
            if not isinstance(value, bool):
                raise APIError(f"{where} must be a boolean.", 400, where)
            if value:
                found.append((where, kind, True))
        else:
            found.append((where, kind, _CHECKS[kind](value, where)))
    for flag in _FLAGS:
        if so.get(flag) is not None:
            if not isinstance(so[flag], bool):
                raise APIError(f"structured_outputs.{flag} must be a boolean.", 400, f"structured_outputs.{flag}")
            options[flag] = so[flag]
    if so.get("whitespace_pattern") is not None:
        options["whitespace_pattern"] = _nonempty(so["whitespace_pattern"], "structured_outputs.whitespace_pattern")


def _from_guided_fields(request, found: list, options: dict) -> None:
    for field, kind in GUIDED_FIELDS:
        value = getattr(request, field, None)
        if value is not None:
            found.append((field, kind, _CHECKS[kind](value, field)))
    pattern = getattr(request, "guided_whitespace_pattern", None)
    if pattern is not None:
        options.setdefault("whitespace_pattern", _nonempty(pattern, "guided_whitespace_pattern"))
    backend = getattr(request, "guided_decoding_backend", None)
    if backend:
        for flag, value in backend_options(backend).items():
            options.setdefault(flag, value)
        options["backend"] = backend.partition(":")[0]


def backend_options(backend: str) -> dict[str, bool]:
    """guided_decoding_backend as older vLLM took it ("xgrammar", "auto", or "name:opt,opt"):
    the options it sets; a backend cserve does not build is a 400 naming it."""
    name, _, opts = backend.partition(":")
    try:
        check_backend(name, "guided_decoding_backend")
    except ValueError as e:
        raise APIError(str(e), 400, "guided_decoding_backend") from None
    out = {}
    for opt in (o.strip() for o in opts.split(",")):
        if not opt:
            continue
        if opt not in BACKEND_OPTIONS:
            raise APIError(f"guided_decoding_backend: unknown option {opt!r}; the options are "
                           f"{', '.join(BACKEND_OPTIONS)}.", 400, "guided_decoding_backend")
        out[BACKEND_OPTIONS[opt]] = True
    return out


# -- one check per constraint: the value as StructuredOutputsParams holds it ----------------------


def _json_value(value: Any, where: str) -> Any:
    """A JSON value given as itself or as its JSON text."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as e:
        raise APIError(f"{where}: Invalid JSON grammar specification ({e}).", 400, where) from None


def _json_schema(value: Any, where: str) -> Any:
    """A JSON schema: an object or true (as itself or JSON text)."""
    schema = _json_value(value, where)
    if schema is False:
        raise APIError(f"{where}: the schema false matches no output.", 400, where)
    if not isinstance(schema, (dict, bool)):
        raise APIError(f"{where} must be a JSON schema: an object (or its JSON text).", 400, where)
    return schema


def _nonempty(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise APIError(f"{where} must be a string.", 400, where)
    if not value.strip():
        raise APIError(f"{where} cannot be an empty string.", 400, where)
    return value


def _choice(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise APIError(f"{where} must be a list of strings.", 400, where)
    if not value:
        raise APIError(f"{where} cannot be an empty list.", 400, where)
    return list(value)


def _structural_tag(value: Any, where: str) -> str:
    """A structural tag as the JSON text xgrammar compiles: {"type": "structural_tag", "format":
    {...}}. vLLM's legacy form ({"structures": [{"begin", "schema", "end"}], "triggers": [...]})
    becomes the "triggered_tags" format it stands for, as xgrammar converts it."""
    tag = _json_value(value, where)
    if not isinstance(tag, dict):
        raise APIError(f"{where} must be a structural tag object (or its JSON text).", 400, where)
    if tag.get("type", "structural_tag") != "structural_tag":
        raise APIError(f"{where}.type must be 'structural_tag'.", 400, where)
    if "structures" in tag:
        fmt = _legacy_structural_tag(tag, where)
    else:
        fmt = tag.get("format")
        if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
            raise APIError(f"{where} needs a 'format' object with a 'type' (or the legacy 'structures' and "
                           "'triggers').", 400, where)
    return json.dumps({"type": "structural_tag", "format": fmt}, ensure_ascii=False)


def _legacy_structural_tag(tag: dict, where: str) -> dict:
    structures, triggers = tag.get("structures"), tag.get("triggers")
    if not isinstance(triggers, list) or not all(isinstance(t, str) and t for t in triggers):
        raise APIError(f"{where}.triggers must be a list of non-empty strings.", 400, where)
    if not isinstance(structures, list):
        raise APIError(f"{where}.structures must be a list of {{begin, schema, end}} objects.", 400, where)
    tags = []
    for i, s in enumerate(structures):
        at = f"{where}.structures[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("begin"), str) or not isinstance(s.get("end"), str):
            raise APIError(f"{at} must be an object with string 'begin' and 'end' and a 'schema'.", 400, where)
        if s.get("schema") is None:
            raise APIError(f"{at}.schema is required.", 400, where)
        tags.append({"type": "tag", "begin": s["begin"],
                     "content": {"type": "json_schema", "json_schema": _json_schema(s["schema"], f"{at}.schema")},
                     "end": s["end"]})
    return {"type": "triggered_tags", "triggers": triggers, "tags": tags}


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "json": _json_schema, "regex": _nonempty, "choice": _choice, "grammar": _nonempty,
    "structural_tag": _structural_tag,
}
