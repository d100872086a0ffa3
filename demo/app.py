"""The Gradio page. Thin: every action calls :mod:`.backend` and shows its errors in the page.

API endpoints (``gradio_client``): ``/segment`` (image, mode, label map, points, boxes → label
map, overlay, ids, count), ``/generate`` (image, label map, steps, guidance, seed, layers, control → viewer,
scene GLB (textured, with the estimated camera), zip (textured and untextured scene, one GLB per
object), summary, overlay picture), ``/compose`` (layout text, control, seed → composed image, label
overlay, status, and the page's image, mode, label map and current label map: the composed inputs).
"""

# No `from __future__ import annotations`: Gradio resolves gr.Request / gr.SelectData from real annotations.

import functools
import logging
import re
from types import SimpleNamespace

from ..io.errors import InputError
from ..models.checkpoint import CheckpointError
from ..pipelines.sampling import DEFAULT_SEED
from .backend import DemoBackend, DemoConfig, examples  # noqa: F401  (DemoConfig: the public entry)
from .session import load_label_upload, load_scene_image

logger = logging.getLogger(__name__)

MODES = ("automatic", "label map", "points and boxes (SAM)")


def public_message(message: str) -> str:
    """``message`` with server paths cut to their file names (the page never shows the server's
    folders)."""
    return re.sub(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\:,;'\"()]+)+[/\\]([^\s/\\:,;'\"()]+)", r"\1", message)


def _guarded(fn):
    """Expected errors → their one line in the page; anything else → logged, never a stack trace."""
    import gradio as gr

    @functools.wraps(fn)  # Gradio reads the wrapped signature (gr.Request, gr.Progress, SelectData)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (InputError, CheckpointError) as err:  # bad input, or a missing/corrupt SAM or model file
            raise gr.Error(public_message(str(err)), print_exception=False) from None
        except Exception as err:
            logger.exception("demo action failed")
            raise gr.Error(public_message(f"internal error ({type(err).__name__}): {err}"),
                           print_exception=False) from None

    return wrapper


def _session(request) -> str:
    return request.session_hash if request is not None and request.session_hash else "api"


def _handlers(backend: DemoBackend, config: DemoConfig) -> SimpleNamespace:
    """The page's callbacks, each a line or two over the backend."""
    import gradio as gr

    def labels_outputs(result):
        return (result["label_file"], result["overlay"], result["labels"],
                gr.update(choices=result["ids"], value=[]), f"{len(result['ids'])} instance(s)")

    def show_image(image_path):
        rgb = None if image_path is None else load_scene_image(image_path, config.limits)
        return rgb, "", "", None, gr.update(choices=[], value=[])

    def segment(image_path, mode, label_path, points, boxes, request: gr.Request):
        return labels_outputs(backend.segment_page(_session(request), image_path, mode, label_path, points, boxes))

    def remove(image_path, labels, selected, request: gr.Request):
        return labels_outputs(backend.edit(_session(request), "remove", image_path, labels, selected))

    def merge(image_path, labels, selected, request: gr.Request):
        return labels_outputs(backend.edit(_session(request), "merge", image_path, labels, selected))

    def click(kind, points, boxes, pending, evt: gr.SelectData):
        x, y = evt.index[0], evt.index[1]
        if kind == "point":
            return f"{points}; {x},{y}".strip("; "), boxes, None
        if pending is None:
            return points, boxes, [x, y]
        x0, y0 = pending
        return points, f"{boxes}; {min(x0, x)},{min(y0, y)},{max(x0, x)},{max(y0, y)}".strip("; "), None

    def generate(image_path, label_file, steps, guidance, seed, layers, control="default", request: gr.Request = None,
                 progress=gr.Progress(track_tqdm=True)):  # shows the pipeline's step bars
        rgb = load_scene_image(image_path, config.limits)
        labels = load_label_upload(label_file, rgb.shape[:2], config.limits) if label_file else None
        progress(0.0, desc="generating")
        result = backend.generate(_session(request), rgb, labels, steps, guidance, seed, layers, control)
        viewer = gr.update(value=str(result.scene), camera_position=result.camera_position or (None, None, None))
        overlay = None if result.overlay is None else str(result.overlay)
        return viewer, str(result.scene), str(result.download), result.summary, overlay

    def canvas(layout_text):
        from .layout_canvas import draw_layout

        return draw_layout(layout_text)

    def canvas_click(layout_text, description, pending, evt: gr.SelectData):
        from .layout_canvas import add_box, draw_layout

        corner = (evt.index[0], evt.index[1])
        if pending is None:
            return layout_text, draw_layout(layout_text), corner, "click the opposite corner"
        text = add_box(layout_text, tuple(pending), corner, description)
        return text, draw_layout(text), None, "box added"

    def compose(layout_text, control, seed, request: gr.Request):
        result = backend.compose(_session(request), layout_text, control, seed)
        # the composed image and its label map become the page's inputs (mode: label map)
        return (result["image"], result["overlay"], result["summary"], result["image"], "label map",
                result["label_file"], result["label_file"])

    def release(request: gr.Request):
        backend.release(getattr(request, "session_hash", None))

    handlers = dict(show_image=show_image, segment=segment, remove=remove, merge=merge, click=click,
                    generate=generate, compose=compose, canvas=canvas, canvas_click=canvas_click)
    return SimpleNamespace(**{k: _guarded(v) for k, v in handlers.items()}, release=release)


