"""The ``midi3d`` command line (typer + rich): parse, call library functions, print.

Every command turns an expected error (bad input, an unusable model folder, an unwritable
output) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from .io.images import DEFAULT_MAX_PIXELS
from .io.labelmap import DEFAULT_MAX_INSTANCES
from .pipelines.memory import DEFAULT_BUDGET_GB
from .pipelines.sampling import DEFAULT_SEED

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


# Options shared by several commands (one help text each).
ModelOpt = Annotated[Path | None, typer.Option("--model", help="Pipeline folder (official layout). Default: embedded.")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Denoising steps; default: the model folder's (50).")]
GuidanceOpt = Annotated[float | None, typer.Option("--guidance", help="Classifier-free guidance scale (<= 1 disables "
                                                   "it); default: the model folder's (embedded 2, official 7).")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=2**63 - 1, help="Noise seed.")]
ResolutionOpt = Annotated[int | None, typer.Option("--resolution", help="Meshing grid (cells per axis, a power of "
                                                   "two); default: the model folder's (embedded 128, official 256).")]
EmptyFallbackOpt = Annotated[str | None, typer.Option("--empty-fallback", help="Instances whose field has no "
                                                     "surface: 'none' (no mesh, the official behaviour) or "
                                                     "iso-levels to mesh instead, tried in order (e.g. "
                                                     "'0.05,0.12,0.25': ever more dilated). Default: the "
                                                     "model folder's.")]
ControlOpt = Annotated[str | None, typer.Option("--control", help="Instance control: a YAML file or a preset "
                                               "(neutral, grounding-0.3, ast-instances, ast-image, isolate-3dis; "
                                               "see docs/control.md). Default: the model folder's, if any.")]
GeneratedBoxesOpt = Annotated[bool, typer.Option("--generated-boxes", help="Object-frame models with a layout "
                                                 "model (the embedded one): let the transformer generate each "
                                                 "instance's 3D box instead of taking it from the layout model.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, …")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Network dtype (float16 needs a GPU).")]
ExtractOpt = Annotated[Extract, typer.Option("--extract", help="Mesh extraction: hierarchical, or dense (the "
                                             "strict official procedure).")]
MaxInstancesOpt = Annotated[int, typer.Option("--max-instances", min=1, help="Refuse label maps with more instances "
                                              "(automatic segmentation keeps this many largest).")]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", min=4, help="Refuse images with more pixels "
                                           "(decompression bombs).")]
MaxMemoryOpt = Annotated[float, typer.Option("--max-memory-gb", min=0.01, help="Refuse generations whose "
                                             "input-dependent memory (image, padding, one instance, meshing grid) "
                                             "would exceed this, before allocating it.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries.")]


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


@contextlib.contextmanager
def _one_line_errors():
    """Bad input, unusable model files and unwritable outputs → one line, exit 2."""
    from .models.checkpoint import CheckpointError

    try:
        yield
    except (ValueError, CheckpointError, FileNotFoundError) as err:  # InputError, OutputError included
        _fail(str(err))


def _require_writable(folder: Path) -> None:
    """Fail now, before any long work, when ``folder`` cannot take files."""
    from .io.files import check_writable

    with _one_line_errors():
        check_writable(folder)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_time=False, show_path=False)], force=True)


def _fallback_levels(text: str | None) -> tuple[float, ...] | None:
    """``--empty-fallback``: ``None`` (the folder's), ``()`` for 'none', or the checked levels."""
    from .geometry.extraction import check_fallback_levels

    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        levels = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--empty-fallback {text!r}: expected 'none' or comma-separated numbers") from None
    return check_fallback_levels(levels, "--empty-fallback")


def _check_sampling(steps: int | None, guidance: float | None, resolution: int | None, mi_layers: str | None) -> None:
    """The user's sampling values, checked before any model is loaded."""
    from .models.layer_spec import check_layer_spec
    from .pipelines.sampling import check_guidance, check_resolution, check_steps

    if steps is not None:
        check_steps(steps, "--steps")
    if guidance is not None:
        check_guidance(guidance, "--guidance")
    if resolution is not None:
        check_resolution(resolution, "--resolution")
    check_layer_spec(mi_layers)


class ComposeControl(str, Enum):
    threedis = "3dis"
    ast = "ast"
    instanceassemble = "instanceassemble"
    none = "none"


ImageModelOpt = Annotated[Path | None, typer.Option("--image-model", help="Local FLUX pipeline folder (e.g. "
                                                   "black-forest-labs/FLUX.1-dev) for the layout's image.")]
ComposeControlOpt = Annotated[ComposeControl, typer.Option("--image-control", help="Layout control of the image "
                              "model: 3dis (3DIS-FLUX masks), ast (AST reweighting), instanceassemble (its released "
                              "weights, --instanceassemble) or none. See docs/compose.md.")]
InstanceAssembleOpt = Annotated[Path | None, typer.Option("--instanceassemble", help="InstanceAssemble's released "
                                "checkpoint folder (pytorch_lora_weights.safetensors + layout.pth/.safetensors).")]


@app.command()
def generate(
    input: Path | None = typer.Argument(None, help="A scene image, or a folder of NAME_rgb.png + NAME_seg.png "
                                        "pairs (or --layout instead)."),
    seg: Path | None = typer.Option(None, "--seg", help="Instance label map of the image (single-image mode). "
                                    "Without it: automatic SAM if $MIDI3D_SAM_CHECKPOINT is set, else the rough "
                                    "classic segmentation (see `midi3d segment`)."),
    output: Path | None = typer.Option(None, "-o", "--output",
                                       help="Output scene file (.glb/.obj/.ply), or folder in folder mode."),
    model: ModelOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    seed: SeedOpt = DEFAULT_SEED,
    mi_layers: str | None = typer.Option(None, "--mi-layers", help="Multi-instance blocks: 'default' (the "
                                         "folder's), 'all', 'none', '8-12', '8,9,10' or '1,4-6'."),
    pad: bool = typer.Option(False, "--pad", help="Official image padding around the objects."),
    control: ControlOpt = None,
    generated_boxes: GeneratedBoxesOpt = False,
    latent_tokens: int | None = typer.Option(None, "--latent-tokens", min=1,
                                             help="Latent tokens per instance (default: the transformer width)."),
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = DType.float32,
    extract: ExtractOpt = Extract.hierarchical,
    resolution: ResolutionOpt = None,
    empty_fallback: EmptyFallbackOpt = None,
    smooth: bool = typer.Option(False, "--smooth", help="Official 3x3x3 mean-filter smoothing (dense only)."),
    faces: int = typer.Option(0, "--faces", min=0, help="Decimate each mesh to this many faces (0 = keep)."),
    no_postprocess: bool = typer.Option(False, "--no-postprocess", help="Skip the mesh clean-up."),
    fmt: str = typer.Option("glb", "--format", help="Output format in folder mode: glb, obj or ply."),
    max_instances: MaxInstancesOpt = DEFAULT_MAX_INSTANCES,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    max_memory_gb: MaxMemoryOpt = DEFAULT_BUDGET_GB,
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Folder mode: regenerate scenes whose output already exists."),
    lora: Path | None = typer.Option(None, "--lora", help="LoRA adapter folder (from midi3d train) to apply."),
    lora_scale: float = typer.Option(1.0, "--lora-scale", help="Strength of the LoRA adapter."),
    texture: str = typer.Option("project", "--texture", help="Colour from the photo through the estimated camera: "
                                "project (baked texture; OBJ/PLY get vertex colours), vertex, or none (instance "
                                "colours). Falls back to instance colours with a warning."),
    camera: bool = typer.Option(True, "--camera/--no-camera", help="Estimate the camera that lines the scene up "
                                "with the photo (a glTF camera node; needed by --texture and --overlay)."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write <output>_overlay.png: photo | rendered "
                                 "instances | blend."),
    layout: Path | None = typer.Option(None, "--layout", help="Start from a layout file instead of an image: "
                                       "layout → image (--image-model) → label map → 3D (see `midi3d compose`)."),
    image_model: ImageModelOpt = None,
    image_control: ComposeControlOpt = ComposeControl.threedis,
    image_steps: int = typer.Option(20, "--image-steps", min=1, help="--layout: denoising steps of the image model."),
    instanceassemble: InstanceAssembleOpt = None,
    trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                      help="Allow pickled .bin/.ckpt weights (loaded with weights_only=True)."),
    quiet: QuietOpt = False,
) -> None:
    """Generate a 3D scene (one mesh per instance) from an image and its instance label map, or from a layout."""
    from .control import load_control
    from .geometry.postprocess import PostprocessConfig
    from .io.errors import InputError
    from .pipelines.batch import AlignOptions, ReadLimits
    from .pipelines.loading import load_pipeline, resolve_dtype
    from .pipelines.pipeline_midi import ExtractionOptions
    from .pipelines.scene import GenerateOptions

    _setup_logging(quiet)
    limits = ReadLimits(max_instances=max_instances, max_pixels=max_pixels)
    with _one_line_errors():
        if extract is Extract.hierarchical and smooth:
            raise InputError("--smooth applies to --extract dense only")
        _check_sampling(steps, guidance, resolution, mi_layers)
        fallback_levels = _fallback_levels(empty_fallback)
        control_config = load_control(control)  # checked before any model loads
        align = AlignOptions(camera=camera, texture=texture, overlay=overlay)
        torch_dtype = resolve_dtype(dtype.value, device)
        if layout is not None:
            out, work = _plan_layout_outputs(input, seg, layout, output, image_model, image_control, image_steps, seed,
                                             device, quiet, instanceassemble, trust_pickle)
        else:
            if input is None:
                raise InputError("give a scene image (or a folder), or --layout LAYOUT")
            out, work = _plan_outputs(input, seg, output, fmt, overwrite, limits, trust_pickle, quiet)
    if work is None:
        return
    options = GenerateOptions(
        steps=steps, guidance=guidance, seed=seed, pad=pad, num_latent_tokens=latent_tokens, control=control_config,
        max_instances=max_instances, max_memory_gb=max_memory_gb,
        extraction=ExtractionOptions(method=extract.value, resolution=resolution, smooth=smooth,
                                     fallback_levels=fallback_levels),
        postprocess=None if no_postprocess else PostprocessConfig(target_faces=faces),
        use_layout_model=not generated_boxes,
    )
    with _one_line_errors():
        pipe = load_pipeline(model, torch_dtype, device, mi_layers, trust_pickle, lora, lora_scale, quiet)
    if input is not None and input.is_dir():
        _generate_folder(pipe, work, options, limits, out, quiet, align)
    else:
        _generate_one(pipe, work, options, out, quiet, align)


