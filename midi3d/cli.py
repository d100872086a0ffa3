"""The ``midi3d`` command line (typer + rich)."""

from __future__ import annotations

import logging
import sys
import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="midi3d: one photo of a scene → 3D object meshes in a shared scene frame.")
err_console = Console(stderr=True, soft_wrap=True)
console = Console(soft_wrap=True)

EXIT_BAD_INPUT = 2
EXIT_SCENES_FAILED = 1


class Extract(str, Enum):
    hierarchical = "hierarchical"
    dense = "dense"


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_time=False, show_path=False)], force=True)


def _torch_dtype(dtype: DType, device: str):
    import torch

    chosen = getattr(torch, dtype.value)
    if chosen is torch.float16 and device.startswith("cpu"):
        _fail("--dtype float16 needs a GPU; use --dtype bfloat16 or float32 on the CPU")
    if device.startswith("cuda") and not torch.cuda.is_available():
        _fail(f"--device {device}: CUDA is not available on this machine")
    return chosen


def _load_pipeline(model: Path | None, dtype, device: str, mi_layers: list[int] | None, trust_pickle: bool, quiet: bool):
    from .embedded import load_embedded_pipeline
    from .pipelines.pipeline_midi import MIDIPipeline

    if model is None:
        pipe = load_embedded_pipeline(dtype=dtype, device=device, mi_layers=mi_layers)
    else:
        pipe = MIDIPipeline.from_pretrained(model, dtype=dtype, device=device, mi_layers=mi_layers,
                                            allow_pickle=trust_pickle)
    pipe.set_progress_bar_config(disable=quiet, leave=False)
    return pipe


def _scene_pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    pairs = []
    for image in sorted(folder.glob("*_rgb.png")):
        name = image.name[: -len("_rgb.png")]
        pairs.append((name, image, folder / f"{name}_seg.png"))
    return pairs


