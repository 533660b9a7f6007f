"""Turn the Backend node's raw widget values (strings) into a spec, with problems for bad text.

Shared by the node, the headless runner and the HTTP routes so that all three say the same thing.
"""

from __future__ import annotations

import json

from ..known.catalogue import options_example
from ..problems import Problem
from ..safe_files import MAX_JSON_DEPTH, json_depth
from .spec import BackendSpec

NO_FILE = "none"


def parse_components(text: str) -> tuple[tuple[str, ...] | None, list[Problem]]:
    """ "transformer, text_encoder_2" -> ("transformer", "text_encoder_2"); "" -> None (all)."""
    if not isinstance(text, str):
        return None, [
            Problem(
                "components_type",
                "components",
                f"expected comma-separated names, got {text!r}",
                'e.g. "transformer, text_encoder_2", or empty for all',
            )
        ]
    names = [n.strip() for n in text.replace("\n", ",").split(",") if n.strip()]
    if not names:
        return None, []
    bad = [n for n in names if not n.replace("_", "").isalnum()]
    if bad:
        return None, [
            Problem(
                "components_syntax",
                "components",
                f"{bad[0]!r} is not a component name",
                'separate names with commas, e.g. "transformer, text_encoder_2"',
            )
        ]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        return None, [
            Problem("components_duplicate", "components", f'"{dupes[0]}" is listed twice', "list each component once")
        ]
    return tuple(names), []


def parse_options(text, example: str | None = None) -> tuple[dict, list[Problem]]:
    """The options text as a dict, or the problem. `example`: an object the chosen quant type takes
    (catalogue.options_example), shown in the fix; without it the fix shows the form only."""
    shape = f"e.g. {example}" if example and example != "{}" else "or {} (this quant type takes no options)"
    if example is None:
        shape = 'e.g. {"name": value}, or {} for none'
    if isinstance(text, dict):
        return text, []
    if not isinstance(text, str) or not text.strip():
        return {}, []
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        where = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        return {}, [
            Problem(
                "options_not_json",
                "options",
                f"options is not valid JSON ({where})",
                f"write a JSON object, {shape} — keys and strings in double quotes",
            )
        ]
    if json_depth(value) > MAX_JSON_DEPTH:
        return {}, [
            Problem(
                "options_not_json",
                "options",
                f"options nests more than {MAX_JSON_DEPTH} levels deep",
                f"write a flat JSON object, {shape}",
            )
        ]
    if not isinstance(value, dict):
        return {}, [
            Problem(
                "options_not_object",
                "options",
                f"options must be a JSON object, got {type(value).__name__}",
                f"wrap it in braces, {shape}",
            )
        ]
    return value, []


def spec_from_inputs(
    backend: str,
    quant_type: str,
    compute_dtype: str = "auto",
    components: str = "",
    options="{}",
    gguf_file: str | None = None,
) -> tuple[BackendSpec | None, list[Problem]]:
    problems = []
    for name, value in (
        ("backend", backend),
        ("quant_type", quant_type),
        ("compute_dtype", compute_dtype),
        ("gguf_file", NO_FILE if gguf_file is None else gguf_file),
    ):
        if not isinstance(value, str):  # e.g. a workflow that links another node's output into a widget
            problems.append(
                Problem(
                    "spec_malformed",
                    name,
                    f"{name} must be text, got {type(value).__name__}",
                    "choose it from the list on the Quantization Backend node",
                )
            )
    names, more = parse_components(components)
    problems += more
    opts, more = parse_options(options, options_example(backend, quant_type))
    problems += more
    if problems:
        return None, problems
    gguf = gguf_file if gguf_file and gguf_file != NO_FILE else None
    return BackendSpec.make(backend, quant_type, compute_dtype, opts, names, gguf), []
