"""Layout → scene image on diffusers' own ``FluxPipeline`` (or ``StableDiffusion3Pipeline`` for
instanceassemble), with a layout control set through diffusers' attention-processor API
(``transformer.set_attn_processor``) or forward hooks, then the instance label map for the 3D stage.

* ``3dis``: 3DIS-FLUX's detail rendering (:mod:`.threedis`): global and per-instance prompts
  encoded separately and concatenated, attention masks per step;
* ``ast``: AST's reweighting (:mod:`.ast`) on the layout's maps;
* ``none``: the plain pipeline on the global prompt (for comparison).

Weights are local folders only: a FLUX.1-dev (or -schnell) pipeline folder for ``--image-model``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io.errors import InputError
from .ast import ASTConfig, ASTFluxAttnProcessor, ASTState, build_maps, find_span, substitute_segments
from .layout import Layout
from .steps import StepCounter
from .threedis import ThreeDISConfig, ThreeDISFluxAttnProcessor, ThreeDISState, box_token_grid

CONTROLS = ("3dis", "ast", "instanceassemble", "none")
ARTICLES = {"a", "an", "the", "some", "one", "two", "three"}
MISSING_MODEL = ("{folder}: image model folder not found; download a FLUX pipeline folder (black-forest-labs/"
                 "FLUX.1-dev, or FLUX.1-schnell) and pass its local path (no weights are downloaded)")


@dataclass(frozen=True)
class ComposeOptions:
    control: str = "3dis"
    steps: int = 20
    guidance: float = 3.5
    seed: int = 0
    max_sequence_length: int = 512  # T5 tokens of the prompt (ast, none)
    instance_tokens: int = 64  # 3dis: T5 tokens per prompt segment (the official default: 200)
    threedis: ThreeDISConfig = field(default_factory=ThreeDISConfig)
    ast: ASTConfig = field(default_factory=ASTConfig)
    instanceassemble: Path | None = None  # the released checkpoint folder (LoRA + layout weights)
    grounding_ratio: float = 0.3  # instanceassemble: layout control in the first int(r · steps) steps
    layout_scale: float = 1.0
    trust_pickle: bool = False  # instanceassemble: allow the released layout.pth
    depth: Path | None = None  # a depth map image for FLUX-Depth (a FluxControlPipeline folder)

    def __post_init__(self):
        if self.control not in CONTROLS:
            raise InputError(f"--control {self.control}: use one of {', '.join(CONTROLS)}")
        if self.control == "instanceassemble" and self.instanceassemble is None:
            raise InputError("instanceassemble needs its released weights: --instanceassemble FOLDER (with "
                             "pytorch_lora_weights.safetensors and layout.pth / layout.safetensors)")
        if not 0 <= self.grounding_ratio <= 1:
            raise InputError(f"grounding ratio {self.grounding_ratio}: must be in [0, 1]")
        if self.steps < 1:
            raise InputError(f"--steps {self.steps}: must be >= 1")


@dataclass
class ComposedImage:
    image: np.ndarray  # [H, W, 3] uint8
    labels: np.ndarray  # [H, W] instance ids (layout order, 1-based)
    label_source: str  # "sam (box prompts)", "layout masks", "layout boxes" or "layout masks and boxes"
    control: str
    seconds: float


IMAGE_PIPELINES = ("FluxPipeline", "FluxControlPipeline", "StableDiffusion3Pipeline")


def load_image_model(folder: str | Path, torch_dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A local ``FluxPipeline`` (or, for instanceassemble, ``StableDiffusion3Pipeline``) folder; a
    missing one names the release to get."""
    import json

    import diffusers

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise InputError(MISSING_MODEL.format(folder=folder))
    name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    if name not in IMAGE_PIPELINES:
        raise InputError(f"{folder}: a {name} folder; the layout path needs {' or '.join(IMAGE_PIPELINES)}")
    kwargs = {} if torch_dtype == torch.float32 else {"torch_dtype": torch_dtype}
    pipe = getattr(diffusers, name).from_pretrained(folder, local_files_only=True, **kwargs)
    return pipe.to(device)


