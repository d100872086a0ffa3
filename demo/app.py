"""The Gradio page. Thin: every action calls :mod:`.session` and shows its errors in the page.

API endpoints (``gradio_client``): ``/segment`` (image, mode, points, boxes → label map, overlay),
``/generate`` (image, label map, steps, guidance, seed, layers → scene GLB, objects zip, summary).
"""

# No `from __future__ import annotations`: Gradio resolves gr.Request / gr.SelectData from real annotations.

import functools
import logging
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..io.errors import InputError
from ..models.checkpoint import CheckpointError
from ..io.labelmap import instance_ids
from .session import (DemoLimits, SessionFolders, generate_outputs, load_label_upload, load_scene_image,
                      merge_instances, preview, remove_instances, sweep_empty_uploads)

logger = logging.getLogger(__name__)

MODES = ("automatic", "label map", "points and boxes (SAM)")


@dataclass
class DemoConfig:
    limits: DemoLimits
    model: Path | None = None           # pipeline folder; None = the embedded model
    sam_checkpoint: Path | None = None  # or MIDI3D_SAM_CHECKPOINT
    work_dir: Path | None = None        # per-session folders are made under it (default: system temp)
    resolution: int | None = None       # mesh extraction grid (None: 128 embedded, 256 with a model folder)
    cache_ttl_s: int = 240              # Gradio deletes uploads and results older than this (checked every ttl/2)


def _examples() -> list[list[str]]:
    folder = Path(str(resources.files("midi3d.assets").joinpath("examples")))
    return [[str(rgb), str(rgb.with_name(rgb.name.replace("_rgb", "_seg"))), "label map"]
            for rgb in sorted(folder.glob("*_rgb.png")) if rgb.with_name(rgb.name.replace("_rgb", "_seg")).is_file()]


def _parse_prompts(text: str, size: int, what: str) -> list[tuple[float, ...]]:
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

    def start_sweeper(self) -> None:
        """Every ``cache_ttl_s / 2``: remove the empty upload stubs Gradio leaves behind (a daemon
        thread: it ends with the server process)."""
        ttl = max(2, self.config.cache_ttl_s)

        def sweep() -> None:
            while True:
                time.sleep(ttl / 2)
                sweep_empty_uploads(self.upload_folder, ttl)

        threading.Thread(target=sweep, name="midi3d-upload-sweeper", daemon=True).start()

    @property
    def resolution(self) -> int:
        from ..embedded import sampling_defaults

        return sampling_defaults(self.config.model).resolve(self.config.resolution, None)[0]

    @property
    def pipe(self):
        if self._pipe is None:
            from ..embedded import load_embedded_pipeline
            from ..pipelines.pipeline_midi import MIDIPipeline

            self._pipe = (MIDIPipeline.from_pretrained(self.config.model) if self.config.model is not None
                          else load_embedded_pipeline())
        return self._pipe

    def segment(self, image_path, mode: str, label_path, points: str, boxes: str):
        rgb = load_scene_image(image_path, self.config.limits)
        if mode == "label map":
            labels = load_label_upload(label_path, rgb.shape[:2], self.config.limits)
        elif mode == "points and boxes (SAM)":
            from ..segmentation.sam import SamSegmenter

            point_list, box_list = _parse_prompts(points, 2, "point"), _parse_prompts(boxes, 4, "box")
            if not point_list and not box_list:
                raise InputError("click points or draw boxes on the image first (or choose automatic)")
            labels = SamSegmenter(self.config.sam_checkpoint, points=point_list, boxes=box_list).segment(rgb)
        else:
            from ..segmentation.sam import CHECKPOINT_ENV
            import os

            if self.config.sam_checkpoint is not None or os.environ.get(CHECKPOINT_ENV):
                from ..segmentation.sam import SamSegmenter

                labels = SamSegmenter(self.config.sam_checkpoint, max_instances=self.config.limits.max_instances
                                      ).segment(rgb)
            else:
                from ..segmentation.classic import ClassicSegmenter

                labels = ClassicSegmenter().segment(rgb)
        if len(instance_ids(labels)) > self.config.limits.max_instances:
            raise InputError(f"{len(instance_ids(labels))} instances exceed this demo's limit of "
                             f"{self.config.limits.max_instances}; remove some or upload a label map")
        return rgb, labels

    def generate(self, session: str, rgb: np.ndarray, labels: np.ndarray, steps: int, guidance: float, seed: int,
                 layers: str):
        from ..models.transformers.midi_transformer import parse_layer_list
        from ..pipelines.pipeline_midi import ExtractionOptions
        from ..pipelines.scene import GenerateOptions

        if labels is None:
            raise InputError("no instances yet: segment the image or upload a label map first")
        if not 1 <= int(steps) <= 100:
            raise InputError(f"steps must be between 1 and 100, got {steps}")
        try:
            chosen = parse_layer_list(layers or "default")
        except ValueError as err:
            raise InputError(f"multi-instance layers: {err}") from None
        pipe = self.pipe
        with self.lock:
            pipe.transformer.set_multi_instance_layers(chosen)
            folder = self.folders.fresh(session)
            options = GenerateOptions(steps=int(steps), guidance=float(guidance), seed=int(seed),
                                      extraction=ExtractionOptions(resolution=self.resolution))
            try:
                return generate_outputs(pipe, rgb, labels, options, folder)
            finally:
                release_memory()