def _input_column(gr) -> SimpleNamespace:
    with gr.Column():
        ui = SimpleNamespace(
            image_file=gr.File(label="Scene image", file_types=["image"], type="filepath", elem_id="image-file"),
            picker=gr.Image(label="Click to add points / box corners (SAM)", interactive=False, type="numpy",
                            elem_id="picker"),
            mode=gr.Radio(list(MODES), value="automatic", label="Objects from", elem_id="mode"),
            label_file=gr.File(label="Label map (palette, grayscale or RGB-coded PNG)", file_types=["image"],
                               type="filepath", elem_id="label-file"))
        with gr.Row():
            ui.click_kind = gr.Radio(["point", "box"], value="point", label="Clicks add")
            ui.points = gr.Textbox(label="Points x,y; …", elem_id="points")
            ui.boxes = gr.Textbox(label="Boxes x0,y0,x1,y1; …", elem_id="boxes")
        ui.segment_button = gr.Button("Segment", elem_id="segment")
    return ui


def _instances_column(gr, ui: SimpleNamespace) -> None:
    with gr.Column():
        ui.overlay = gr.Image(label="Instances", interactive=False, elem_id="overlay")
        ui.count = gr.Markdown("")
        ui.selected = gr.CheckboxGroup(choices=[], label="Instances to edit", elem_id="selected")
        with gr.Row():
            ui.remove_button = gr.Button("Remove selected")
            ui.merge_button = gr.Button("Merge selected")
        ui.current_labels = gr.File(label="Current label map", interactive=False, elem_id="current-labels")


def _generation_block(gr, ui: SimpleNamespace, defaults) -> None:
    """Advanced settings (the model folder's defaults), the button, the viewer and downloads."""
    from ..control import control_presets
    from .backend import MAX_STEPS

    with gr.Accordion("Advanced", open=False), gr.Row():
        ui.steps = gr.Slider(1, MAX_STEPS, value=defaults.steps, step=1, label="Steps")
        ui.guidance = gr.Slider(1.0, 15.0, value=defaults.guidance, step=0.5, label="Guidance")
        ui.seed = gr.Number(DEFAULT_SEED, precision=0, label="Seed")
        ui.layers = gr.Textbox("default", label="Multi-instance layers (default, all, none, 2-6, 1,3, …)")
        ui.control = gr.Dropdown(["default", *control_presets()], value="default",
                                 label="Instance control (default: the model folder's; see docs/control.md)")
    ui.generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
    ui.status = gr.Markdown("", elem_id="status")
    with gr.Row():
        ui.viewer = gr.Model3D(label="Scene", elem_id="viewer", height=420)
        with gr.Column():
            ui.scene_download = gr.File(label="Scene (GLB)", interactive=False, elem_id="scene-download")
            ui.objects_download = gr.File(label="Download (zip: textured and untextured scene, one GLB per "
                                          "object)", interactive=False, elem_id="objects-download")
    ui.alignment_overlay = gr.Image(label="Photo | rendered instances at the estimated camera | blend",
                                    interactive=False, elem_id="alignment-overlay")


EXAMPLE_LAYOUT = """size: [512, 512]
prompt: a living room with a green sofa and a floor lamp
instances:
  - box: [60, 250, 380, 470]
    description: a green velvet sofa
    category: sofa
  - box: [400, 80, 470, 450]
    description: a brass floor lamp
    category: lamp
"""


def _layout_tab(gr, ui: SimpleNamespace, enabled: bool) -> None:
    """Layout → image (FLUX with a layout control) → the page's image and label map."""
    note = ("Draw boxes (two clicks each, after typing the description) or edit the layout text (boxes in "
            "pixels: x0, y0, x1, y1), compose the image, then press Generate below: the image and the layout's "
            "label map become the inputs.")
    if not enabled:
        note += " **This server has no image model** (start it with `--image-model FOLDER`)."
    gr.Markdown(note)
    with gr.Row():
        with gr.Column():
            ui.layout_canvas = gr.Image(label="Click two corners to add a box (with the description below)",
                                        interactive=False, type="numpy", elem_id="layout-canvas")
            with gr.Row():
                ui.box_description = gr.Textbox(label="Description of the next box", elem_id="box-description")
                ui.canvas_status = gr.Markdown("")
            ui.layout_text = gr.Code(EXAMPLE_LAYOUT, language="yaml", label="Layout (YAML or JSON)",
                                     elem_id="layout-text")
            with gr.Row():
                ui.layout_control = gr.Dropdown(["3dis", "ast", "none"], value="3dis", label="Layout control")
                ui.layout_seed = gr.Number(0, precision=0, label="Seed")
            ui.compose_button = gr.Button("Compose image", elem_id="compose")
        with gr.Column():
            ui.composed = gr.Image(label="Composed image", interactive=False, type="filepath", elem_id="composed")
            ui.composed_overlay = gr.Image(label="Layout label map", interactive=False, type="filepath")
            ui.compose_status = gr.Markdown("", elem_id="compose-status")


