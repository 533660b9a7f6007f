"""Command line: run or validate exported workflows without the editor, and the demo.

Exit codes: 0 ok; 2 invalid input (workflow, model folder, plan: nothing was loaded);
3 a load failed; 4 the run failed after loading (sampling, saving).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from ..resolver.keep import LoadError, SaveError
from ..resolver.problems import Problem, ValidationError
from ..resolver.safe_files import FileProblem, parse_json
from ..resolver.suggest import did_you_mean
from .builtin import LoadImage, SaveImage
from .execute import ALL_NODES, RunError, execute
from .quiet import quiet_third_party
from .workflow import read_workflow, to_api

EXIT_OK, EXIT_INVALID, EXIT_LOAD, EXIT_RUN = 0, 2, 3, 4

EXAMPLES = Path(__file__).resolve().parent.parent / "example_workflows"
DEMO_WORKFLOW = EXAMPLES / "FLUX NF4 transformer.json"
# An empty PIPEQUANT_CACHE means "not set" (not the current folder).
DEFAULT_CACHE = Path(os.environ.get("PIPEQUANT_CACHE", "").strip() or Path.home() / ".cache" / "pipequant")


DISK_CACHE_HELP = (
    "Quantized components are cached on disk after their first load and read from there next time: "
    "folder $PIPEQUANT_DISK_CACHE (default ~/.cache/pipequant/quantized; 'off' disables it), at most "
    "$PIPEQUANT_DISK_CACHE_GB GB (default 64). See 'python -m pipequant cache list'."
)


def _parse_set(items: list[str]) -> list[tuple[str, str, object]]:
    """CLASS.input=value items; a class or input that does not exist is an error, not ignored."""
    out = []
    for item in items:
        target, _, raw = item.partition("=")
        kind, _, name = target.partition(".")
        if not raw or not name:
            raise ValidationError(
                [
                    Problem(
                        "bad_set", "--set", f"{item!r} is not CLASS.input=value", "e.g. --set PipeQuantSampler.steps=4"
                    )
                ]
            )
        if kind not in ALL_NODES:
            raise ValidationError(
                [
                    Problem(
                        "set_unknown_class",
                        "--set",
                        f'{item!r}: there is no node class "{kind}"',
                        did_you_mean(kind, list(ALL_NODES)),
                    )
                ]
            )
        spec = ALL_NODES[kind].INPUT_TYPES()
        inputs = [*spec.get("required", {}), *spec.get("optional", {})]
        if name not in inputs:
            raise ValidationError(
                [
                    Problem(
                        "set_unknown_input",
                        "--set",
                        f'{item!r}: {kind} has no input "{name}"',
                        did_you_mean(name, inputs),
                    )
                ]
            )
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            value = raw
        out.append((kind, name, value))
    return out


def check_overrides(prompt: dict, overrides) -> None:
    """Each --set must reach a node: one for a class the workflow does not use is an error."""
    present = {node["class_type"] for node in prompt.values()}
    for kind, name, _ in overrides:
        if kind not in present:
            raise ValidationError(
                [
                    Problem(
                        "set_unused",
                        "--set",
                        f"{kind}.{name}: the workflow has no {kind} node",
                        "nodes in it: " + ", ".join(sorted(present)),
                    )
                ]
            )


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
    if getattr(args, "loras", None):
        os.environ["PIPEQUANT_LORAS"] = os.pathsep.join(str(Path(m).resolve()) for m in args.loras)
    if getattr(args, "output", None):
        SaveImage.output_dir = Path(args.output)
    if getattr(args, "input", None):
        LoadImage.input_dir = Path(args.input)


def _user_prompt(args) -> dict:
    overrides = _parse_set(args.set)
    prompt = to_api(read_workflow(args.workflow), ALL_NODES)
    check_overrides(prompt, overrides)
    return apply_overrides(prompt, overrides)


def cmd_run(args) -> int:
    _configure(args)
    ui = execute(_user_prompt(args))
    _print_ui(ui)
    return 0


def cmd_validate(args) -> int:
    _configure(args)
    ui = execute(_user_prompt(args), validate_only=True)
    for out in ui.values():
        for warning in out.get("warnings", []):
            print(warning)
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
    overrides = [
        ("PipeQuantLoadPipeline", "model", "tiny-flux"),
        ("PipeQuantLoadPipeline", "device", device),
        ("PipeQuantSampler", "steps", 4),
        ("PipeQuantSampler", "width", 128),
        ("PipeQuantSampler", "height", 128),
        ("PipeQuantSampler", "max_sequence_length", 64),
        ("SaveImage", "filename_prefix", "pipequant-demo"),
    ]
    from ..resolver.known import DIFFUSERS, get_backend

    if not get_backend("bitsandbytes_4bit").cpu_supported(DIFFUSERS) and device == "cpu":
        # diffusers' bnb loader needs a GPU: use the int8 plan that runs everywhere.
        overrides += [
            ("PipeQuantBackend", "backend", "torchao"),
            ("PipeQuantBackend", "quant_type", "int8_weight_only"),
            ("PipeQuantBackend", "options", "{}"),
        ]
    return overrides


def cmd_demo(args) -> int:
    from ..resolver.known import resolve_device
    from ..testing import ensure_pipeline

    models = Path(args.cache) / "models"
    ensure_pipeline("flux", models)
    args.models, args.gguf = [models], None
    _configure(args)
    device = resolve_device("auto")
    overrides = demo_overrides(device)
    swapped = any(k == "PipeQuantBackend" for k, _, _ in overrides)
    print(
        f"demo: {DEMO_WORKFLOW.name} on tiny-flux ({device})"
        + (" — bitsandbytes needs a GPU here, using torchao int8_weight_only" if swapped else "")
    )
    ui = execute(load_prompt(DEMO_WORKFLOW, overrides))
    _print_ui(ui)
    print(
        "note: the image is noise on purpose: the tiny pipeline has random weights (no download). It shows the "
        "plumbing works; point --models at a real pipeline with `run` for a picture."
    )
    report = "\n".join(t for out in ui.values() for t in out.get("text", []))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipequant-demo-report.txt").write_text(report + "\n")
    print(f"wrote {out / 'pipequant-demo-report.txt'}")
    return 0


def cmd_plan(args) -> int:
    """Plan a model for a budget and goal; exit 0 when a plan fits, 2 when none does."""
    from ..resolver.decide import NothingFits, plan_for, profile_from
    from ..resolver.files import env_roots, resolve_model

    _configure(args)
    profile = None
    if args.device_profile:
        try:
            profile = profile_from(parse_json(args.device_profile, "--device-profile"))
        except FileProblem as exc:  # not JSON, or nested past any real profile
            raise ValidationError(
                [
                    Problem(
                        "device_profile_invalid",
                        "--device-profile",
                        str(exc).replace("--device-profile ", "", 1),
                        '{"name": "RTX 4090", "total_gb": 24, "free_gb": 23, "compute_capability": [8, 9]}',
                    )
                ]
            ) from None
    folder = resolve_model(args.model, env_roots(), field="MODEL")
    try:
        result = plan_for(
            folder,
            budget_gb=args.budget,
            goal=args.goal,
            width=args.width,
            height=args.height,
            batch_size=args.batch_size,
            allow_offload=not args.no_offload,
            profile=profile,
            variant=args.variant,
        )
    except NothingFits as exc:
        if args.json:
            print(
                json.dumps(
                    {
                        "components": {},
                        "offload": exc.mode,
                        "predicted_peak_bytes": exc.smallest_peak,
                        "fits": False,
                        "rejected": [],
                        "error": str(exc),
                    }
                )
            )
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json()) if args.json else result.table(verbose=args.verbose))
    return 0


def _quality_spec(args):
    """The Backend node's spec from --backend/--quant-type/--options/--components (errors exit 2)."""
    from ..resolver.links import spec_from_inputs

    spec, problems = spec_from_inputs(args.backend, args.quant_type, "auto", args.components or "", args.options)
    if problems:
        raise ValidationError(problems)
    return spec


