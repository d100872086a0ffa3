"""What the demo server holds and does, without Gradio: the configuration, the pipeline and SAM
model shared by all sessions, segmentation and one generation at a time.

Every method raises :class:`~midi3d.io.errors.InputError` with a one-line message for bad
input; the page (:mod:`.app`) shows it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..io.errors import InputError
from ..io.labelmap import instance_ids
from .session import (DemoLimits, SessionFolders, expire_tracked_files, generate_outputs, load_label_upload,
                      load_scene_image, merge_instances, preview, remove_instances, sweep_empty_uploads)

MAX_STEPS = 100


@dataclass
class DemoConfig:
    limits: DemoLimits
    model: Path | None = None           # pipeline folder; None = the embedded model
    sam_checkpoint: Path | None = None  # or MIDI3D_SAM_CHECKPOINT
    work_dir: Path | None = None        # per-session folders are made under it (default: system temp)
    resolution: int | None = None       # mesh extraction grid (None: the model folder's default)
    cache_ttl_s: int = 240              # Gradio deletes uploads and results older than this (checked every ttl/2)
    image_model: Path | None = None     # FLUX pipeline folder for the "From a layout" tab (None: tab disabled)
    image_steps: int = 20


def examples() -> list[list[str]]:
    """The bundled examples as page rows: image, label map, mode."""
    folder = Path(str(resources.files("midi3d.assets").joinpath("examples")))
    return [[str(rgb), str(rgb.with_name(rgb.name.replace("_rgb", "_seg"))), "label map"]
            for rgb in sorted(folder.glob("*_rgb.png")) if rgb.with_name(rgb.name.replace("_rgb", "_seg")).is_file()]


def parse_prompts(text: str, size: int, what: str) -> list[tuple[float, ...]]:
    """``"x,y; x,y"`` → tuples (the page fills this from clicks; API users type it)."""
    items = []
    for chunk in (text or "").replace("\n", ";").split(";"):
        if not chunk.strip():
            continue
        try:
            values = tuple(float(v) for v in chunk.split(","))
        except ValueError:
            raise InputError(f"{what} {chunk.strip()!r}: expected {size} comma-separated numbers") from None
        if len(values) != size:
            raise InputError(f"{what} {chunk.strip()!r}: expected {size} comma-separated numbers")
        items.append(values)
    return items


def release_memory() -> None:
    """Return freed heap pages to the system after a generation: glibc keeps one arena per worker
    thread and would otherwise hold on to the peak of every generation (measured: +1 GiB over 20)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class DemoBackend:
    """State shared by all sessions of one worker: the pipeline, the SAM model, the folders."""

    def __init__(self, config: DemoConfig, pipe=None):
        self.config = config
        # Inside Gradio's cache by default: results returned from there are served as they are,
        # not copied once more per request, so replacing a session's result frees its files.
        from gradio.utils import get_upload_folder

        self.upload_folder = Path(get_upload_folder())
        self.folders = SessionFolders.create(config.work_dir or self.upload_folder)
        self.lock = threading.Lock()
        self._pipe = pipe
        self._sam = None
        self._image_pipe = None

    def start_sweeper(self, page=None) -> None:
        """Every ``cache_ttl_s / 2``: remove the empty upload stubs Gradio leaves behind, the files
        ``page`` (the Gradio Blocks) tracks that are older than ``cache_ttl_s``, and the sessions'
        results older than that but their newest (a daemon thread: it ends with the server process)."""
        ttl = max(2, self.config.cache_ttl_s)

        def sweep() -> None:
            while True:
                time.sleep(ttl / 2)
                sweep_empty_uploads(self.upload_folder, ttl)
                if page is not None:
                    keep = set().union(*(getattr(block, "keep_in_cache", set()) for block in page.blocks.values()))
                    expire_tracked_files(page.temp_file_sets, keep, ttl)
                self.folders.expire(ttl)

        threading.Thread(target=sweep, name="midi3d-upload-sweeper", daemon=True).start()

    @property
    def pipe(self):
        """The pipeline (loaded on first use); its folder's ``sampling_defaults`` are the page's."""
        if self._pipe is None:
            from ..pipelines.loading import load_pipeline

            self._pipe = load_pipeline(self.config.model)
        return self._pipe

    def segment(self, image_path, mode: str, label_path, points: str, boxes: str):
        rgb = load_scene_image(image_path, self.config.limits)
        if mode == "label map":
            labels = load_label_upload(label_path, rgb.shape[:2], self.config.limits)
        elif mode == "points and boxes (SAM)":
            from ..segmentation.sam import SamSegmenter

            point_list, box_list = parse_prompts(points, 2, "point"), parse_prompts(boxes, 4, "box")
            if not point_list and not box_list:
                raise InputError("click points or draw boxes on the image first (or choose automatic)")
            labels = SamSegmenter(self.config.sam_checkpoint, points=point_list, boxes=box_list).segment(rgb)
        else:
            from ..segmentation.auto import segment_automatically

            labels, _ = segment_automatically(rgb, Path(str(image_path)).name, self.config.sam_checkpoint,
                                              max_instances=self.config.limits.max_instances)
        if len(instance_ids(labels)) > self.config.limits.max_instances:
            raise InputError(f"{len(instance_ids(labels))} instances exceed this demo's limit of "
                             f"{self.config.limits.max_instances}; remove some or upload a label map")
        return rgb, labels

    def segment_page(self, session: str, image_path, mode: str, label_path, points: str, boxes: str) -> dict:
        """Segment and write ``labels.png`` for ``session``: ``{"label_file", "overlay", "labels", "ids"}``."""
        rgb, labels = self.segment(image_path, mode, label_path, points, boxes)
        if not instance_ids(labels):
            raise InputError(f"the {mode} segmentation found no object; try another mode or upload a label map")
        return self._labels_result(session, rgb, labels)

    def edit(self, session: str, action: str, image_path, labels: np.ndarray | None, selected: list[str]) -> dict:
        """Remove or merge the ``selected`` ids (strings from the page); same result as :meth:`segment_page`."""
        if labels is None:
            raise InputError("segment the image first")
        ids = [int(s) for s in selected or []]
        if not ids:
            raise InputError("tick the instances to remove or merge")
        labels = remove_instances(labels, ids) if action == "remove" else merge_instances(labels, ids)
        return self._labels_result(session, load_scene_image(image_path, self.config.limits), labels)

    def _labels_result(self, session: str, rgb: np.ndarray, labels: np.ndarray) -> dict:
        from ..segmentation.base import save_label_map

        label_file = save_label_map(labels, self.folders.fresh(f"{session}-seg") / "labels.png")
        return {"label_file": str(label_file), "overlay": preview(rgb, labels), "labels": labels,
                "ids": [str(i) for i in instance_ids(labels)]}

    def compose(self, session: str, layout_text: str, control: str, seed: int) -> dict:
        """The "From a layout" tab: a YAML/JSON layout → ``{"image", "label_file", "overlay", "summary"}``
        (files in the session's folder; serialised with generation)."""
        from ..compose import layout_from_data
        from ..compose.flux import ComposeOptions, compose_image, load_image_model, write_composed
        from .layout_canvas import parse_layout_text

        if self.config.image_model is None:
            raise InputError("this demo has no image model: start it with --image-model FOLDER (a local FLUX "
                             "pipeline folder) to turn layouts into images")
        if control not in ("3dis", "ast", "none"):
            raise InputError(f"layout control {control!r}: choose 3dis, ast or none")
        data = parse_layout_text(layout_text)
        if any(isinstance(i, dict) and "mask" in i for i in data.get("instances") or []):
            raise InputError("layout: masks are not accepted in the demo (boxes only)")
        layout = layout_from_data(data, source="layout")
        if len(layout.instances) > self.config.limits.max_instances:
            raise InputError(f"layout: {len(layout.instances)} instances exceed this demo's limit of "
                             f"{self.config.limits.max_instances}")
        if max(layout.width, layout.height) > self.config.limits.max_side:
            raise InputError(f"layout: size {layout.width}x{layout.height} exceeds this demo's {self.config.limits.max_side}")
        with self.lock:
            if self._image_pipe is None:
                self._image_pipe = load_image_model(self.config.image_model)
            options = ComposeOptions(control=control, steps=self.config.image_steps, seed=int(seed))
            result = compose_image(self._image_pipe, layout, options, self.config.sam_checkpoint)
            image, label_file, overlay_file = write_composed(result, self.folders.fresh(f"{session}-seg") / "layout.png")
            release_memory()
        summary = (f"{len(layout.instances)} instance(s), {control} control, label map from {result.label_source}, "
                   f"in {result.seconds:.1f}s; the image and its label map are now the inputs: press Generate")
        return {"image": str(image), "label_file": str(label_file), "overlay": str(overlay_file), "summary": summary}

    def release(self, session: str | None) -> None:
        """Remove a closed session's folders."""
        if session:
            self.folders.release(session)
            self.folders.release(f"{session}-seg")

    def generate(self, session: str, rgb: np.ndarray, labels: np.ndarray, steps: int, guidance: float, seed: int,
                 layers: str, control: str = "default"):
        """One generation for ``session`` (serialised): a :class:`~.session.DemoResult`.
        ``control``: a preset name of :mod:`midi3d.control`, or ``"default"`` (the folder's)."""
        from ..control import control_presets, load_control
        from ..models.layer_spec import check_layer_spec
        from ..pipelines.pipeline_midi import ExtractionOptions
        from ..pipelines.scene import GenerateOptions

        if labels is None:
            raise InputError("no instances yet: segment the image or upload a label map first")
        if not 1 <= int(steps) <= MAX_STEPS:
            raise InputError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
        try:
            check_layer_spec(layers or "default")
        except ValueError as err:
            raise InputError(f"multi-instance layers: {err}") from None
        control = control or "default"
        if control != "default" and control not in control_presets():  # presets only: no server paths
            raise InputError(f"instance control {control!r}: choose default or one of {', '.join(control_presets())}")
        options = GenerateOptions(steps=int(steps), guidance=float(guidance), seed=int(seed),
                                  control=None if control == "default" else load_control(control),
                                  mi_layers=layers or "default", max_instances=self.config.limits.max_instances,
                                  extraction=ExtractionOptions(resolution=self.config.resolution))
        pipe = self.pipe
        with self.lock:
            folder = self.folders.fresh(session)
            try:
                return generate_outputs(pipe, rgb, labels, options, folder)
            finally:
                release_memory()