def _wire(ui: SimpleNamespace, on: SimpleNamespace, labels_state, pending_corner) -> None:
    label_outputs = [ui.current_labels, ui.overlay, labels_state, ui.selected, ui.count]
    ui.image_file.change(on.show_image, [ui.image_file], [ui.picker, ui.points, ui.boxes, labels_state, ui.selected],
                         api_name=False)
    ui.picker.select(on.click, [ui.click_kind, ui.points, ui.boxes, pending_corner],
                     [ui.points, ui.boxes, pending_corner], api_name=False)
    ui.segment_button.click(on.segment, [ui.image_file, ui.mode, ui.label_file, ui.points, ui.boxes], label_outputs,
                            api_name="segment", concurrency_limit=2)
    ui.remove_button.click(on.remove, [ui.image_file, labels_state, ui.selected], label_outputs, api_name=False)
    ui.merge_button.click(on.merge, [ui.image_file, labels_state, ui.selected], label_outputs, api_name=False)
    ui.layout_text.change(on.canvas, [ui.layout_text], [ui.layout_canvas], api_name=False)
    ui.layout_canvas.select(on.canvas_click, [ui.layout_text, ui.box_description, ui.pending_box],
                            [ui.layout_text, ui.layout_canvas, ui.pending_box, ui.canvas_status], api_name=False)
    ui.compose_button.click(on.compose, [ui.layout_text, ui.layout_control, ui.layout_seed],
                            [ui.composed, ui.composed_overlay, ui.compose_status, ui.image_file, ui.mode, ui.label_file,
                             ui.current_labels], api_name="compose", concurrency_limit=1, concurrency_id="generate")
    ui.generate_button.click(on.generate, [ui.image_file, ui.current_labels, ui.steps, ui.guidance, ui.seed,
                                           ui.layers, ui.control],
                             [ui.viewer, ui.scene_download, ui.objects_download, ui.status, ui.alignment_overlay],
                             api_name="generate",
                             concurrency_limit=1, concurrency_id="generate")


def build_demo(config: DemoConfig, pipe=None):
    """The ``gr.Blocks`` page (call ``.queue(...)`` and ``.launch(...)`` on it, or use :func:`launch`)."""
    import gradio as gr

    # pymeshlab must be imported on the main thread: first imported in a Gradio worker thread, it
    # leaves the heap corrupted and the process aborts at exit (measured: exit status 134).
    import pymeshlab  # noqa: F401

    backend = DemoBackend(config, pipe)
    on = _handlers(backend, config)
    ttl = max(2, config.cache_ttl_s)
    with gr.Blocks(title="midi3d", delete_cache=(ttl // 2, ttl)) as page:
        gr.Markdown("## midi3d: one photo → 3D objects in one scene\nUpload a scene photo, choose the objects, "
                    "generate, then view and download the meshes.")
        labels_state, pending_corner = gr.State(None), gr.State(None)
        with gr.Tab("From a photo"), gr.Row():
            ui = _input_column(gr)
            _instances_column(gr, ui)
        with gr.Tab("From a layout"):
            _layout_tab(gr, ui, config.image_model is not None)
            ui.pending_box = gr.State(None)
        _generation_block(gr, ui, backend.pipe.sampling_defaults)
        rows = examples()
        if rows:
            gr.Examples(rows, inputs=[ui.image_file, ui.label_file, ui.mode], label="Examples")
        _wire(ui, on, labels_state, pending_corner)
        page.load(on.canvas, [ui.layout_text], [ui.layout_canvas], api_name=False)
        page.unload(on.release)
    page.backend = backend
    return page


def launch(config: DemoConfig, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           prevent_thread_lock: bool = False, pipe=None):
    """Build, queue (one generation at a time, bounded waiting line) and serve the demo."""
    page = build_demo(config, pipe)
    page.backend.start_sweeper(page)  # also Gradio's cache: its own clean-up task can die
    page.queue(max_size=config.limits.queue_size, default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
                max_file_size=int(config.limits.max_upload_mb * 1024 * 1024), show_error=True, quiet=True)
    return page
