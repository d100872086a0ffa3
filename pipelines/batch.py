"""``midi3d generate`` as library functions: one image, or a folder of ``NAME_rgb.png`` +
``NAME_seg.png`` pairs, through :func:`~.scene.generate_scene` (one pipeline call per scene).

A folder run writes ``OUT/NAME.<format>`` atomically per scene, skips scenes already written
(``overwrite`` redoes them), records a bad scene and goes on, and stops at the first output
error (a full disk or a read-only folder would fail every later scene too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..io.errors import InputError, OutputError
from ..io.images import DEFAULT_MAX_PIXELS, load_rgb
from ..io.labelmap import DEFAULT_MAX_INSTANCES
from ..io.paths import child_path
from .pipeline_midi import MIDIPipeline, MIDIPipelineOutput
from .scene import EXPORT_FORMATS, GenerateOptions, SceneInputs, export_scene, generate_scene, load_scene

if TYPE_CHECKING:
    from .alignment import SceneAlignment

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadLimits:
    """Refusal limits applied to every input image and label map."""

    max_instances: int = DEFAULT_MAX_INSTANCES
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class ScenePair:
    name: str
    image: Path
    labels: Path
    output: Path


@dataclass
class FolderPlan:
    """What a folder run will do: ``todo`` pairs, and the names already written (skipped)."""

    todo: list[ScenePair]
    skipped: list[str] = field(default_factory=list)


@dataclass
class FolderReport:
    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # scene name -> one-line reason


def check_output_format(path: Path) -> Path:
    if path.suffix.lower().lstrip(".") not in EXPORT_FORMATS:
        raise InputError(f"{path}: unsupported output format {path.suffix!r} (use .glb, .obj or .ply)")
    return path


def plan_folder(folder: Path, out_dir: Path, fmt: str, overwrite: bool = False) -> FolderPlan:
    """The pairs of ``folder`` and their outputs in ``out_dir``; those already written are skipped
    unless ``overwrite``."""
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"--format {fmt}: use one of {', '.join(EXPORT_FORMATS)}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    pairs = []
    for image in sorted(folder.glob("*_rgb.png")):
        name = image.name[: -len("_rgb.png")]
        pairs.append(ScenePair(name, image, folder / f"{name}_seg.png", child_path(out_dir, f"{name}.{fmt}", image)))
    if not pairs:
        raise InputError(f"{folder}: no NAME_rgb.png + NAME_seg.png pairs in this folder")
    if overwrite:
        return FolderPlan(pairs)
    return FolderPlan([p for p in pairs if not p.output.is_file()], [p.name for p in pairs if p.output.is_file()])


def read_single_scene(image: Path, seg: Path | None, limits: ReadLimits, allow_pickle: bool = False) -> SceneInputs:
    """The scene of ``image``: with its label map, or segmented automatically when ``seg`` is None."""
    if seg is not None:
        return load_scene(image, seg, max_instances=limits.max_instances, max_pixels=limits.max_pixels)
    from ..segmentation.auto import segment_automatically

    rgb = load_rgb(image, max_pixels=limits.max_pixels)
    labels, how = segment_automatically(rgb, image, allow_pickle=allow_pickle, max_instances=limits.max_instances)
    logger.warning("%s: no --seg given, using the %s segmentation (%d instances, at most %d kept); "
                   "check it with `midi3d segment` or pass --seg", image, how, int(labels.max()), limits.max_instances)
    return SceneInputs(rgb, labels, name=image.stem)


@dataclass(frozen=True)
class AlignOptions:
    """The step after generation (:mod:`.alignment`): estimate the camera (written into a GLB and
    needed by textures and the overlay), colour from the photo, write an overlay picture."""

    camera: bool = True
    texture: str = "project"  # project | vertex | none
    overlay: bool = False  # write <output stem>_overlay.png (photo | rendered | blend)

    def __post_init__(self):
        from .alignment import TEXTURE_CHOICES

        if self.texture not in TEXTURE_CHOICES:
            raise InputError(f"--texture {self.texture}: use one of {', '.join(TEXTURE_CHOICES)}")
        if not self.camera and (self.texture != "none" or self.overlay):
            raise InputError("textures and the overlay need the camera: drop --no-camera or use --texture none")


NO_ALIGNMENT = AlignOptions(camera=False, texture="none")


def align_output(scene: SceneInputs, result: MIDIPipelineOutput, align: AlignOptions, output: Path
                 ) -> SceneAlignment | None:
    """Run the alignment step for one written-to-be scene; ``None`` (with a warning) when the camera
    cannot be estimated, so that the untextured scene is still written. Timings go into ``result``."""
    from .alignment import align_scene

    if not align.camera or not result.meshes:
        return None
    texture = align.texture
    if texture == "project" and output.suffix.lower() != ".glb":
        texture = "vertex"  # a baked texture needs GLB; OBJ and PLY carry vertex colours
    try:
        alignment = align_scene(scene, result, texture)
    except Exception as error:  # noqa: BLE001 - best effort: the untextured scene is written regardless
        reason = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
        logger.warning("%s: no camera (%s); the scene is written untextured and without a camera", scene.name, reason)
        return None
    for warning in alignment.warnings:
        logger.warning("%s", warning)
    result.timings.update(alignment.seconds)
    return alignment


def generate_file(pipe: MIDIPipeline, scene: SceneInputs, options: GenerateOptions, output: Path,
                  align: AlignOptions = NO_ALIGNMENT) -> MIDIPipelineOutput:
    """Generate one scene, align and colour it as ``align`` says, and write it (atomically) to
    ``output`` (and its overlay next to it)."""
    from ..io.images import write_png

    result = generate_scene(pipe, scene, options)
    alignment = align_output(scene, result, align, output)
    export_scene(result, output, alignment)
    if alignment is not None and align.overlay:
        write_png(overlay_path(output), alignment.overlay(scene.rgb))
    return result


def overlay_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_overlay.png")


SceneDone = Callable[[ScenePair, "MIDIPipelineOutput | None", str | None, float], None]


def generate_folder(pipe: MIDIPipeline, plan: FolderPlan, options: GenerateOptions, limits: ReadLimits,
                    on_scene: SceneDone | None = None, align: AlignOptions = NO_ALIGNMENT) -> FolderReport:
    """Generate every pair of ``plan``; ``on_scene(pair, result, error, seconds)`` after each.

    Raises :class:`OutputError` (with the count written so far) when an output cannot be written.
    """
    report = FolderReport()
    for pair in plan.todo:
        start = time.perf_counter()
        result, error = None, None
        try:
            scene = load_scene(pair.image, pair.labels, max_instances=limits.max_instances,
                               max_pixels=limits.max_pixels)
            result = generate_file(pipe, scene, options, pair.output, align)
            report.written.append(pair.output)
        except OutputError as err:
            raise OutputError(f"{err}; stopped after {len(report.written)} scene(s) (rerun to continue)") from None
        except (InputError, ValueError, RuntimeError) as err:
            error = str(err)
            report.failed[pair.name] = error
        if on_scene is not None:
            on_scene(pair, result, error, time.perf_counter() - start)
    return report


def summary_line(path: Path, result: MIDIPipelineOutput, seconds: float) -> str:
    """``PATH: 4/5 instances (no surface: 3; dilated: 2) in 2.9s (encode 0.1s, …)``."""
    made = len(result.ids) - len(result.empty_ids)
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    notes = [f"no surface: {', '.join(map(str, result.empty_ids))}"] if result.empty_ids else []
    if result.fallback_levels:
        notes.append(f"dilated: {', '.join(map(str, result.fallback_levels))}")
    return f"{path}: {made}/{len(result.ids)} instances{' (' + '; '.join(notes) + ')' if notes else ''} " \
           f"in {seconds:.1f}s ({timing})"