def _plan_layout_outputs(input, seg, layout: Path, output: Path | None, image_model, image_control, image_steps: int,
                         seed: int, device: str, quiet: bool, instanceassemble: Path | None = None,
                         trust_pickle: bool = False):
    """``generate --layout``: compose the image first; it and its label map are written next to
    the scene as ``<scene>_image.png`` / ``_image_seg.png`` / ``_image_overlay.png``."""
    from .compose.flux import write_composed
    from .io.errors import InputError
    from .pipelines.batch import check_output_format
    from .pipelines.scene import SceneInputs

    if input is not None or seg is not None:
        raise InputError("--layout replaces the image and --seg: give one or the other")
    out = check_output_format(output or Path(f"{layout.stem}.glb"))
    _require_writable(out.parent)
    _, result = _compose(layout, image_model, image_control, image_steps, 3.5, seed, 64, None, device, quiet,
                         instanceassemble, 0.3, trust_pickle)
    written = write_composed(result, out.with_name(f"{out.stem}_image.png"))
    if not quiet:
        err_console.print(f"{written[0]}: layout image ({result.control} control), label map from "
                          f"{result.label_source}", highlight=False)
    return out, SceneInputs(result.image, result.labels, name=layout.stem)


def _plan_outputs(input: Path, seg: Path | None, output: Path | None, fmt: str, overwrite: bool, limits,
                  trust_pickle: bool, quiet: bool):
    """``(output, work)``: the folder plan or the read scene; ``work`` is ``None`` when a folder run
    has nothing left to do. The output location is checked for writing before any model loads."""
    from .io.errors import InputError
    from .io.files import remove_stale_temporaries
    from .io.paths import refuse_overwriting_inputs
    from .pipelines.batch import check_output_format, plan_folder, read_single_scene

    if not input.exists():
        raise InputError(f"{input}: file not found")
    if not input.is_dir():
        out = check_output_format(output or Path(f"{input.stem}.glb"))
        refuse_overwriting_inputs(out, input, seg)
        scene = read_single_scene(input, seg, limits, allow_pickle=trust_pickle)
        _require_writable(out.parent)
        return out, scene
    out = output or Path("outputs")
    plan = plan_folder(input, out, fmt, overwrite)
    _require_writable(out)
    if plan.skipped and not quiet:
        err_console.print(f"{len(plan.skipped)} scene(s) already in {out}: skipped (--overwrite redoes them)",
                          highlight=False)
    if not plan.todo:
        return out, None
    remove_stale_temporaries(out)  # left by a run that was killed while writing
    return out, plan


def _generate_one(pipe, scene, options, out: Path, quiet: bool, align) -> None:
    from .pipelines.batch import generate_file, summary_line

    start = time.perf_counter()
    with _one_line_errors():  # an OutputError leaves nothing under out
        result = generate_file(pipe, scene, options, out, align)
    if not quiet:
        console.print(summary_line(out, result, time.perf_counter() - start), highlight=False)


def _generate_folder(pipe, plan, options, limits, out: Path, quiet: bool, align) -> None:
    from .pipelines.batch import generate_folder, summary_line
    from .progress import progress_bar, say

    with progress_bar(total=len(plan.todo), desc="scenes", disable=quiet) as bar:
        def done(pair, result, error, seconds):
            bar.update()
            if error is not None:
                say(f"failed {pair.name}: {error}")
            elif not quiet:
                say(summary_line(pair.output, result, seconds))

        with _one_line_errors():
            report = generate_folder(pipe, plan, options, limits, on_scene=done, align=align)
    if not quiet:
        err_console.print(f"{len(report.written)}/{len(plan.todo)} scenes written to {out}", highlight=False)
    if report.failed:
        raise typer.Exit(EXIT_SCENES_FAILED)


class Backend(str, Enum):
    classic = "classic"
    labelmap = "labelmap"
    sam = "sam"


def _parse_prompts(values: list[str], size: int, flag: str) -> list[tuple[float, ...]]:
    """``["x,y", "x,y x,y"]`` → tuples of ``size`` numbers (values may hold several, space separated)."""
    prompts = []
    for value in values:
        for item in value.replace(";", " ").split():
            try:
                numbers = tuple(float(v) for v in item.split(","))
            except ValueError:
                numbers = ()
            if len(numbers) != size:
                _fail(f"{flag} {item!r}: expected {size} comma-separated numbers")
            prompts.append(numbers)
    return prompts


def _compose(layout_path: Path, image_model: Path | None, control: ComposeControl, steps: int, guidance: float,
             seed: int, instance_tokens: int, sam_checkpoint: Path | None, device: str, quiet: bool,
             instanceassemble: Path | None = None, grounding_ratio: float = 0.3, trust_pickle: bool = False,
             depth: Path | None = None):
    """Validate the layout and the options, load the image model, compose; errors are one line."""
    from .compose import load_layout
    from .compose.flux import ComposeOptions, compose_image, load_image_model
    from .io.errors import InputError

    layout = load_layout(layout_path)
    options = ComposeOptions(control=control.value, steps=steps, guidance=guidance, seed=seed,
                             instance_tokens=instance_tokens, instanceassemble=instanceassemble,
                             grounding_ratio=grounding_ratio, trust_pickle=trust_pickle, depth=depth)
    if image_model is None:
        raise InputError("--image-model: a local FLUX pipeline folder is needed to turn a layout into an image")
    pipe = load_image_model(image_model, device=device)
    pipe.set_progress_bar_config(disable=quiet)
    return layout, compose_image(pipe, layout, options, sam_checkpoint)


@app.command()
def compose(
    layout: Path = typer.Argument(..., help="Layout file (JSON/YAML: size, prompt, instances with boxes; "
                                  "docs/compose.md)."),
    output: Path = typer.Option(..., "-o", "--output", help="Scene image to write (PNG); also writes "
                                "<output>_seg.png (label map) and <output>_overlay.png."),
    image_model: ImageModelOpt = None,
    control: ComposeControlOpt = ComposeControl.threedis,
    steps: int = typer.Option(20, "--steps", min=1, help="Denoising steps of the image model."),
    guidance: float = typer.Option(3.5, "--guidance", help="FLUX guidance (distilled guidance embedding)."),
    seed: SeedOpt = DEFAULT_SEED,
    instance_tokens: int = typer.Option(64, "--instance-tokens", min=1, help="3dis: T5 tokens per prompt segment."),
    instanceassemble: InstanceAssembleOpt = None,
    grounding_ratio: float = typer.Option(0.3, "--grounding-ratio", min=0.0, max=1.0,
                                          help="instanceassemble: layout control in the first int(r·steps) steps."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow InstanceAssemble's released layout.pth "
                                      "(a pickle; loaded with weights_only=True)."),
    depth: Path | None = typer.Option(None, "--depth", help="A depth map image for a FLUX-Depth --image-model "
                                      "(black-forest-labs/FLUX.1-Depth-dev), e.g. with 3dis."),
    sam_checkpoint: Path | None = typer.Option(None, "--sam-checkpoint", help="SAM checkpoint for the label map "
                                               "(box prompts); default $MIDI3D_SAM_CHECKPOINT, else the "
                                               "layout's masks/boxes."),
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
) -> None:
    """Turn a layout (boxes + descriptions) into a scene image and its instance label map."""
    from .compose.flux import write_composed

    _setup_logging(quiet)
    with _one_line_errors():
        if output.suffix.lower() != ".png":
            from .io.errors import InputError

            raise InputError(f"{output}: the scene image is written as PNG (use a .png name)")
        _require_writable(output.parent)
        _, result = _compose(layout, image_model, control, steps, guidance, seed, instance_tokens, sam_checkpoint,
                             device, quiet, instanceassemble, grounding_ratio, trust_pickle, depth)
        written = write_composed(result, output)
    if not quiet:
        console.print(f"{written[0]}: {result.labels.max()} instance(s), {result.control} control, label map from "
                      f"{result.label_source}, in {result.seconds:.1f}s ({written[1].name}, {written[2].name})",
                      highlight=False)


@app.command()
def segment(
    image: Path = typer.Argument(..., help="The scene image."),
    output: Path = typer.Option(..., "-o", "--output", help="Label map to write (palette PNG, ids 1..K)."),
    backend: Backend = typer.Option(Backend.classic, "--backend",
                                    help="classic (rough, no weights) or labelmap (re-encode --labels)."),
    labels: Path | None = typer.Option(None, "--labels", help="Input label map for --backend labelmap."),
    sam_checkpoint: Path | None = typer.Option(None, "--sam-checkpoint",
                                               help="SAM weights (.safetensors, or .pth with --trust-pickle); "
                                                    "default: $MIDI3D_SAM_CHECKPOINT."),
    points: list[str] = typer.Option([], "--points", help="SAM point prompts 'x,y' (repeat or space-separate)."),
    boxes: list[str] = typer.Option([], "--boxes", help="SAM box prompts 'x0,y0,x1,y1' (repeat or space-separate)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a pickled SAM .pth (weights_only)."),
    max_instances: MaxInstancesOpt = DEFAULT_MAX_INSTANCES,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    quiet: QuietOpt = False,
) -> None:
    """Write an instance label map for IMAGE and an overlay preview (<output>_overlay.png)."""
    from .io.errors import InputError
    from .io.images import load_rgb
    from .models.checkpoint import CheckpointError
    from .segmentation import BACKENDS, save_label_map, save_overlay

    from .io.paths import refuse_overwriting_inputs

    _setup_logging(quiet)
    if output.suffix.lower() != ".png":
        _fail(f"{output}: the label map is written as PNG; use a .png name")
    with _one_line_errors():
        for written in (output, output.with_name(f"{output.stem}_overlay.png")):
            refuse_overwriting_inputs(written, image, labels)
    try:
        rgb = load_rgb(image, max_pixels=max_pixels)
        if (points or boxes) and backend is not Backend.sam:
            _fail("--points/--boxes are SAM prompts; add --backend sam")
        if backend is Backend.labelmap:
            if labels is None:
                _fail("--backend labelmap needs --labels FILE")
            segmenter = BACKENDS["labelmap"](labels, max_instances=max_instances, max_pixels=max_pixels)
        elif backend is Backend.sam:
            segmenter = BACKENDS["sam"](sam_checkpoint, allow_pickle=trust_pickle,
                                        points=_parse_prompts(points, 2, "--points"),
                                        boxes=_parse_prompts(boxes, 4, "--boxes"), max_instances=max_instances)
        else:
            segmenter = BACKENDS["classic"](max_instances=max_instances)
        result = segmenter.segment(rgb)
    except (InputError, CheckpointError) as err:
        _fail(str(err))
    except ImportError as err:
        _fail(f"the sam back end needs segment-anything and torchvision: pip install 'midi3d[sam]' ({err})")
    if result.max() == 0:
        _fail(f"{image}: no instance found by the {backend.value} back end")
    save_label_map(result, output)
    preview = save_overlay(rgb, result, output.with_name(f"{output.stem}_overlay.png"))
    if not quiet:
        console.print(f"{output}: {int(result.max())} instances ({backend.value}); preview {preview}", highlight=False)


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Dataset root to write (3D-Front/MIDI layout)."),
    scenes: int = typer.Option(50, "--scenes", min=1),
    seed: int = typer.Option(0, "--seed"),
    jobs: int = typer.Option(0, "--jobs", min=0, help="Worker processes (0 = one per core)."),
    views: int = typer.Option(1, "--views", min=1, help="Rendered views per room."),
    image_size: int = typer.Option(512, "--image-size", min=32),
    surface_points: int = typer.Option(20480, "--surface-points", min=1, help="Surface samples stored per object."),
    frame: str = typer.Option("view", "--frame", help="Scene frame: 'view' (view 0 looks along -z) or 'world'."),
    objects: str = typer.Option("2-10", "--objects", help="Objects per room, MIN-MAX (dense scenes: 8-24; "
                                "rooms grow with the count beyond 10)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start an existing dataset in OUT again (a rerun "
                                   "with the same settings continues it; other settings are refused)."),
    quiet: QuietOpt = False,
) -> None:
    """Generate synthetic indoor scenes (render, id maps, object meshes, surface samples)."""
    import os

    from .data.synth import SynthConfig, generate_dataset
    from .progress import progress_bar

    _setup_logging(quiet)
    if out.exists() and not out.is_dir():
        _fail(f"{out}: exists and is not a folder")
    if frame not in ("view", "world"):
        _fail(f"--frame must be 'view' or 'world', got {frame!r}")
    low, sep, high = objects.partition("-")
    if not (sep and low.strip().isdigit() and high.strip().isdigit() and 1 <= int(low) <= int(high) <= 64):
        _fail(f"--objects {objects!r}: expected MIN-MAX with 1 <= MIN <= MAX <= 64 (e.g. 8-24)")
    _require_writable(out)
    config = SynthConfig(seed=seed, views=views, image_size=image_size, surface_points=surface_points, frame=frame,
                         min_objects=int(low), max_objects=int(high))
    start = time.perf_counter()
    with progress_bar(total=scenes, desc="scenes", disable=quiet) as bar, _one_line_errors():
        generate_dataset(out, scenes, config, jobs=jobs or os.cpu_count() or 1,
                         progress=lambda done, total: bar.update(done - bar.n), overwrite=overwrite)
    if not quiet:
        console.print(f"{scenes} scenes in {out} ({time.perf_counter() - start:.1f}s); folder-mode pairs in "
                      f"{out / 'pairs'}", highlight=False)