def _run_quality_check(args, spec, components):
    from ..resolver.files import env_roots
    from ..resolver.keep import DiskCache, configured_folder
    from ..resolver.known import resolve_device
    from ..resolver.measure import BOTH, COMPONENTS, check_quality

    folder = configured_folder()
    return check_quality(
        args.model,
        spec,
        roots=env_roots(),
        dtype=args.dtype,
        device=resolve_device(args.device),
        offload=args.offload,
        prompt=args.prompt,
        seed=args.seed,
        steps=args.steps,
        width=args.width,
        height=args.height,
        max_sequence_length=args.max_sequence_length,
        measures=BOTH if args.images else COMPONENTS,
        components=components,
        disk_cache=DiskCache(folder) if folder is not None else None,
    )


def cmd_quality(args) -> int:
    """Measure what a plan costs: per-component errors (and with --images PSNR/SSIM/LPIPS)."""
    _configure(args)
    spec = _quality_spec(args)
    components = [c.strip() for c in args.components.split(",") if c.strip()] if args.components else None
    try:
        report = _run_quality_check(args, spec, components)
    except (ValidationError, LoadError):
        raise
    except Exception as exc:  # a failure while sampling or measuring: exit 4, named, no traceback
        raise RunError("the quality check", exc) from None
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(report.table())
    if args.images and args.output and report.comparison is not None:
        from PIL import Image

        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(report.comparison):
            path = out / f"pipequant-quality-{i}.png"
            Image.fromarray((image.numpy() * 255).round().astype("uint8")).save(path)
            print(f"wrote {path} (reference | plan | difference x4)", file=sys.stderr if args.json else sys.stdout)
    return 0