def is_sd3(pipe) -> bool:
    return type(pipe).__name__.startswith("StableDiffusion3")


def flux_processor_order(transformer) -> list[str]:
    """The attention processors of a FLUX transformer in call order (double blocks, then single)."""
    keys = list(transformer.attn_processors)

    def block(key: str) -> int:
        return int(key.split(".")[1])

    double = sorted((k for k in keys if k.startswith("transformer_blocks.")), key=block)
    single = sorted((k for k in keys if k.startswith("single_transformer_blocks.")), key=block)
    if len(double) + len(single) != len(keys):
        raise ValueError("unexpected attention modules: not a FLUX transformer")
    return double + single


def published_call(index: int, double: int, single: int) -> int:
    """The call index of full FLUX (19 double + 38 single) at the same relative depth, so that
    layer-grouped rules (AST) apply to models of other depths."""
    if double == 19 and single == 38:
        return index
    if index < double:
        return min(18, int(index * 19 / double))
    return 19 + min(37, int((index - double) * 38 / max(single, 1)))


class _StepTracker:
    """A transformer pre-hook telling the control's state the current step and timestep."""

    def __init__(self, state):
        self.state = state
        self.counter = StepCounter()

    def __call__(self, module, args, kwargs):
        value = self.counter.update(kwargs)
        self.state.step = self.counter.step
        if value is not None:
            self.state.current_t = value * 1000.0  # FluxPipeline passes t / 1000


def _encode(pipe, prompt: str, tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=prompt, device=device, max_sequence_length=tokens)
    return embeds, pooled


def _instance_grid(layout: Layout, latent_h: int, latent_w: int) -> np.ndarray:
    """``[N, h, w]`` token regions: each mask resized to the token grid (a token belongs to an
    instance when its cell is at least half covered), or the box rounded outwards."""
    from PIL import Image

    boxes = box_token_grid(layout.boxes, latent_h, latent_w)
    for index, instance in enumerate(layout.instances):
        if instance.mask is not None:
            cover = np.asarray(Image.fromarray(instance.mask.astype(np.float32)).resize((latent_w, latent_h),
                                                                                      Image.BOX))
            boxes[index] = cover >= 0.5 if (cover >= 0.5).any() else cover > 0
    return boxes


def attribute_words(description: str, category: str | None) -> list[str]:
    """AST's attribute words without a parser: the words other than articles and the noun (the
    category when it is one of the words, else the last word)."""
    words = re.findall(r"[\w'-]+", description.lower())
    noun = category.lower() if category and category.lower() in words else (words[-1] if words else None)
    return [w for w in words if w not in ARTICLES and w != noun]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _threedis_inputs(pipe, layout: Layout, options: ComposeOptions, grid: np.ndarray, device):
    tokens = options.instance_tokens
    texts = [layout.prompt] + [i.description for i in layout.instances]
    encoded = [_encode(pipe, text, tokens, device)[0][:, :tokens] for text in texts]
    _, pooled = _encode(pipe, ",".join(texts), options.max_sequence_length, device)  # CLIP: all words
    embeds = torch.cat(encoded, dim=1)
    instance_text = [np.arange((k + 1) * tokens, (k + 2) * tokens) for k in range(len(layout.instances))]
    state = ThreeDISState(options.threedis, grid.reshape(len(grid), -1), instance_text, embeds.shape[1],
                          calls_per_step=0, hide_instance_text_after=True)
    return embeds, pooled, state