@app.command()
def generate(
    input: Path = typer.Argument(..., help="A scene image, or a folder of NAME_rgb.png + NAME_seg.png pairs."),
    seg: Path | None = typer.Option(None, "--seg", help="Instance label map of the image (single-image mode)."),
    output: Path | None = typer.Option(None, "-o", "--output",
                                       help="Output scene file (.glb/.obj/.ply), or folder in folder mode."),
    model: Path | None = typer.Option(None, "--model", help="Pipeline folder (official layout). Default: embedded."),
    steps: int = typer.Option(50, "--steps", min=1, help="Denoising steps."),
    guidance: float = typer.Option(7.0, "--guidance", help="Classifier-free guidance scale (<= 1 disables it)."),
    seed: int = typer.Option(42, "--seed"),
    mi_layers: str | None = typer.Option(None, "--mi-layers",
                                         help="Multi-instance blocks: '8-12', '8,9,10', 'none' or 'default'."),
    pad: bool = typer.Option(False, "--pad", help="Official image padding around the objects."),
    latent_tokens: int | None = typer.Option(None, "--latent-tokens", min=1,
                                             help="Latent tokens per instance (default: the transformer width)."),
    device: str = typer.Option("cpu", "--device"),
    dtype: DType = typer.Option(DType.float32, "--dtype"),
    extract: Extract = typer.Option(Extract.hierarchical, "--extract", help="Mesh extraction mode."),
    resolution: int = typer.Option(256, "--resolution", help="Effective grid resolution (cells per axis)."),
    smooth: bool = typer.Option(False, "--smooth", help="Official 3x3x3 mean-filter smoothing (dense only)."),
    faces: int = typer.Option(0, "--faces", min=0, help="Decimate each mesh to this many faces (0 = keep)."),
    no_postprocess: bool = typer.Option(False, "--no-postprocess", help="Skip the mesh clean-up."),
    fmt: str = typer.Option("glb", "--format", help="Output format in folder mode: glb, obj or ply."),
    max_instances: int = typer.Option(64, "--max-instances", help="Refuse label maps with more instances."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                      help="Allow pickled .bin/.ckpt weights (loaded with weights_only=True)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summaries."),
) -> None:
    """Generate a 3D scene (one mesh per instance) from an image and its instance label map."""
    from .geometry.postprocess import PostprocessConfig
    from .io.errors import InputError
    from .models.checkpoint import CheckpointError
    from .models.transformers.midi_transformer import parse_layer_list
    from .pipelines.pipeline_midi import ExtractionOptions
    from .pipelines.scene import EXPORT_FORMATS, GenerateOptions, export_scene, generate_scene, load_scene

    _setup_logging(quiet)
    if not input.exists():
        _fail(f"{input}: file not found")
    if fmt not in EXPORT_FORMATS:
        _fail(f"--format {fmt}: use one of {', '.join(EXPORT_FORMATS)}")
    if extract is Extract.hierarchical and smooth:
        _fail("--smooth applies to --extract dense only")
    if resolution < 8 or resolution & (resolution - 1):
        _fail(f"--resolution {resolution}: must be a power of two >= 8")
    try:
        layers = parse_layer_list(mi_layers)
    except ValueError:
        _fail(f"--mi-layers {mi_layers!r}: expected e.g. '8-12', '8,9,10', 'none' or 'default'")
    options = GenerateOptions(
        steps=steps, guidance=guidance, seed=seed, pad=pad, num_latent_tokens=latent_tokens,
        extraction=ExtractionOptions(method=extract.value, resolution=resolution, smooth=smooth,
                                     coarse_resolution=min(32, resolution)),
        postprocess=None if no_postprocess else PostprocessConfig(target_faces=faces),
    )

    if input.is_dir():
        pairs = _scene_pairs(input)
        if not pairs:
            _fail(f"{input}: no NAME_rgb.png + NAME_seg.png pairs in this folder")
        out_dir = output or Path("outputs")
        if out_dir.exists() and not out_dir.is_dir():
            _fail(f"{out_dir}: exists and is not a folder")
    else:
        if seg is None:
            _fail(f"{input}: no label map given; pass --seg LABELS.png")
        out_path = output or Path(f"{input.stem}.glb")
        if out_path.suffix.lower().lstrip(".") not in EXPORT_FORMATS:
            _fail(f"{out_path}: unsupported output format {out_path.suffix!r} (use .glb, .obj or .ply)")
        try:
            scene = load_scene(input, seg, max_instances=max_instances)
        except InputError as err:
            _fail(str(err))

    torch_dtype = _torch_dtype(dtype, device)
    try:
        pipe = _load_pipeline(model, torch_dtype, device, layers, trust_pickle, quiet)
    except (CheckpointError, ValueError) as err:
        _fail(str(err))

    if not input.is_dir():
        start = time.perf_counter()
        try:
            result = generate_scene(pipe, scene, options)
            export_scene(result, out_path)
        except InputError as err:
            _fail(str(err))
        if not quiet:
            _summary(out_path, result, time.perf_counter() - start)
        return

    failed = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, disable=quiet, transient=True) as progress:
        task = progress.add_task("scenes", total=len(pairs))
        for name, image, seg_path in pairs:
            start = time.perf_counter()
            try:
                scene = load_scene(image, seg_path, max_instances=max_instances)
                result = generate_scene(pipe, scene, options)
                path = export_scene(result, out_dir / f"{name}.{fmt}")
                if not quiet:
                    progress.console.print(_summary_line(path, result, time.perf_counter() - start), highlight=False)
            except (InputError, ValueError, RuntimeError) as err:
                failed += 1
                progress.console.print(f"[red]failed[/] {name}: {err}", highlight=False)
            progress.advance(task)
    if not quiet:
        err_console.print(f"{len(pairs) - failed}/{len(pairs)} scenes written to {out_dir}", highlight=False)
    if failed:
        raise typer.Exit(EXIT_SCENES_FAILED)


def _summary_line(path: Path, result, seconds: float) -> str:
    made = len(result.ids) - len(result.empty_ids)
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    empty = f" (no surface: {', '.join(map(str, result.empty_ids))})" if result.empty_ids else ""
    return f"{path}: {made}/{len(result.ids)} instances{empty} in {seconds:.1f}s ({timing})"


def _summary(path: Path, result, seconds: float) -> None:
    console.print(_summary_line(path, result, seconds), highlight=False)


@app.command()
def version() -> None:
    """Print the installed version."""
    from . import __version__

    console.print(__version__)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="midi3d")


if __name__ == "__main__":
    sys.exit(main())