def build_demo(config: DemoConfig, pipe=None):
    """The ``gr.Blocks`` page (call ``.queue(...)`` and ``.launch(...)`` on it, or use :func:`launch`)."""
    import gradio as gr

    from ..segmentation.base import save_label_map

    # pymeshlab must be imported on the main thread: first imported in a Gradio worker thread, it
    # leaves the heap corrupted and the process aborts at exit (measured: exit status 134).
    import pymeshlab  # noqa: F401

    from ..embedded import sampling_defaults

    backend = DemoBackend(config, pipe)

    def guarded(fn):
        @functools.wraps(fn)  # Gradio reads the wrapped signature (gr.Request, gr.Progress, SelectData)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (InputError, CheckpointError) as err:  # bad input, or a missing/corrupt SAM or model file
                raise gr.Error(str(err), print_exception=False) from None
            except Exception as err:  # never a stack trace in the page
                logger.exception("demo action failed")
                raise gr.Error(f"internal error ({type(err).__name__}): {err}", print_exception=False) from None

        return wrapper

    @guarded
    def show_image(image_path):
        if image_path is None:
            return None, "", "", None, gr.update(choices=[], value=[])
        rgb = load_scene_image(image_path, config.limits)
        return rgb, "", "", None, gr.update(choices=[], value=[])

    @guarded
    def segment(image_path, mode, label_path, points, boxes, request: gr.Request):
        rgb, labels = backend.segment(image_path, mode, label_path, points, boxes)
        folder = backend.folders.fresh(f"{request.session_hash if request else 'api'}-seg")
        label_file = save_label_map(labels, folder / "labels.png")
        ids = [str(i) for i in instance_ids(labels)]
        return (str(label_file), preview(rgb, labels), labels, gr.update(choices=ids, value=[]),
                f"{len(ids)} instance(s)")

    def edit(action, image_path, labels, selected, request):
        if labels is None:
            raise InputError("segment the image first")
        ids = [int(s) for s in selected or []]
        if not ids:
            raise InputError("tick the instances to remove or merge")
        labels = remove_instances(labels, ids) if action == "remove" else merge_instances(labels, ids)
        rgb = load_scene_image(image_path, config.limits)
        folder = backend.folders.fresh(f"{request.session_hash if request else 'api'}-seg")
        label_file = save_label_map(labels, folder / "labels.png")
        remaining = [str(i) for i in instance_ids(labels)]
        return (str(label_file), preview(rgb, labels), labels, gr.update(choices=remaining, value=[]),
                f"{len(remaining)} instance(s)")

    @guarded
    def remove(image_path, labels, selected, request: gr.Request):
        return edit("remove", image_path, labels, selected, request)

    @guarded
    def merge(image_path, labels, selected, request: gr.Request):
        return edit("merge", image_path, labels, selected, request)

    @guarded
    def click(mode_points, points, boxes, pending, evt: gr.SelectData):
        x, y = evt.index[0], evt.index[1]
        if mode_points == "point":
            return f"{points}; {x},{y}".strip("; "), boxes, None
        if pending is None:
            return points, boxes, [x, y]
        x0, y0 = pending
        box = f"{min(x0, x)},{min(y0, y)},{max(x0, x)},{max(y0, y)}"
        return points, f"{boxes}; {box}".strip("; "), None

    @guarded
    def generate(image_path, label_file, steps, guidance, seed, layers, request: gr.Request,
                 progress=gr.Progress(track_tqdm=True)):  # shows the pipeline's step bars
        rgb = load_scene_image(image_path, config.limits)
        labels = load_label_upload(label_file, rgb.shape[:2], config.limits) if label_file else None
        session = request.session_hash if request is not None and request.session_hash else "api"
        progress(0.0, desc="generating")
        scene, objects, summary = backend.generate(session, rgb, labels, steps, guidance, seed, layers)
        return str(scene), str(scene), str(objects), summary

    ttl = max(2, config.cache_ttl_s)
    with gr.Blocks(title="midi3d", delete_cache=(ttl // 2, ttl)) as page:
        gr.Markdown("## midi3d: one photo → 3D objects in one scene\nUpload a scene photo, choose the objects, "
                    "generate, then view and download the meshes.")
        labels_state = gr.State(None)
        pending_corner = gr.State(None)
        with gr.Row():
            with gr.Column():
                image_file = gr.File(label="Scene image", file_types=["image"], type="filepath", elem_id="image-file")
                picker = gr.Image(label="Click to add points / box corners (SAM)", interactive=False,
                                  type="numpy", elem_id="picker")
                mode = gr.Radio(list(MODES), value="automatic", label="Objects from", elem_id="mode")
                label_file = gr.File(label="Label map (palette, grayscale or RGB-coded PNG)", file_types=["image"],
                                     type="filepath", elem_id="label-file")
                with gr.Row():
                    click_kind = gr.Radio(["point", "box"], value="point", label="Clicks add")
                    points = gr.Textbox(label="Points x,y; …", elem_id="points")
                    boxes = gr.Textbox(label="Boxes x0,y0,x1,y1; …", elem_id="boxes")
                segment_button = gr.Button("Segment", elem_id="segment")
            with gr.Column():
                overlay_view = gr.Image(label="Instances", interactive=False, elem_id="overlay")
                instance_count = gr.Markdown("")
                selected = gr.CheckboxGroup(choices=[], label="Instances to edit", elem_id="selected")
                with gr.Row():
                    remove_button = gr.Button("Remove selected")
                    merge_button = gr.Button("Merge selected")
                current_labels = gr.File(label="Current label map", interactive=False, elem_id="current-labels")
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                steps = gr.Slider(1, 100, value=50, step=1, label="Steps")
                guidance = gr.Slider(1.0, 15.0, value=sampling_defaults(config.model).guidance, step=0.5, label="Guidance")
                seed = gr.Number(42, precision=0, label="Seed")
                layers = gr.Textbox("default", label="Multi-instance layers (default, none, 2-6, …)")
        generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown("", elem_id="status")
        with gr.Row():
            viewer = gr.Model3D(label="Scene", elem_id="viewer", height=420)
            with gr.Column():
                scene_download = gr.File(label="Scene (GLB)", interactive=False, elem_id="scene-download")
                objects_download = gr.File(label="Objects (zip of GLBs)", interactive=False, elem_id="objects-download")
        examples = _examples()
        if examples:
            gr.Examples(examples, inputs=[image_file, label_file, mode], label="Examples")

        image_file.change(show_image, [image_file], [picker, points, boxes, labels_state, selected],
                          api_name=False)
        picker.select(click, [click_kind, points, boxes, pending_corner], [points, boxes, pending_corner],
                      api_name=False)
        segment_button.click(segment, [image_file, mode, label_file, points, boxes],
                             [current_labels, overlay_view, labels_state, selected, instance_count],
                             api_name="segment", concurrency_limit=2)
        remove_button.click(remove, [image_file, labels_state, selected],
                            [current_labels, overlay_view, labels_state, selected, instance_count], api_name=False)
        merge_button.click(merge, [image_file, labels_state, selected],
                           [current_labels, overlay_view, labels_state, selected, instance_count], api_name=False)
        generate_button.click(generate, [image_file, current_labels, steps, guidance, seed, layers],
                              [viewer, scene_download, objects_download, status], api_name="generate",
                              concurrency_limit=1, concurrency_id="generate")
        def release(request: gr.Request):
            _release(backend, request)

        page.unload(release)
    page.backend = backend
    return page


def _release(backend: DemoBackend, request) -> None:
    session = getattr(request, "session_hash", None)
    if session:
        backend.folders.release(session)
        backend.folders.release(f"{session}-seg")


def launch(config: DemoConfig, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           prevent_thread_lock: bool = False, pipe=None):
    """Build, queue (one generation at a time, bounded waiting line) and serve the demo."""
    page = build_demo(config, pipe)
    page.backend.start_sweeper()
    page.queue(max_size=config.limits.queue_size, default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
                max_file_size=int(config.limits.max_upload_mb * 1024 * 1024), show_error=True, quiet=True)
    return page