def _ast_inputs(pipe, layout: Layout, options: ComposeOptions, grid: np.ndarray, device):
    length = options.max_sequence_length
    missing = [i.description for i in layout.instances if i.description.lower() not in layout.prompt.lower()]
    master = ", ".join([layout.prompt] + missing)
    embeds, pooled = _encode(pipe, master, length, device)
    master_ids = list(pipe.tokenizer_2(master, padding="max_length", max_length=length, truncation=True).input_ids)
    segments = [[]] + [_ids(pipe.tokenizer_2, i.description) for i in layout.instances]  # no background prompt
    attributes = []
    for instance in layout.instances:
        words = attribute_words(instance.description, instance.category)
        attributes.append(_ids(pipe.tokenizer_2, " ".join(words)) if words else None)
    regions = grid.reshape(len(grid), -1)
    background = ~regions.any(0)
    maps = build_maps(np.concatenate([background[None], regions]), master_ids, segments, attributes, length,
                      options.ast)
    spans = []
    for ids in segments[1:]:
        start = find_span(master_ids, ids)
        spans.append(None if start is None else (start, start + len(ids)))
    segment_embeds = [_encode(pipe, i.description, length, device)[0] for i in layout.instances]
    embeds = substitute_segments(embeds, segment_embeds, spans)
    return embeds, pooled, ASTState(options.ast, maps, [])


def _instanceassemble_call(pipe, layout: Layout, options: ComposeOptions, latent_hw, device, call: dict):
    """The plain pipeline with InstanceAssemble's branch hooked into its transformer."""
    from .instanceassemble import GroundingSchedule, ia_layout, image_ids, layout_texts, load_instanceassemble

    key = str(Path(options.instanceassemble).resolve())
    cached = getattr(pipe, "_midi3d_instanceassemble", None)
    if cached is None or cached[0] != key:  # the LoRA is loaded into the transformer once per folder
        cached = (key, load_instanceassemble(pipe.transformer, options.instanceassemble, options.trust_pickle))
        pipe._midi3d_instanceassemble = cached
    adapter = cached[1]
    texts = layout_texts([i.description for i in layout.instances], [i.category for i in layout.instances])
    if is_sd3(pipe):  # pooled = both CLIPs' pooled embeddings, as SD3 conditions on them
        pooled_texts = torch.cat([pipe._get_clip_prompt_embeds(prompt=texts, device=device, clip_model_index=i)[1]
                                  for i in (0, 1)], -1)
        ids, prompt = None, dict(prompt=layout.prompt, max_sequence_length=options.max_sequence_length)
    else:
        pooled_texts = pipe._get_clip_prompt_embeds(prompt=texts, device=device)
        embeds, pooled = _encode(pipe, layout.prompt, options.max_sequence_length, device)
        ids, prompt = image_ids(*latent_hw).to(device), dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled)
    layout_inputs = ia_layout(layout.boxes, pooled_texts.detach().cpu(), *latent_hw)
    schedule = GroundingSchedule(adapter, options.steps, options.grounding_ratio, options.layout_scale)
    hook = pipe.transformer.register_forward_pre_hook(schedule, with_kwargs=True)
    try:
        with adapter.layout(layout_inputs, ids, options.layout_scale):
            return pipe(**prompt, **call)
    finally:
        hook.remove()


def _depth_image(pipe, depth: Path | None, width: int, height: int):
    """The depth map for a FLUX-Depth pipeline, resized to the layout (``None`` for the others)."""
    control = type(pipe).__name__ == "FluxControlPipeline"
    if depth is None:
        if control:
            raise InputError("this image model is a FLUX control (FLUX-Depth) pipeline: give a depth map (--depth)")
        return None
    if not control:
        raise InputError("--depth needs a FLUX-Depth pipeline folder (black-forest-labs/FLUX.1-Depth-dev) as "
                         "--image-model")
    from ..io.images import load_rgb

    from PIL import Image

    return Image.fromarray(load_rgb(depth)).resize((width, height), Image.BILINEAR)