def _cache_folder(args) -> Path:
    from ..resolver.keep import configured_folder, default_folder

    return Path(args.folder) if args.folder else (configured_folder() or default_folder())


def _entry_line(e: dict) -> str:
    from ..resolver.keep import human_bytes

    source, plan = e["source"], e["plan"]
    where = f"{source.get('model', '?')} / {source.get('component', '?')}" if source else "(unreadable entry)"
    what = f"{plan.get('backend')}:{plan.get('quant_type')} {plan.get('load_dtype')}" if plan else "-"
    used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"]))
    return f"{e['key'][:12]}  {human_bytes(e['bytes']):>10}  {used}  {what:<32}  {where}"


def cmd_cache(args) -> int:
    from ..resolver.keep import DiskCache, human_bytes

    cache = DiskCache(_cache_folder(args))
    entries, skipped = cache.inventory()
    if args.action == "list":
        if args.older_than is not None:
            entries = [e for e in entries if e["last_used"] < time.time() - args.older_than * 86400]
        print(f"{cache.folder}: {len(entries)} entries, {human_bytes(sum(e['bytes'] for e in entries))}")
        if entries:
            print(f"{'key':<12}  {'size':>10}  {'last used':<16}  {'plan':<32}  source")
        for e in entries:
            print(_entry_line(e))
    else:
        removed = cache.clear(older_than_days=args.older_than)
        for e in removed:
            print(f"removed {_entry_line(e)}")
        print(f"{cache.folder}: removed {len(removed)} entries, {human_bytes(sum(e['bytes'] for e in removed))}")
    if skipped:  # the cache deletes only what it wrote: say what else is there
        print(f"left alone {len(skipped)} item(s) the disk cache did not write:")
        for path in skipped[:20]:
            print(f"  {ascii(path)[1:-1]}")
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more")
    return 0


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (e.g. 30)")
    return value


