"""Command line: run or validate exported workflows without the editor, and the demo."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..resolver.problems import Problem, ValidationError
from ..resolver.load import LoadError
from .builtin import SaveImage
from .execute import ALL_NODES, execute
from .workflow import read_workflow, to_api

EXAMPLES = Path(__file__).resolve().parent.parent / "example_workflows"
DEMO_WORKFLOW = EXAMPLES / "flux_nf4_transformer.json"
DEFAULT_CACHE = Path(os.environ.get("PIPEQUANT_CACHE", Path.home() / ".cache" / "pipequant"))


def _parse_set(items: list[str]) -> list[tuple[str, str, object]]:
    out = []
    for item in items:
        target, _, raw = item.partition("=")
        kind, _, name = target.partition(".")
        if not raw or not name:
            raise ValidationError([Problem("bad_set", "--set", f"{item!r} is not CLASS.input=value",
                                           "e.g. --set PipeQuantSampler.steps=4")])
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.append((kind, name, value))
    return out


def apply_overrides(prompt: dict, overrides) -> dict:
    """Set `input` on every node of class `kind` (e.g. point every loader at another model)."""
    for kind, name, value in overrides:
        for node in prompt.values():
            if node["class_type"] == kind:
                node["inputs"][name] = value
    return prompt


def load_prompt(path: Path, overrides=()) -> dict:
    return apply_overrides(to_api(read_workflow(path), ALL_NODES), overrides)


def _configure(args) -> None:
    if args.models:
        os.environ["PIPEQUANT_MODELS"] = os.pathsep.join(str(Path(m).resolve()) for m in args.models)
    if getattr(args, "gguf", None):
        os.environ["PIPEQUANT_GGUF"] = os.pathsep.join(str(Path(m).resolve()) for m in args.gguf)
    if getattr(args, "output", None):
        SaveImage.output_dir = Path(args.output)


def cmd_run(args) -> int:
    _configure(args)
    ui = execute(load_prompt(args.workflow, _parse_set(args.set)))
    _print_ui(ui)
    return 0


def cmd_validate(args) -> int:
    _configure(args)
    execute(load_prompt(args.workflow, _parse_set(args.set)), validate_only=True)
    print(f"{args.workflow}: OK (validated against the models; no weights read)")
    return 0


def _print_ui(ui: dict) -> None:
    for node_id, out in ui.items():
        for text in out.get("text", []):
            print(text)
        for image in out.get("images", []):
            print(f"wrote {image}")


def demo_overrides(device: str) -> list[tuple[str, str, object]]:
    """Point the bundled example at the tiny pipeline, small enough to run on any CPU in seconds."""
    overrides = [("PipeQuantLoadPipeline", "model", "tiny-flux"), ("PipeQuantLoadPipeline", "device", device),
                 ("PipeQuantSampler", "steps", 4), ("PipeQuantSampler", "width", 128),
                 ("PipeQuantSampler", "height", 128), ("PipeQuantSampler", "max_sequence_length", 64),
                 ("SaveImage", "filename_prefix", "pipequant-demo")]
    from ..resolver.catalogue import DIFFUSERS, get_backend

    if not get_backend("bitsandbytes_4bit").cpu_supported(DIFFUSERS) and device == "cpu":
        # diffusers' bnb loader needs a GPU: use the int8 plan that runs everywhere.
        overrides += [("PipeQuantBackend", "backend", "torchao"),
                      ("PipeQuantBackend", "quant_type", "int8_weight_only"),
                      ("PipeQuantBackend", "options", "{}")]
    return overrides


def cmd_demo(args) -> int:
    from ..resolver.devices import resolve_device
    from ..testing import ensure_pipeline

    models = Path(args.cache) / "models"
    ensure_pipeline("flux", models)
    args.models, args.gguf = [models], None
    _configure(args)
    device = resolve_device("auto")
    overrides = demo_overrides(device)
    swapped = any(k == "PipeQuantBackend" for k, _, _ in overrides)
    print(f"demo: {DEMO_WORKFLOW.name} on tiny-flux ({device})"
          + (" — bitsandbytes needs a GPU here, using torchao int8_weight_only" if swapped else ""))
    ui = execute(load_prompt(DEMO_WORKFLOW, overrides))
    _print_ui(ui)
    report = "\n".join(t for out in ui.values() for t in out.get("text", []))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipequant-demo-report.txt").write_text(report + "\n")
    print(f"wrote {out / 'pipequant-demo-report.txt'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipequant", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, helptext in (("run", cmd_run, "run an exported workflow (API or UI format)"),
                                 ("validate", cmd_validate, "check a workflow against the models, loading no weights")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("workflow", type=Path)
        p.add_argument("--models", action="append", default=[], help="a folder of diffusers pipelines (repeatable); "
                                                                     "default: $PIPEQUANT_MODELS")
        p.add_argument("--gguf", action="append", default=[], help="a folder of .gguf files (repeatable)")
        p.add_argument("--output", default="output", help="where SaveImage/PreviewImage write PNGs")
        p.add_argument("--set", action="append", default=[], metavar="CLASS.input=value",
                       help="override an input on every node of a class, e.g. PipeQuantSampler.steps=4")
        p.set_defaults(func=func)
    p = sub.add_parser("demo", help="build a tiny FLUX-shaped pipeline and run the bundled example on it")
    p.add_argument("--output", default="pipequant-output")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the tiny pipeline is built once")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