def compose_image(pipe, layout: Layout, options: ComposeOptions | None = None,
                  sam_checkpoint: str | Path | None = None) -> ComposedImage:
    """Generate the layout's scene image with ``pipe`` (a diffusers ``FluxPipeline``) and its
    control, then the label map for the 3D stage."""
    options = options or ComposeOptions()
    start = time.perf_counter()
    device = pipe._execution_device
    sd3 = is_sd3(pipe)
    if sd3 and options.control not in ("instanceassemble", "none"):
        raise InputError(f"--image-control {options.control} runs on FLUX; this image model is SD3 (use "
                         "instanceassemble or none)")
    step = pipe.vae_scale_factor * (pipe.transformer.config.patch_size if sd3 else 2)
    height, width = layout.height // step * step, layout.width // step * step
    if (height, width) != (layout.height, layout.width):
        raise InputError(f"layout size {layout.width}x{layout.height}: this image model needs multiples of "
                         f"{step} pixels (e.g. {width}x{height})")
    grid = _instance_grid(layout, height // step, width // step)
    control_image = _depth_image(pipe, options.depth, width, height)
    generator = torch.Generator("cpu").manual_seed(options.seed)
    call = dict(height=height, width=width, num_inference_steps=options.steps, guidance_scale=options.guidance,
                generator=generator, output_type="np")
    if control_image is not None:
        call["control_image"] = control_image
    transformer = pipe.transformer
    original = transformer.attn_processors
    hook = None
    try:
        if options.control == "none":
            result = pipe(prompt=layout.prompt, max_sequence_length=options.max_sequence_length, **call)
        elif options.control == "instanceassemble":
            result = _instanceassemble_call(pipe, layout, options, grid.shape[1:], device, call)
        else:
            if options.control == "3dis":
                embeds, pooled, state = _threedis_inputs(pipe, layout, options, grid, device)
                make = ThreeDISFluxAttnProcessor
            else:
                embeds, pooled, state = _ast_inputs(pipe, layout, options, grid, device)
                make = ASTFluxAttnProcessor
            order = flux_processor_order(transformer)
            double = sum(1 for key in order if key.startswith("transformer_blocks."))
            state.calls_per_step = len(order)
            processors = {key: make(state, published_call(index, double, len(order) - double) if make is
                                    ASTFluxAttnProcessor else index) for index, key in enumerate(order)}
            transformer.set_attn_processor(processors)
            hook = transformer.register_forward_pre_hook(_StepTracker(state), with_kwargs=True)
            result = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, **call)
    finally:
        if hook is not None:
            hook.remove()
        transformer.set_attn_processor(original)
    image = np.clip(np.round(result.images[0] * 255), 0, 255).astype(np.uint8)
    labels, source = layout_label_map(image, layout, sam_checkpoint)
    return ComposedImage(image, labels, source, options.control, time.perf_counter() - start)


def layout_label_map(image: np.ndarray, layout: Layout, sam_checkpoint: str | Path | None = None
                     ) -> tuple[np.ndarray, str]:
    """The instance label map of a generated image: SAM prompted with the layout's boxes when a
    checkpoint is given (or ``MIDI3D_SAM_CHECKPOINT`` is set), else the layout's own masks / boxes."""
    import os

    checkpoint = sam_checkpoint or os.environ.get("MIDI3D_SAM_CHECKPOINT")
    if checkpoint:
        from ..segmentation.sam import SamSegmenter

        boxes = [i.pixel_box(layout.width, layout.height) for i in layout.instances]
        labels = SamSegmenter(checkpoint, boxes=boxes, max_instances=len(boxes)).segment(image)
        return labels, "sam (box prompts)"
    kinds = {"mask" if i.mask is not None else "box" for i in layout.instances}
    source = {frozenset({"mask"}): "layout masks", frozenset({"box"}): "layout boxes"}.get(
        frozenset(kinds), "layout masks and boxes")
    return layout.label_map(), source


def write_composed(result: ComposedImage, path: str | Path) -> list[Path]:
    """Write the image (PNG), its label map ``<stem>_seg.png`` and an overlay ``<stem>_overlay.png``,
    each atomically; returns the paths."""
    from ..io.images import write_png
    from ..segmentation.base import save_label_map, save_overlay

    path = write_png(path, result.image)
    seg = save_label_map(result.labels, path.with_name(f"{path.stem}_seg.png"))
    preview = save_overlay(result.image, result.labels, path.with_name(f"{path.stem}_overlay.png"))
    return [path, seg, preview]