EXIT_CODES = """exit codes:
  0  success
  1  an unexpected error (a bug: please report it with the traceback)
  2  invalid input, nothing was loaded: the workflow, a model name, a backend option (named in the message)
  3  a load failed after validation (the message names the component and its files)
  4  the run failed after loading (sampling, saving)"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show the third-party libraries' import warnings (hidden by default); plan: every rejected choice",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipequant",
        description=__doc__,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, helptext in (
        ("run", cmd_run, "run an exported workflow (API or UI format)"),
        ("validate", cmd_validate, "check a workflow against the models, loading no weights"),
    ):
        p = sub.add_parser(
            name,
            help=helptext,
            description=f"{helptext}.\n\n{EXIT_CODES}",
            epilog=DISK_CACHE_HELP if name == "run" else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("workflow", type=Path, help="the workflow .json file")
        p.add_argument(
            "--models",
            action="append",
            default=[],
            metavar="DIR",
            help="a folder of diffusers pipelines, repeatable (default: $PIPEQUANT_MODELS, then the "
            "Hugging Face cache unless PIPEQUANT_HF_CACHE=off). Save Quantized Pipeline writes into "
            "the first one, so the copy loads by name",
        )
        p.add_argument(
            "--gguf",
            action="append",
            default=[],
            metavar="DIR",
            help="a folder of .gguf files, repeatable (default: $PIPEQUANT_GGUF, then the model folders)",
        )
        p.add_argument(
            "--loras",
            action="append",
            default=[],
            metavar="DIR",
            help="a folder of LoRA .safetensors files, repeatable (default: $PIPEQUANT_LORAS)",
        )
        p.add_argument(
            "--input", default="input", metavar="DIR", help="where LoadImage reads images, by name (default: ./input)"
        )
        p.add_argument(
            "--output",
            default="output",
            metavar="DIR",
            help="where SaveImage/PreviewImage write PNGs (default: ./output; validate writes "
            "nothing; saved pipelines go to the first --models folder)",
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="CLASS.input=value",
            help="override an input on every node of a class, repeatable, e.g. PipeQuantSampler.steps=4",
        )
        _common(p)
        p.set_defaults(func=func)
    from ..resolver.decide import GOALS

    p = sub.add_parser(
        "plan",
        help="choose each component's quantization to fit a GPU budget, and say why",
        description="Plan MODEL for a memory budget and goal, reading only configs and headers; prints the "
        "plan table (or --json). Exit 0 when a plan fits, 2 when none does.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a pipeline folder name under --models")
    p.add_argument("--models", action="append", default=[], help="a folder of diffusers pipelines (repeatable)")
    p.add_argument("--budget", type=float, default=0.0, help="GiB (2^30 bytes); 0 = the device's free memory")
    p.add_argument("--goal", choices=GOALS, default="balanced")
    p.add_argument(
        "--device-profile",
        help='JSON: {"name": str, "total_gb": float, "free_gb": float, '
        '"compute_capability": [major, minor] | null}; default: this machine',
    )
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--no-offload", action="store_true", help="plans keep every component on the device")
    p.add_argument(
        "--variant",
        default="default",
        help="plan from this weight variant's files (e.g. fp16: model.fp16.safetensors), as the Load node's "
        "variant will read them (default: the plain files)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    _common(p)
    p.set_defaults(func=cmd_plan)
    _quality_parser(sub)
    p = sub.add_parser(
        "demo",
        help="build a tiny FLUX-shaped pipeline and run the bundled example on it",
        description="Build a tiny FLUX-shaped pipeline with random weights (no download, once, in "
        "--cache) and run example_workflows/FLUX NF4 transformer.json on it (torchao "
        "int8 instead of bitsandbytes without a GPU). Writes the image (noise: the "
        "weights are random) and the memory report to --output.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--output",
        default="pipequant-output",
        metavar="DIR",
        help="where the image and pipequant-demo-report.txt go (default: ./pipequant-output)",
    )
    p.add_argument(
        "--cache",
        default=str(DEFAULT_CACHE),
        metavar="DIR",
        help=f"where the tiny pipeline is built once (default: $PIPEQUANT_CACHE or {DEFAULT_CACHE})",
    )
    _common(p)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser(
        "cache",
        help="list or clear the on-disk cache of quantized components",
        description=DISK_CACHE_HELP + " In ComfyUI the folder is models/pipequant_cache. "
        "Least recently used entries are evicted first.",
    )
    p.add_argument("action", choices=("list", "clear"))
    p.add_argument("--older-than", type=_days, metavar="DAYS", help="only entries not used for DAYS days")
    p.add_argument("--folder", help="the cache folder (default: $PIPEQUANT_DISK_CACHE or ~/.cache/pipequant/quantized)")
    p.set_defaults(func=cmd_cache)
    return parser


def _quality_parser(sub) -> None:
    from ..resolver.constants import DEFAULT_DTYPE, LOAD_DTYPES
    from ..resolver.decide import ENV_FOLDER
    from ..resolver.known import DEVICES, OFFLOAD_MODES

    p = sub.add_parser(
        "quality",
        help="measure what a quantization plan costs: per-component error, and PSNR/SSIM against the reference",
        description="Run MODEL unquantized (the reference, in --dtype) and with the plan on the same prompt and seed: "
        "each component's relative output error on one denoising step / one text-encoder pass (and its worst "
        "layers), and with --images the images' PSNR, SSIM and LPIPS (LPIPS only when its weights are already on "
        f"this machine). Component figures are cached in ${ENV_FOLDER} (default ~/.cache/pipequant/quality; "
        "'off' disables it) and the auto planner ranks by them. --json prints "
        '{"components": {name: {"plan", "relative_error"}}, "images": {"psnr", "ssim", "lpips"} | null}.',
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a pipeline folder name under --models")
    p.add_argument("--models", action="append", default=[], help="a folder of diffusers pipelines (repeatable)")
    p.add_argument("--backend", required=True, help="a backend, as on the Quantization Backend node (e.g. torchao)")
    p.add_argument("--quant-type", required=True, help="its quant type (e.g. int8_weight_only)")
    p.add_argument("--options", default="{}", help="backend options as JSON, as on the Backend node")
    p.add_argument(
        "--components",
        default="",
        help="comma-separated components to quantize and measure (default: the backend's default components, "
        "measuring every denoiser and text encoder)",
    )
    p.add_argument("--prompt", default="a photo of a cat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="denoising steps of the image comparison")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--max-sequence-length", type=int, default=0, help="T5 prompt length; 0 = the pipeline's default")
    p.add_argument("--dtype", choices=LOAD_DTYPES, default=DEFAULT_DTYPE, help="the reference's and the load dtype")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--offload", choices=OFFLOAD_MODES, default="none")
    p.add_argument("--images", action="store_true", help="also compare whole images (two full sampling runs)")
    p.add_argument("--output", metavar="DIR", help="with --images: write reference | plan | difference PNGs into DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    _common(p)
    p.set_defaults(func=cmd_quality)


# What `_configure` sets for the nodes a command runs; `main` puts it back, so a caller running
# commands in its own process (a test, a benchmark) keeps its own roots and folders.
CONFIGURED_ENV = ("PIPEQUANT_MODELS", "PIPEQUANT_GGUF", "PIPEQUANT_LORAS")


@contextlib.contextmanager
def _restoring_configuration():
    env = {k: os.environ.get(k) for k in CONFIGURED_ENV}
    folders = SaveImage.output_dir, LoadImage.input_dir
    try:
        yield
    finally:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        SaveImage.output_dir, LoadImage.input_dir = folders


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        quiet_third_party()  # before anything imports torch & co.
    try:
        with _restoring_configuration():
            return args.func(args)
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOAD
    except (RunError, SaveError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUN
