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


def _require_writable(folder: Path) -> None:
    """Fail now, before any long work, when ``folder`` cannot take files."""
    from .io.errors import OutputError
    from .io.files import check_writable

    try:
        check_writable(folder)
    except OutputError as err:
        _fail(str(err))


def _check_resolution(resolution: int) -> None:
    if resolution < 8 or resolution & (resolution - 1):
        _fail(f"--resolution {resolution}: must be a power of two >= 8")


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


def _load_pipeline(model: Path | None, dtype, device: str, mi_layers: list[int] | None, trust_pickle: bool, quiet: bool,
                   lora: Path | None = None, lora_scale: float = 1.0):
    from .embedded import load_embedded_pipeline
    from .pipelines.pipeline_midi import MIDIPipeline

    if model is None:
        pipe = load_embedded_pipeline(dtype=dtype, device=device, mi_layers=mi_layers)
    else:
        pipe = MIDIPipeline.from_pretrained(model, dtype=dtype, device=device, mi_layers=mi_layers,
                                            allow_pickle=trust_pickle)
    if lora is not None:
        from .models.lora import load_lora

        load_lora(pipe.transformer, lora, scale=lora_scale)
        pipe.transformer.to(device=device, dtype=dtype)
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
    seg: Path | None = typer.Option(None, "--seg", help="Instance label map of the image (single-image mode). "
                                    "Without it, the rough classic segmentation is used."),
    output: Path | None = typer.Option(None, "-o", "--output",
                                       help="Output scene file (.glb/.obj/.ply), or folder in folder mode."),
    model: Path | None = typer.Option(None, "--model", help="Pipeline folder (official layout). Default: embedded."),
    steps: int = typer.Option(50, "--steps", min=1, help="Denoising steps."),
    guidance: float | None = typer.Option(None, "--guidance", help="Classifier-free guidance scale (<= 1 disables "
                                          "it); default 2 with the embedded model, 7 with a --model folder."),
    seed: int = typer.Option(42, "--seed"),
    mi_layers: str | None = typer.Option(None, "--mi-layers",
                                         help="Multi-instance blocks: '8-12', '8,9,10', 'none' or 'default'."),
    pad: bool = typer.Option(False, "--pad", help="Official image padding around the objects."),
    latent_tokens: int | None = typer.Option(None, "--latent-tokens", min=1,
                                             help="Latent tokens per instance (default: the transformer width)."),
    device: str = typer.Option("cpu", "--device"),
    dtype: DType = typer.Option(DType.float32, "--dtype"),
    extract: Extract = typer.Option(Extract.hierarchical, "--extract", help="Mesh extraction mode."),
    resolution: int | None = typer.Option(None, "--resolution", help="Effective grid resolution (cells per axis); "
                                          "default 128 with the embedded model, 256 with a --model folder."),
    smooth: bool = typer.Option(False, "--smooth", help="Official 3x3x3 mean-filter smoothing (dense only)."),
    faces: int = typer.Option(0, "--faces", min=0, help="Decimate each mesh to this many faces (0 = keep)."),
    no_postprocess: bool = typer.Option(False, "--no-postprocess", help="Skip the mesh clean-up."),
    fmt: str = typer.Option("glb", "--format", help="Output format in folder mode: glb, obj or ply."),
    max_instances: int = typer.Option(64, "--max-instances", help="Refuse label maps with more instances."),
    max_pixels: int = typer.Option(64_000_000, "--max-pixels", min=4,
                                   help="Refuse images with more pixels (decompression bombs)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Folder mode: regenerate scenes whose output already exists."),
    lora: Path | None = typer.Option(None, "--lora", help="LoRA adapter folder (from midi3d train) to apply."),
    lora_scale: float = typer.Option(1.0, "--lora-scale", help="Strength of the LoRA adapter."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                      help="Allow pickled .bin/.ckpt weights (loaded with weights_only=True)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summaries."),
) -> None:
    """Generate a 3D scene (one mesh per instance) from an image and its instance label map."""
    from .geometry.postprocess import PostprocessConfig
    from .embedded import sampling_defaults
    from .io.errors import InputError, OutputError
    from .io.files import remove_stale_temporaries
    from .io.paths import child_path
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
    resolution, guidance = sampling_defaults(model).resolve(resolution, guidance)
    _check_resolution(resolution)
    try:
        layers = parse_layer_list(mi_layers)
    except ValueError:
        _fail(f"--mi-layers {mi_layers!r}: expected e.g. '8-12', '8,9,10', 'none' or 'default'")
    options = GenerateOptions(
        steps=steps, guidance=guidance, seed=seed, pad=pad, num_latent_tokens=latent_tokens,
        extraction=ExtractionOptions(method=extract.value, resolution=resolution, smooth=smooth),
        postprocess=None if no_postprocess else PostprocessConfig(target_faces=faces),
    )

    if input.is_dir():
        pairs = _scene_pairs(input)
        if not pairs:
            _fail(f"{input}: no NAME_rgb.png + NAME_seg.png pairs in this folder")
        out_dir = output or Path("outputs")
        if out_dir.exists() and not out_dir.is_dir():
            _fail(f"{out_dir}: exists and is not a folder")
        try:
            targets = {name: child_path(out_dir, f"{name}.{fmt}", image) for name, image, _ in pairs}
        except InputError as err:
            _fail(str(err))
        done = [name for name, _, _ in pairs if targets[name].is_file()]
        if done and not overwrite:
            pairs = [pair for pair in pairs if pair[0] not in done]
            if not quiet:
                err_console.print(f"{len(done)} scene(s) already in {out_dir}: skipped (--overwrite redoes them)",
                                  highlight=False)
            if not pairs:
                return
    else:
        out_path = output or Path(f"{input.stem}.glb")
        if out_path.suffix.lower().lstrip(".") not in EXPORT_FORMATS:
            _fail(f"{out_path}: unsupported output format {out_path.suffix!r} (use .glb, .obj or .ply)")
        try:
            scene = (load_scene(input, seg, max_instances=max_instances, max_pixels=max_pixels) if seg is not None
                     else _segment_first(input, trust_pickle, max_pixels))
        except (InputError, ValueError) as err:
            _fail(str(err))

    _require_writable(out_dir if input.is_dir() else out_path.parent)
    if input.is_dir():
        remove_stale_temporaries(out_dir)  # left by a run that was killed while writing
    torch_dtype = _torch_dtype(dtype, device)
    try:
        pipe = _load_pipeline(model, torch_dtype, device, layers, trust_pickle, quiet, lora, lora_scale)
    except (CheckpointError, ValueError) as err:
        _fail(str(err))

    if not input.is_dir():
        start = time.perf_counter()
        try:
            result = generate_scene(pipe, scene, options)
            export_scene(result, out_path)
        except InputError as err:  # OutputError included: nothing is left under out_path
            _fail(str(err))
        if not quiet:
            _summary(out_path, result, time.perf_counter() - start)
        return

    failed = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, disable=quiet, transient=True) as progress:
        task = progress.add_task("scenes", total=len(pairs))
        for written, (name, image, seg_path) in enumerate(pairs):
            start = time.perf_counter()
            try:
                scene = load_scene(image, seg_path, max_instances=max_instances, max_pixels=max_pixels)
                result = generate_scene(pipe, scene, options)
                path = export_scene(result, targets[name])
                if not quiet:
                    progress.console.print(_summary_line(path, result, time.perf_counter() - start), highlight=False)
            except OutputError as err:  # a full disk or a read-only folder fails every later scene too
                progress.stop()
                _fail(f"{err}; stopped after {written - failed} scene(s) (rerun to continue)")
            except (InputError, ValueError, RuntimeError) as err:
                failed += 1
                progress.console.print(f"[red]failed[/] {name}: {err}", highlight=False)
            progress.advance(task)
    if not quiet:
        err_console.print(f"{len(pairs) - failed}/{len(pairs)} scenes written to {out_dir}", highlight=False)
    if failed:
        raise typer.Exit(EXIT_SCENES_FAILED)


def _segment_first(image: Path, trust_pickle: bool = False, max_pixels: int = 64_000_000):
    """Scene inputs for an image without a label map: automatic SAM when ``$MIDI3D_SAM_CHECKPOINT``
    is set, else the rough ``classic`` segmentation."""
    import os

    from .io.errors import InputError
    from .io.images import load_rgb
    from .pipelines.scene import SceneInputs
    from .segmentation import ClassicSegmenter
    from .segmentation.sam import CHECKPOINT_ENV, SamSegmenter

    rgb = load_rgb(image, max_pixels=max_pixels)
    if os.environ.get(CHECKPOINT_ENV):
        segmenter, how = SamSegmenter(None, allow_pickle=trust_pickle), "automatic SAM"
    else:
        segmenter, how = ClassicSegmenter(), "rough classic"
    labels = segmenter.segment(rgb)
    count = int(labels.max())
    if count == 0:
        raise InputError(f"{image}: the {how} segmentation found no object; pass --seg LABELS.png")
    logging.getLogger("midi3d").warning("%s: no --seg given, using the %s segmentation (%d instances); "
                                        "check it with `midi3d segment` or pass --seg", image, how, count)
    return SceneInputs(rgb, labels, name=image.stem)


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
    max_instances: int = typer.Option(64, "--max-instances"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Write an instance label map for IMAGE and an overlay preview (<output>_overlay.png)."""
    from .io.errors import InputError
    from .io.images import load_rgb
    from .models.checkpoint import CheckpointError
    from .segmentation import BACKENDS, save_label_map, save_overlay

    _setup_logging(quiet)
    if output.suffix.lower() != ".png":
        _fail(f"{output}: the label map is written as PNG; use a .png name")
    try:
        rgb = load_rgb(image)
        if (points or boxes) and backend is not Backend.sam:
            _fail("--points/--boxes are SAM prompts; add --backend sam")
        if backend is Backend.labelmap:
            if labels is None:
                _fail("--backend labelmap needs --labels FILE")
            segmenter = BACKENDS["labelmap"](labels, max_instances=max_instances)
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


def _summary_line(path: Path, result, seconds: float) -> str:
    made = len(result.ids) - len(result.empty_ids)
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    empty = f" (no surface: {', '.join(map(str, result.empty_ids))})" if result.empty_ids else ""
    return f"{path}: {made}/{len(result.ids)} instances{empty} in {seconds:.1f}s ({timing})"


def _summary(path: Path, result, seconds: float) -> None:
    console.print(_summary_line(path, result, seconds), highlight=False)


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
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Generate synthetic indoor scenes (render, id maps, object meshes, surface samples)."""
    import os

    from .data.synth import SynthConfig, generate_dataset

    _setup_logging(quiet)
    if out.exists() and not out.is_dir():
        _fail(f"{out}: exists and is not a folder")
    if frame not in ("view", "world"):
        _fail(f"--frame must be 'view' or 'world', got {frame!r}")
    _require_writable(out)
    config = SynthConfig(seed=seed, views=views, image_size=image_size, surface_points=surface_points, frame=frame)
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, disable=quiet, transient=True) as progress:
        task = progress.add_task("scenes", total=scenes)
        generate_dataset(out, scenes, config, jobs=jobs or os.cpu_count() or 1,
                         progress=lambda done, total: progress.update(task, completed=done))
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
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train the shape VAE or the diffusion transformer (full, or LoRA), resumably, on accelerate."""
    from .io.errors import OutputError
    from .models.checkpoint import CheckpointError
    from .training.config import load_train_config
    from .training.run import run_training

    _setup_logging(quiet)
    logging.getLogger("midi3d").setLevel(logging.ERROR if quiet else logging.INFO)
    try:
        settings = load_train_config(config, overrides)
    except (ValueError, OSError) as err:
        _fail(str(err))
    if not data.is_dir():
        _fail(f"{data}: dataset folder not found")
    _require_writable(out)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        result = run_training(settings, data, out, init=init, cache_dir=cache_dir, quiet=quiet,
                              allow_pickle=trust_pickle)
    except (CheckpointError, FileNotFoundError, OutputError) as err:
        _fail(str(err))
    if not quiet:
        console.print(f"trained {settings.kind} to step {result['step']} (last loss {result['loss']:.4f}, "
                      f"{result['seconds']:.0f}s this run); model in {out / 'final'}", highlight=False)


@app.command()
def demo(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 = all)."),
    port: int = typer.Option(7860, "--port"),
    share: bool = typer.Option(False, "--share/--no-share", help="Gradio share link (needs internet)."),
    model: Path | None = typer.Option(None, "--model", help="Pipeline folder. Default: embedded."),
    sam_checkpoint: Path | None = typer.Option(None, "--sam-checkpoint", help="SAM weights for clicks/boxes."),
    max_upload_mb: float = typer.Option(15.0, "--max-upload-mb", help="Largest accepted upload."),
    max_side: int = typer.Option(2048, "--max-side", help="Largest accepted image side, in pixels."),
    max_instances: int = typer.Option(16, "--max-instances"),
    queue_size: int = typer.Option(8, "--queue-size", help="Waiting generations beyond the running one."),
    resolution: int | None = typer.Option(None, "--resolution", help="Mesh extraction grid (cells per axis, power "
                                          "of two); default 128 with the embedded model, 256 with --model."),
    cache_ttl: int = typer.Option(240, "--cache-ttl", min=2,
                                  help="Seconds before Gradio deletes uploads and results of past requests."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Serve the Gradio demo (one generation at a time, bounded queue)."""
    from .demo.app import DemoConfig, launch
    from .demo.session import DemoLimits

    _setup_logging(quiet)
    if model is not None and not (model / "model_index.json").is_file():
        _fail(f"{model}: not a pipeline folder (no model_index.json)")
    limits = DemoLimits(max_upload_mb=max_upload_mb, max_side=max_side, max_instances=max_instances,
                        queue_size=queue_size)
    if resolution is not None:
        _check_resolution(resolution)
    if not quiet:
        console.print(f"midi3d demo on http://{host}:{port} (Ctrl+C to stop)", highlight=False)
    launch(DemoConfig(limits, model=model, sam_checkpoint=sam_checkpoint, resolution=resolution, cache_ttl_s=cache_ttl),
           host=host, port=port, share=share)


class IcpMode(str, Enum):
    official = "official"
    kabsch = "kabsch"
    none = "none"


@app.command("eval")
def evaluate(
    dataset: str = typer.Option("3dfront", "--dataset", help="3dfront or blendswap."),
    root: Path = typer.Option(..., "--root", help="Dataset root."),
    out: Path = typer.Option(Path("eval-results"), "--out", help="Results folder (JSONL log and summaries)."),
    model: Path | None = typer.Option(None, "--model", help="Pipeline folder. Default: embedded."),
    pred_dir: Path | None = typer.Option(None, "--pred-dir", help="Score <key>.glb files of another method."),
    export_gt: Path | None = typer.Option(None, "--export-gt", help="Write the ground truth as <key>.glb and stop."),
    limit: int = typer.Option(0, "--limit", min=0, help="Only the first N samples (0 = all)."),
    views: str = typer.Option("0000", "--views", help="3D-Front views, comma separated."),
    icp: IcpMode = typer.Option(IcpMode.official, "--icp",
                                help="official (bug-compatible, for published numbers), kabsch (correct), none."),
    test_size: int = typer.Option(1000, "--test-size", help="3D-Front test split: the last N rooms."),
    max_objects: int | None = typer.Option(None, "--max-objects",
                                           help="Cap on objects per scene (0 = none). Default: 7 for 3dfront "
                                                "(official), none for blendswap."),
    min_area: float = typer.Option(0.001, "--min-area", help="Drop objects whose mask covers <= this fraction."),
    points: int = typer.Option(20480, "--points", help="Surface samples per object."),
    steps: int = typer.Option(50, "--steps", min=1),
    guidance: float | None = typer.Option(None, "--guidance",
                                          help="Guidance scale; default 2 with the embedded model, 7 with --model."),
    seed: int = typer.Option(42, "--seed"),
    extract: Extract = typer.Option(Extract.hierarchical, "--extract",
                                    help="hierarchical, or dense for the strict official protocol."),
    resolution: int | None = typer.Option(None, "--resolution",
                                          help="Meshing grid; default 128 with the embedded model, 256 with --model."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Re-run scenes that failed before."),
    save_visuals: bool = typer.Option(False, "--save-visuals",
                                      help="Write OUT/visuals/<key>.png: input, masks, prediction, ground truth."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Score a method on 3D-Front or BlendSwap (CD, F-Score, IoU-B at scene and object level)."""
    import os

    from .data.datasets import DATASETS, ObjectFilter
    from .eval.runner import EvalOptions, ResultLog, export_ground_truth, load_prediction, run, summarise
    from .eval.runner import summary_rows, write_summary
    from .io.errors import OutputError
    from .io.files import remove_stale_temporaries

    _setup_logging(quiet)
    _require_writable(export_gt if export_gt is not None else out)
    if os.environ.get("RANK", "0") == "0":  # one process of an accelerate launch cleans up
        for folder in (export_gt, out, out / "visuals"):
            if folder is not None:
                remove_stale_temporaries(folder)
    if dataset not in DATASETS:
        _fail(f"--dataset {dataset}: use one of {', '.join(DATASETS)}")
    if max_objects is None:
        max_objects = 7 if dataset == "3dfront" else 0
    object_filter = ObjectFilter(min_area_fraction=min_area, max_objects=max_objects)
    try:
        if dataset == "3dfront":
            data = DATASETS[dataset](root, views=[v.strip() for v in views.split(",") if v.strip()],
                                     test_size=test_size, object_filter=object_filter, points=points)
        else:
            data = DATASETS[dataset](root, object_filter=object_filter, points=points)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    keys = data.keys()[:limit] if limit else data.keys()

    if export_gt is not None:
        written, failed = 0, 0
        for index, key in enumerate(data.keys()):
            if key not in keys:
                continue
            try:
                export_ground_truth(data.load(index), export_gt)
                written += 1
            except Exception as err:  # report and go on with the other scenes
                failed += 1
                err_console.print(f"[red]failed[/] {key}: {type(err).__name__}: {err}", highlight=False)
        if not quiet:
            console.print(f"ground truth of {written} scenes written to {export_gt}", highlight=False)
        raise typer.Exit(EXIT_SCENES_FAILED if failed else 0)

    if pred_dir is not None:
        if not pred_dir.is_dir():
            _fail(f"{pred_dir}: prediction folder not found")

        def predictor(scene):
            return load_prediction(pred_dir / f"{scene.key}.glb")
    else:
        from .embedded import sampling_defaults
        from .pipelines.pipeline_midi import ExtractionOptions
        from .pipelines.scene import GenerateOptions, SceneInputs, generate_scene

        resolution, guidance = sampling_defaults(model).resolve(resolution, guidance)
        try:
            pipe = _load_pipeline(model, _torch_dtype(DType.float32, "cpu"), "cpu", None, False, True)
        except ValueError as err:
            _fail(str(err))
        options = GenerateOptions(steps=steps, guidance=guidance, seed=seed, postprocess=None,
                                  extraction=ExtractionOptions(method=extract.value, resolution=resolution, smooth=False))

        def predictor(scene):
            result = generate_scene(pipe, SceneInputs(scene.rgb, scene.labels, name=scene.key), options)
            return {i: m for i, m in zip(result.ids, result.meshes) if m is not None}

    rank, world, state = 0, 1, None
    try:
        from accelerate import PartialState

        state = PartialState(cpu=True)
        rank, world = state.process_index, state.num_processes
    except ImportError:
        pass
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, disable=quiet or rank != 0, transient=True) as progress:
        task = progress.add_task("scenes", total=len(range(rank, len(keys), world)))

        def report(key, record):
            progress.advance(task)
            if record["status"] != "ok" and not quiet:
                progress.console.print(f"[red]failed[/] {key}: {record['error']}", highlight=False)

        try:
            run(data, predictor, out, EvalOptions(icp=icp.value, points=points, seed=seed), keys=keys, rank=rank,
                world=world, retry_failed=retry_failed, progress=report,
                visuals_dir=out / "visuals" if save_visuals else None)
        except OutputError as err:
            progress.stop()
            _fail(f"{err}; scored scenes so far are kept (rerun to continue)")
    if state is not None:
        state.wait_for_everyone()
    if rank != 0:
        return
    summary = summarise(ResultLog(out).records(), keys, icp.value)
    try:
        write_summary(out, summary)
    except OutputError as err:
        _fail(str(err))
    if not quiet:
        header, values = summary_rows(summary)
        console.print(f"ICP {icp.value}: " + ", ".join(f"{h} {v}" for h, v in zip(header, values)), highlight=False)
        console.print(f"summary: {out / 'summary.md'}", highlight=False)
    if summary["failed"]:
        raise typer.Exit(EXIT_SCENES_FAILED)


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