@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config (YAML), or a built-in name: vae-tiny, dit-tiny, lora."),
    data: Path = typer.Option(..., "--data", help="Dataset root in the 3D-Front/MIDI layout (e.g. from midi3d synth)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, metrics.csv, final/. Reruns resume."),
    init: Path | None = typer.Option(None, "--init", help="Pipeline folder to start from (required for LoRA)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where the training cache lives (default OUT/cache)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set max_steps=100 (YAML value)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow pickled .bin weights in --init."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads per process (0 = torch's default)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when there is one), cpu or cuda."),
    quiet: QuietOpt = False,
) -> None:
    """Train the shape VAE or the diffusion transformer (full, or LoRA), resumably, on accelerate."""
    from .training.config import load_train_config
    from .training.run import run_training, use_cpu

    _setup_logging(quiet)
    logging.getLogger("midi3d").setLevel(logging.ERROR if quiet else logging.INFO)
    with _one_line_errors():
        try:
            settings = load_train_config(config, overrides)
        except OSError as err:
            raise ValueError(str(err)) from None
        if not data.is_dir():
            raise FileNotFoundError(f"{data}: dataset folder not found")
        use_cpu(device)
    _require_writable(out)
    if threads:
        import torch

        torch.set_num_threads(threads)
    with _one_line_errors():
        result = run_training(settings, data, out, init=init, cache_dir=cache_dir, quiet=quiet,
                              allow_pickle=trust_pickle, device=device)
    if not quiet:
        console.print(f"trained {settings.kind} to step {result['step']} (last loss {result['loss']:.4f}, "
                      f"{result['seconds']:.0f}s this run); model in {out / 'final'}", highlight=False)


@app.command()
def demo(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 = all)."),
    port: int = typer.Option(7860, "--port"),
    share: bool = typer.Option(False, "--share/--no-share", help="Gradio share link (needs internet)."),
    model: ModelOpt = None,
    sam_checkpoint: Path | None = typer.Option(None, "--sam-checkpoint", help="SAM weights for clicks/boxes."),
    max_upload_mb: float = typer.Option(15.0, "--max-upload-mb", help="Largest accepted upload."),
    max_side: int = typer.Option(2048, "--max-side", help="Largest accepted image side, in pixels."),
    max_instances: int = typer.Option(16, "--max-instances"),
    queue_size: int = typer.Option(8, "--queue-size", help="Waiting generations beyond the running one."),
    resolution: ResolutionOpt = None,
    cache_ttl: int = typer.Option(240, "--cache-ttl", min=2,
                                  help="Seconds before Gradio deletes uploads and results of past requests."),
    image_model: ImageModelOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Serve the Gradio demo (one generation at a time, bounded queue)."""
    from .demo.app import DemoConfig, launch
    from .demo.session import DemoLimits

    _setup_logging(quiet)
    if model is not None and not (model / "model_index.json").is_file():
        _fail(f"{model}: not a pipeline folder (no model_index.json)")
    limits = DemoLimits(max_upload_mb=max_upload_mb, max_side=max_side, max_instances=max_instances,
                        queue_size=queue_size)
    with _one_line_errors():
        _check_sampling(None, None, resolution, None)
    if not quiet:
        console.print(f"midi3d demo on http://{host}:{port} (Ctrl+C to stop)", highlight=False)
    if image_model is not None and not (image_model / "model_index.json").is_file():
        _fail(f"{image_model}: not a pipeline folder (no model_index.json); the layout tab needs a local FLUX folder")
    launch(DemoConfig(limits, model=model, sam_checkpoint=sam_checkpoint, resolution=resolution, cache_ttl_s=cache_ttl,
                      image_model=image_model), host=host, port=port, share=share)


class IcpMode(str, Enum):
    official = "official"
    kabsch = "kabsch"
    none = "none"


@app.command("eval")
def evaluate(
    dataset: str = typer.Option("3dfront", "--dataset", help="3dfront, blendswap, or pairs (a folder of "
                                "NAME_rgb.png + NAME_seg.png photos without 3D ground truth: reprojection only)."),
    root: Path = typer.Option(..., "--root", help="Dataset root."),
    out: Path = typer.Option(Path("eval-results"), "--out", help="Results folder (JSONL log and summaries)."),
    model: ModelOpt = None,
    pred_dir: Path | None = typer.Option(None, "--pred-dir", help="Score <key>.glb files of another method."),
    export_gt: Path | None = typer.Option(None, "--export-gt", help="Write the ground truth as <key>.glb and stop."),
    limit: int = typer.Option(0, "--limit", min=0, help="Only the first N samples (0 = all)."),
    views: str = typer.Option("0000", "--views", help="3D-Front views, comma separated."),
    icp: IcpMode = typer.Option(IcpMode.official, "--icp",
                                help="official (bug-compatible, for published numbers), kabsch (correct), none."),
    test_size: int = typer.Option(1000, "--test-size", min=1, help="3D-Front test split: the last N rooms."),
    max_objects: int | None = typer.Option(None, "--max-objects", min=0,
                                           help="Cap on objects per scene (0 = none). Default: 7 for 3dfront "
                                                "(official), none for blendswap."),
    min_area: float = typer.Option(0.001, "--min-area", min=0.0, max=0.999,
                                   help="Drop objects whose mask covers <= this fraction."),
    points: int = typer.Option(20480, "--points", min=1, max=10_000_000, help="Surface samples per object."),
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    seed: SeedOpt = DEFAULT_SEED,
    extract: ExtractOpt = Extract.hierarchical,
    resolution: ResolutionOpt = None,
    empty_fallback: EmptyFallbackOpt = None,
    control: ControlOpt = None,
    generated_boxes: GeneratedBoxesOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = DType.float32,
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Re-run scenes that failed before."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove the results already in OUT and score again "
                                   "(a rerun of the same run continues; another run is refused)."),
    save_visuals: bool = typer.Option(False, "--save-visuals",
                                      help="Write OUT/visuals/<key>.png: input, masks, prediction, ground truth."),
    reprojection: bool = typer.Option(False, "--reprojection", help="Also score the silhouettes at the estimated "
                                      "camera (per-instance and mean IoU, the camera, OUT/reprojection/<key>.png); "
                                      "always on for --dataset pairs."),
    quiet: QuietOpt = False,
) -> None:
    """Score a method on 3D-Front or BlendSwap (CD, F-Score, IoU-B at scene and object level), or by
    reprojection on photos without 3D ground truth."""
    from .control import load_control
    from .eval.benchmark import BenchmarkSpec, clean_outputs, open_benchmark

    _setup_logging(quiet)
    _require_writable(export_gt if export_gt is not None else out)
    clean_outputs(export_gt, out, out / "visuals", out / "reprojection")
    chosen_views = [v.strip() for v in views.split(",") if v.strip()]
    if not chosen_views or not all(v.isdigit() and len(v) == 4 for v in chosen_views):
        _fail(f"--views {views!r}: expected 4-digit view numbers, comma separated (e.g. 0000,0001)")
    spec = BenchmarkSpec(dataset=dataset, root=root, views=chosen_views,
                         test_size=test_size, max_objects=max_objects, min_area=min_area, points=points, limit=limit)
    with _one_line_errors():
        data, keys = open_benchmark(spec)
    if export_gt is not None:
        _export_ground_truth(data, keys, export_gt, quiet)
    with _one_line_errors():
        control_config = load_control(control)
        fallback_levels = _fallback_levels(empty_fallback)
        predictor = _predictor(pred_dir, model, device, dtype, steps, guidance, seed, extract, resolution,
                               control_config, fallback_levels, not generated_boxes)
    sampling = dict(steps=steps, guidance=guidance, seed=seed, extract=extract.value, resolution=resolution,
                    device=device, dtype=dtype.value)
    if fallback_levels is not None:  # given: another run (the folder's default is part of its files' identity)
        sampling["empty_fallback"] = list(fallback_levels)
    if control_config is not None:  # a run with other controls is another run
        sampling["control"] = control_config.to_data()
    if generated_boxes:  # so is one without the layout model
        sampling["generated_boxes"] = True
    identity = _run_identity(spec, pred_dir, model, sampling)
    _score(data, keys, predictor, out, icp.value, points, seed, retry_failed, save_visuals, quiet, identity, overwrite,
           reprojection or dataset == "pairs")


def _run_identity(spec, pred_dir: Path | None, model: Path | None, sampling: dict) -> dict:
    """What produced the scores: the data, and the prediction files or the model and its settings."""
    from .eval.benchmark import dataset_identity, model_identity, predictions_identity

    predictor = predictions_identity(pred_dir) if pred_dir is not None else {**model_identity(model), **sampling}
    return {**dataset_identity(spec), **predictor}


def _export_ground_truth(data, keys, export_gt: Path, quiet: bool) -> None:
    from .eval.benchmark import export_all_ground_truth

    def failed(key, err):
        err_console.print(f"[red]failed[/] {key}: {type(err).__name__}: {err}", highlight=False)

    written, failures = export_all_ground_truth(data, keys, export_gt, on_failure=failed)
    if not quiet:
        console.print(f"ground truth of {written} scenes written to {export_gt}", highlight=False)
    raise typer.Exit(EXIT_SCENES_FAILED if failures else 0)


def _predictor(pred_dir, model, device, dtype, steps, guidance, seed, extract, resolution, control=None,
               fallback_levels=None, use_layout_model: bool = True):
    from .eval.benchmark import files_predictor, model_predictor
    from .pipelines.loading import load_pipeline, resolve_dtype
    from .pipelines.pipeline_midi import ExtractionOptions
    from .pipelines.scene import GenerateOptions

    if pred_dir is not None:
        return files_predictor(pred_dir)
    _check_sampling(steps, guidance, resolution, None)
    pipe = load_pipeline(model, resolve_dtype(dtype.value, device), device, quiet=True)
    options = GenerateOptions(steps=steps, guidance=guidance, seed=seed, postprocess=None, control=control,
                              extraction=ExtractionOptions(method=extract.value, resolution=resolution,
                                                           fallback_levels=fallback_levels),
                              use_layout_model=use_layout_model)
    return model_predictor(pipe, options)


def _scored_or_kept(score, *args, **kwargs):
    """``score(...)``; an unwritable output says that the scenes scored so far are kept."""
    from .io.errors import OutputError

    try:
        return score(*args, **kwargs)
    except OutputError as err:
        raise OutputError(f"{err}; scored scenes so far are kept (rerun to continue)") from None


def _score(data, keys, predictor, out: Path, icp: str, points: int, seed: int, retry_failed: bool,
           save_visuals: bool, quiet: bool, identity: dict, overwrite: bool, reprojection: bool = False) -> None:
    from .eval.benchmark import process_group, score_benchmark
    from .eval.runner import EvalOptions, summary_rows
    from .progress import progress_bar, say

    rank, world, _ = process_group()
    with progress_bar(total=len(range(rank, len(keys), world)), desc="scenes", disable=quiet or rank != 0) as bar:
        def report(key, record):
            bar.update()
            if record["status"] != "ok" and not quiet:
                say(f"failed {key}: {record['error']}")

        with _one_line_errors():
            summary = _scored_or_kept(score_benchmark, data, keys, predictor, out, EvalOptions(icp=icp, points=points, seed=seed,
                                                                                     reprojection=reprojection),
                                      retry_failed=retry_failed, save_visuals=save_visuals, on_scene=report,
                                      identity=identity, overwrite=overwrite)
    if summary is None:  # not rank 0
        return
    if not quiet:
        header, values = summary_rows(summary)
        cap = summary.get("max_objects")
        objects = "" if cap is None else f", objects per scene {'<= ' + str(cap) if cap else 'all'}"
        console.print(f"ICP {icp}{objects}: " + ", ".join(f"{h} {v}" for h, v in zip(header, values)), highlight=False)
        console.print(f"summary: {out / 'summary.md'}", highlight=False)
    if summary["failed"]:
        raise typer.Exit(EXIT_SCENES_FAILED)


@app.command()
def version() -> None:
    """Print the installed version."""
    from . import __version__

    console.print(__version__)


EXIT_INTERNAL = 3


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. ``--debug`` (anywhere) shows the traceback of an unexpected
    error; without it the error is one line and exit code 3 (expected errors: one line, exit 2)."""
    import gc

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        app(args=args, prog_name="midi3d", standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err_console.print("interrupted (outputs written so far are complete; rerun to continue)", highlight=False)
        raise SystemExit(130) from None
    except Exception as err:  # a bug, not bad input: one line unless --debug
        if debug:
            raise
        err_console.print(f"[bold red]internal error:[/] {type(err).__name__}: {err} (rerun with --debug for the "
                          "traceback)", highlight=False, soft_wrap=True)
        raise SystemExit(EXIT_INTERNAL) from None
    finally:
        # Everything is written and flushed by now. Freezing the heap spares the interpreter's
        # final garbage collection over the ~10^6 objects torch, diffusers and transformers
        # create: 1.1 s of every `midi3d generate` (benchmarks/bench_startup.py).
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
