"""``MIDIPipeline``: instance images + masks + scene image → jointly denoised latents → meshes.

Reads and writes the official MIDI-3D pipeline folder layout. Readable top to bottom:
``check_inputs → encode → timesteps → prepare_latents → denoising loop → extract meshes``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..geometry.extraction import DEFAULT_BOX, FALLBACK_METADATA, GridResult, dense_grids, extract_meshes
from ..geometry.postprocess import PostprocessConfig, postprocess_mesh
from ..io.files import write_folder_atomic
from ..io.labelmap import DEFAULT_MAX_INSTANCES
from ..models.autoencoders.shape_vae import BOX_CHANNELS, ShapeVAE
from ..models.checkpoint import (
    CheckpointError,
    load_weights_strict,
    read_json,
    save_weights,
    weight_files,
    write_json,
)
from ..control.config import ControlConfig, control_from_data, load_control
from ..control.schedule import ControlPlan
from ..models.image_encoders import (build_image_processor, dino_channels, encode_clip, encode_dino, normalised_pixels,
                                     patch_regions, resized_instances, resized_scenes)
from ..models.layer_spec import LayerSpec, is_default, parse_layer_list
from ..models.layout_model import InstanceLayoutModel
from ..models.layout_tokens import mask_boxes
from ..models.transformers.midi_transformer import LAYOUT_TOKENS_KEY, MIDITransformer
from ..schedulers.rectified_flow import RectifiedFlowScheduler
from .memory import DEFAULT_BUDGET_GB
from .memory import estimate as estimate_memory
from .preprocess import InstanceInputs, scene_instances
from .sampling import CONTROL_KEY, MI_LAYERS_KEY, OFFICIAL_DEFAULTS, SAMPLING_KEY, SamplingDefaults

logger = logging.getLogger(__name__)

COMPONENTS = ("transformer", "vae", "scheduler", "image_encoder_1", "image_encoder_2",
              "feature_extractor_1", "feature_extractor_2")
OPTIONAL_COMPONENTS = ("layout_model",)  # not in the official release; loaded when the folder has it


@dataclass
class ExtractionOptions:
    """How latents become meshes (see :mod:`midi3d.geometry.extraction`)."""

    method: str = "hierarchical"
    resolution: int | None = None  # None: the pipeline folder's default (``MIDIPipeline.sampling_defaults``)
    fallback_levels: tuple[float, ...] | None = None  # iso-levels for instances with no surface; None: the folder's
    coarse_resolution: int = 32  # clamped to the resolution for grids smaller than 32³
    progressive: bool = True
    smooth: bool = False
    vertex_mapping: str = "official"
    chunk_size: int = 50_000


@dataclass
class MIDIPipelineOutput(BaseOutput):
    """What one call produced.

    ``latents`` ``[B, T, C]``; ``meshes`` one per entry of ``instance_ids`` in the scene frame
    (``None`` where the field has no zero crossing; ``meshes`` is ``None`` for
    ``output_type="latent"``); ``empty_ids`` the ids without a surface; ``fallback_levels`` the ids
    whose field had no zero crossing and were meshed at a dilated iso-level instead (the folder's
    or the caller's ``fallback_levels``), with that level; ``timings`` seconds per stage;
    ``settings`` the resolved values used (steps, guidance, resolution, layers, …).
    """

    latents: torch.Tensor | None = None
    meshes: list[trimesh.Trimesh | None] | None = None
    instance_ids: list[int] = field(default_factory=list)
    num_sdf_queries: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:  # the name scene helpers and exporters use
        return self.instance_ids

    @property
    def empty_ids(self) -> list[int]:
        """Ids whose field has no zero crossing (no mesh); ``[]`` for latent output."""
        return [i for i, m in zip(self.instance_ids, self.meshes or []) if m is None or len(m.faces) == 0]

    @property
    def fallback_levels(self) -> dict[int, float]:
        """``{id: iso-level}`` for the ids meshed at a fallback level (recorded on each mesh)."""
        return {i: m.metadata[FALLBACK_METADATA] for i, m in zip(self.instance_ids, self.meshes or [])
                if m is not None and FALLBACK_METADATA in m.metadata}

    def meshes_by_id(self) -> dict[int, trimesh.Trimesh]:
        """``{instance id: mesh}`` for the instances that have a surface."""
        return {i: m for i, m in zip(self.instance_ids, self.meshes or []) if m is not None and len(m.faces)}


@dataclass
class BoxHold:
    """Holds the box channels of object-frame latents on known boxes while sampling: at noise
    level ``sigma`` they are the forward-noised box ``(1 - sigma) * box + sigma * noise``, with the
    noise the starting latents' own, so the transformer denoises the shape for that box."""

    target: torch.Tensor  # [B, T, 6] the boxes in latent units, on every token
    noise: torch.Tensor  # [B, T, 6] the box channels of the starting noise

    @classmethod
    def start(cls, latents: torch.Tensor, boxes: torch.Tensor) -> BoxHold:
        target = boxes.to(latents.device, torch.float32)[:, None, :].expand(-1, latents.shape[1], -1)
        return cls(target, latents[..., -BOX_CHANNELS:].float().clone())

    def apply(self, latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(latents.device, torch.float32)
        held = (1.0 - sigma) * self.target + sigma * self.noise
        return torch.cat([latents[..., :-BOX_CHANNELS], held.to(latents.dtype)], dim=-1)


# -- component loading -------------------------------------------------------------------------


def _load_diffusers_model(cls):
    def load(folder: Path, dtype: torch.dtype, allow_pickle: bool):
        config = read_json(folder / "config.json")
        may_be_zero = getattr(cls, "config_may_be_zero", ())  # rates, not sizes
        bad = [k for k, v in config.items()
               if not k.startswith("_") and isinstance(v, (int, float)) and not isinstance(v, bool)
               and (v < 0 if k in may_be_zero else v <= 0)]
        if bad:
            raise CheckpointError(f"{folder / 'config.json'}: invalid {cls.__name__} config ({bad[0]} = {config[bad[0]]}: "
                                  "sizes must be positive)")
        try:
            with torch.device("meta"):
                model = cls.from_config(config)
                if config.get(LAYOUT_TOKENS_KEY) is True and hasattr(model, "enable_layout_tokens"):
                    model.enable_layout_tokens()  # its weights are then required, strictly
        except Exception as err:  # any failure of an unusable config is this folder's problem
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{folder / 'config.json'}: invalid {cls.__name__} config ({first})") from None
        load_weights_strict(model, folder, "diffusion_pytorch_model", dtype, allow_pickle)
        return model.eval()

    return load


@contextlib.contextmanager
def _without_transformers_bars():
    """transformers' own progress bars (loading, "Writing model shards") off for the block."""
    from transformers.utils import logging as hf_logging

    bar_was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bar_was_enabled:
            hf_logging.enable_progress_bar()


def _load_transformers_model(class_name: str):
    def load(folder: Path, dtype: torch.dtype, allow_pickle: bool):
        import transformers

        read_json(folder / "config.json")  # a clear error for a missing or broken config
        weight_files(folder, "model", allow_pickle)  # refuses pickles unless allowed
        cls = getattr(transformers, class_name)
        try:
            with _without_transformers_bars():
                model, info = cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                                  use_safetensors=not allow_pickle or None, output_loading_info=True)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CheckpointError(f"{folder}: cannot load {class_name} ({type(err).__name__}: {first})") from None
        ignored = ("position_ids",)
        missing = [k for k in info.get("missing_keys", []) if not k.endswith(ignored)]
        unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith(ignored)]
        mismatched = [str(k) for k in info.get("mismatched_keys", [])]
        if missing or unexpected or mismatched:
            raise CheckpointError(f"{folder / 'model.safetensors'}: weights do not match the config "
                                  f"(missing: {missing[:8]}, unexpected: {unexpected[:8]}, mismatched: {mismatched[:8]})")
        bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"{folder / 'model.safetensors'}: non-finite values (NaN/inf) in {bad[:8]}")
        return model.eval()

    return load


def _load_scheduler(folder: Path, dtype: torch.dtype, allow_pickle: bool):
    path = folder / "scheduler_config.json"
    config = read_json(path)
    checks = {"num_train_timesteps": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
              "shift": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
              "use_dynamic_shifting": lambda v: isinstance(v, bool)}
    for key, valid in checks.items():
        if key in config and not valid(config[key]):
            raise CheckpointError(f"{path}: invalid {key} {config[key]!r}")
    return RectifiedFlowScheduler.from_config(config)


def _load_processor(kind: str):
    def load(folder: Path, dtype: torch.dtype, allow_pickle: bool):
        return build_image_processor(kind, read_json(folder / "preprocessor_config.json"))

    return load


# Dispatch on class *names* only: a name not listed here is refused, never imported.
COMPONENT_LOADERS: dict[str, Callable] = {
    "TripoSGDiTModel": _load_diffusers_model(MIDITransformer),
    "MIDITransformer": _load_diffusers_model(MIDITransformer),
    "TripoSGVAEModel": _load_diffusers_model(ShapeVAE),
    "ShapeVAE": _load_diffusers_model(ShapeVAE),
    "InstanceLayoutModel": _load_diffusers_model(InstanceLayoutModel),
    "RectifiedFlowScheduler": _load_scheduler,
    "CLIPVisionModelWithProjection": _load_transformers_model("CLIPVisionModelWithProjection"),
    "Dinov2Model": _load_transformers_model("Dinov2Model"),
    "CLIPImageProcessor": _load_processor("clip"),
    "CLIPImageProcessorPil": _load_processor("clip"),
    "CLIPImageProcessorFast": _load_processor("clip"),
    "BitImageProcessor": _load_processor("bit"),
    "BitImageProcessorPil": _load_processor("bit"),
    "BitImageProcessorFast": _load_processor("bit"),
}

SAVED_PROCESSOR_NAMES = {"clip": "CLIPImageProcessor", "bit": "BitImageProcessor"}


class MIDIPipeline(DiffusionPipeline):
    """Multi-instance diffusion for compositional 3D scene generation.

    ``sampling_defaults`` (steps, guidance, meshing resolution) are read from the folder's
    ``model_index.json`` and written back by :meth:`save_pretrained`; every value a caller
    leaves ``None`` takes them.
    """

    model_cpu_offload_seq = "image_encoder_1->image_encoder_2->transformer->vae"
    _callback_tensor_inputs = ["latents", "model_input", "model_output"]

    def __init__(self, transformer: MIDITransformer, vae: ShapeVAE, scheduler: RectifiedFlowScheduler,
                 image_encoder_1, image_encoder_2, feature_extractor_1, feature_extractor_2,
                 layout_model: InstanceLayoutModel | None = None):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler,
                              image_encoder_1=image_encoder_1, image_encoder_2=image_encoder_2,
                              feature_extractor_1=feature_extractor_1, feature_extractor_2=feature_extractor_2,
                              layout_model=layout_model)
        self.sampling_defaults: SamplingDefaults = OFFICIAL_DEFAULTS
        self.default_mi_layers: tuple[int, ...] | None = None  # the folder's; None = the released rule
        self.control_defaults: ControlConfig | None = None  # the folder's instance control, if it records one

    def set_control_defaults(self, control: ControlConfig | dict | str | Path | None) -> None:
        """The instance control used when a call passes none (:func:`midi3d.control.load_control`:
        a config, mapping, YAML path or preset name); saved with the folder. ``None`` removes it."""
        self.control_defaults = load_control(control)

    def set_multi_instance_layers(self, layers: LayerSpec = None) -> None:
        """Multi-instance attention on ``layers`` (:mod:`midi3d.models.layer_spec`); ``None`` or
        ``"default"`` = the layers recorded in the folder (else the released model's rule)."""
        self.transformer.set_multi_instance_layers(self.default_mi_layers if is_default(layers) else layers)

    # -- loading / saving ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu", mi_layers: LayerSpec = None,
                        allow_pickle: bool = False, dtype: torch.dtype | None = None) -> MIDIPipeline:
        """Load a pipeline folder in the official layout, strictly (no missing/unexpected key).

        Args:
            folder: the pipeline folder (``model_index.json`` and one sub-folder per component).
            torch_dtype: parameter dtype of the networks (float32 by default); ``dtype`` is an alias.
            mi_layers: multi-instance blocks (:mod:`midi3d.models.layer_spec`); ``None`` uses the
                folder's recorded list or the released model's layers.
            allow_pickle: accept ``.bin``/``.ckpt`` weights (``weights_only`` loading).
        """
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise ValueError(f"torch_dtype={torch_dtype} and dtype={dtype} disagree; pass one")
        torch_dtype = torch_dtype or dtype or torch.float32
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: pipeline folder not found")
        index = read_json(folder / "model_index.json")
        try:
            defaults = SamplingDefaults.from_index(index, str(folder / "model_index.json"))
        except ValueError as err:
            raise CheckpointError(str(err)) from None
        components = {name: cls._load_component(folder, index, name, torch_dtype, allow_pickle)
                      for name in COMPONENTS}
        for name in OPTIONAL_COMPONENTS:
            if index.get(name) is not None:
                components[name] = cls._load_component(folder, index, name, torch_dtype, allow_pickle)
        pipe = cls(**components)
        pipe.sampling_defaults = defaults
        if index.get(CONTROL_KEY) is not None:
            try:
                pipe.control_defaults = control_from_data(index[CONTROL_KEY], f"{folder / 'model_index.json'}: "
                                                          f"{CONTROL_KEY}")
            except ValueError as err:
                raise CheckpointError(str(err)) from None
        recorded = index.get(MI_LAYERS_KEY)
        if recorded is not None:
            try:
                pipe.default_mi_layers = tuple(parse_layer_list(recorded, pipe.transformer.config.num_layers))
            except ValueError as err:
                raise CheckpointError(f"{folder / 'model_index.json'}: {MI_LAYERS_KEY}: {err}") from None
        pipe.set_multi_instance_layers(mi_layers)
        return pipe.to(device)

    @staticmethod
    def _load_component(folder: Path, index: dict, name: str, dtype: torch.dtype, allow_pickle: bool):
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2):
            raise CheckpointError(f"{folder / 'model_index.json'}: missing component {name!r}")
        loader = COMPONENT_LOADERS.get(entry[1])
        if loader is None:
            raise CheckpointError(f"{folder / 'model_index.json'}: unsupported class {entry[1]!r} for {name} "
                                  "(classes named by a checkpoint are never imported)")
        if not (folder / name).is_dir():
            raise CheckpointError(f"{folder / name}: component folder not found")
        return loader(folder / name, dtype, allow_pickle)

    def save_pretrained(self, folder: str | Path, **_: object) -> None:
        """Write the official layout (official class names) atomically: a temporary sibling folder
        is filled, then swapped in, so an existing folder is never left half-written. The
        sampling defaults and multi-instance layers go into ``model_index.json``."""
        write_folder_atomic(Path(folder), self._write_folder)

    def _write_folder(self, folder: Path) -> None:
        import diffusers

        index = {"_class_name": "MIDIPipeline", "_diffusers_version": diffusers.__version__,
                 MI_LAYERS_KEY: list(self.transformer.mi_layers), SAMPLING_KEY: self.sampling_defaults.to_index()}
        if self.control_defaults is not None:
            index[CONTROL_KEY] = self.control_defaults.to_data()
        for name in ("transformer", "vae", "layout_model"):
            model = getattr(self, name, None)
            if model is None:  # an optional component the pipeline does not have
                continue
            config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
            config.update(_class_name=model.official_class_name, _diffusers_version=diffusers.__version__)
            if getattr(model, "has_layout_tokens", False):
                config[LAYOUT_TOKENS_KEY] = True
            write_json(folder / name / "config.json", config)
            save_weights(model, folder / name, "diffusion_pytorch_model")
            index[name] = [model.official_module, model.official_class_name]
        config = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
        config.update(_class_name=self.scheduler.official_class_name, _diffusers_version=diffusers.__version__)
        write_json(folder / "scheduler" / "scheduler_config.json", config)
        index["scheduler"] = [self.scheduler.official_module, self.scheduler.official_class_name]
        for name in ("image_encoder_1", "image_encoder_2"):
            encoder = getattr(self, name)
            with _without_transformers_bars():
                encoder.save_pretrained(folder / name, safe_serialization=True)
            index[name] = ["transformers", type(encoder).__name__]
        for name, kind in (("feature_extractor_1", "clip"), ("feature_extractor_2", "bit")):
            config = getattr(self, name).to_dict()
            config["image_processor_type"] = SAVED_PROCESSOR_NAMES[kind]
            write_json(folder / name / "preprocessor_config.json", config)
            index[name] = ["transformers", SAVED_PROCESSOR_NAMES[kind]]
        write_json(folder / "model_index.json", index)

    def to(self, *args, **kwargs) -> MIDIPipeline:
        """diffusers' ``to``: a device and/or a dtype (``pipe.to("cuda", torch.bfloat16)``).

        diffusers 0.42 warns about float32-only modules on every dtype cast even when a model has
        none (``_keep_in_fp32_modules`` empty); that warning is muted here, nothing else.
        """
        from diffusers.utils import logging as diffusers_logging

        log = diffusers_logging.get_logger("diffusers.models.modeling_utils")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            return super().to(*args, **kwargs)
        finally:
            log.setLevel(level)

    # -- LoRA (diffusers' PEFT integration on the transformer) ---------------------------------

    def load_lora_weights(self, folder: str | Path, adapter_name: str = "default", scale: float = 1.0) -> None:
        """Add the adapter folder written by ``midi3d train lora`` (peft layout) to the transformer
        and activate it at ``scale`` (see :meth:`set_adapters`)."""
        from ..models.lora import load_lora

        load_lora(self.transformer, folder, adapter_name=adapter_name, scale=scale)

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | list[float] | None = None) -> None:
        """Activate the named adapters with their weights (diffusers' ``set_adapters``)."""
        self.transformer.set_adapters(adapter_names, adapter_weights)

    def unload_lora_weights(self) -> None:
        """Remove every adapter from the transformer (its layers become plain again)."""
        if getattr(self.transformer, "peft_config", None):
            self.transformer.unload_lora()

    # -- stages --------------------------------------------------------------------------------

    @staticmethod
    def check_inputs(image: Sequence, mask: Sequence, image_scene: Sequence, num_instances) -> list[int]:
        """Validate instance lists; returns the per-scene instance counts."""
        if not (len(image) == len(mask) == len(image_scene)) or len(image) == 0:
            raise ValueError(f"image, mask and image_scene must be non-empty lists of equal length "
                             f"(got {len(image)}, {len(mask)}, {len(image_scene)})")
        counts = [len(image)] if num_instances is None else (
            [num_instances] * (len(image) // num_instances) if isinstance(num_instances, int) else list(num_instances))
        if sum(counts) != len(image):
            raise ValueError(f"num_instances {num_instances} does not add up to {len(image)} instances")
        for i, (img, msk, scene) in enumerate(zip(image, mask, image_scene)):
            sizes = {np.asarray(x).shape[:2] for x in (img, msk, scene)}
            if len(sizes) != 1:
                raise ValueError(f"instance {i}: image, mask and scene image sizes differ ({sorted(sizes)})")
        return counts

    def encode_condition(self, image: Sequence, mask: Sequence, image_scene: Sequence
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP embeddings ``[B, 1, D1]`` and DINOv2 tokens ``[B, S2, D2]`` (each instance image read once)."""
        embeds_1, embeds_2, _ = self._encode_condition(image, mask, image_scene)
        return embeds_1, embeds_2

    def _encode_condition(self, image: Sequence, mask: Sequence, image_scene: Sequence):
        """:meth:`encode_condition` plus the masks ``[B, 1, h, w]`` as the DINOv2 encoder saw them."""
        clip, dino, masks = resized_instances(self.feature_extractor_1, self.feature_extractor_2, image, mask)
        scenes = resized_scenes(self.feature_extractor_2, image_scene)
        embeds_1 = encode_clip(self.image_encoder_1, normalised_pixels(self.feature_extractor_1, clip))
        embeds_2 = encode_dino(self.image_encoder_2, dino_channels(self.feature_extractor_2, dino, scenes, masks))
        device = self._execution_device
        return (embeds_1.to(device=device, dtype=self.transformer.dtype),
                embeds_2.to(device=device, dtype=self.transformer.dtype), masks)

    def prepare_latents(self, batch: int, num_tokens: int | None, generator, latents: torch.Tensor | None
                        ) -> torch.Tensor:
        """Initial noise ``[B, T, C]`` on the execution device; ``T`` defaults to the transformer
        width (official rule)."""
        channels = self.transformer.config.in_channels
        tokens = num_tokens or self.transformer.config.width
        device = self._execution_device
        if latents is not None:
            if latents.shape[0] != batch or latents.shape[-1] != channels:
                raise ValueError(f"latents must be [{batch}, T, {channels}], got {tuple(latents.shape)}")
            return latents.to(device=device, dtype=self.transformer.dtype)
        return randn_tensor((batch, tokens, channels), generator=generator, device=device,
                            dtype=self.transformer.dtype)

    def decode_dense_grids(self, latents: torch.Tensor, octree_depth: int = 8, progressive: bool = True
                           ) -> list[GridResult]:
        """The official ``decode_latents``: dense ``(2^depth + 1)^3`` grid(s) per instance."""
        sdfs = self.vae.sdf_functions(latents)
        return list(dense_grids(sdfs, resolution=2**octree_depth, progressive=progressive))

    def instance_bounds(self, latents: torch.Tensor, resolution: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Object-frame VAEs: the box each instance is meshed in (its latent's box grown by the
        VAE's margin and two cells, so the field closes inside it; within the scene box), so
        ``resolution`` counts cells across the object. ``None`` for scene-frame VAEs (the
        official model): the scene box."""
        if not self.vae.config.get("object_frame"):
            return None
        boxes = self.vae.latent_box(latents).cpu().numpy()
        half = (1.0 + self.vae.config.object_margin) * boxes[:, 3:]
        half = half * resolution / max(resolution - 4, 1)  # two cells on each side
        low = np.clip(boxes[:, :3] - half, DEFAULT_BOX[0], DEFAULT_BOX[1] - 1e-3)
        high = np.clip(boxes[:, :3] + half, low + 1e-3, DEFAULT_BOX[1])
        return list(zip(low, high))

    @torch.no_grad()
    def extract(self, latents: torch.Tensor, options: ExtractionOptions | None = None,
                postprocess: PostprocessConfig | None = None) -> tuple[list[trimesh.Trimesh | None], int]:
        """Meshes in the scene frame for latents ``[B, T, C]``; returns ``(meshes, sdf_queries)``.
        A mesh made at a fallback iso-level carries it in ``mesh.metadata`` (``FALLBACK_METADATA``)."""
        options = options or ExtractionOptions()
        resolved = self.sampling_defaults.resolve(resolution=options.resolution, fallback_levels=options.fallback_levels)
        coarse_resolution = min(options.coarse_resolution, resolved.resolution)
        sdfs = self.vae.sdf_functions(latents.to(self.vae.dtype), chunk_size=options.chunk_size)
        with self.progress_bar(total=len(sdfs)) as bar:
            meshes, stats = extract_meshes(sdfs, options.method, resolved.resolution, options.smooth,
                                           options.progressive, options.vertex_mapping, coarse_resolution,
                                           on_instance_done=lambda _: bar.update(),
                                           fallback_levels=resolved.fallback_levels,
                                           instance_bounds=self.instance_bounds(latents, resolved.resolution))
        if postprocess is not None:  # keeps each mesh's metadata (the fallback level among it)
            meshes = [postprocess_mesh(m, postprocess) if m is not None else None for m in meshes]
        return meshes, stats.num_queries

    def _instance_inputs(self, image, mask, image_scene, pad: bool, max_instances: int, settings: SamplingDefaults,
                         extraction: ExtractionOptions, tokens: int | None, max_memory_gb: float) -> InstanceInputs:
        """User-level inputs → per-instance inputs (a scene image with its label map, or the lists),
        after checking what the generation will cost against ``max_memory_gb``."""
        def check(height: int, width: int, instances: int, padded_side: int | None) -> None:
            estimate_memory(height, width, instances, settings.resolution, extraction.method, padded_side,
                            tokens or self.transformer.config.width, self.transformer.config.in_channels
                            ).check(max_memory_gb)

        if isinstance(image, (list, tuple)):
            if image_scene is None or mask is None:
                raise ValueError("instance lists need mask= and image_scene= lists of the same length")
            if image:
                check(*np.asarray(image[0]).shape[:2], len(image), None)
            return InstanceInputs(list(range(len(image))), list(image), list(mask), list(image_scene))
        if mask is None:
            raise ValueError("a scene image needs its label map: pipe(image, label_map)")
        return scene_instances(image, mask, pad=pad, max_instances=max_instances, before_allocating=check)

    # -- call ----------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray],
        mask: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray] | None = None,
        image_scene: Sequence[Image.Image | np.ndarray] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        num_instances: int | Sequence[int] | None = None,
        num_latent_tokens: int | None = None,
        output_type: str = "mesh",
        extraction: ExtractionOptions | None = None,
        postprocess: PostprocessConfig | None = None,
        callback_on_step_end: Callable[[MIDIPipeline, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
        *,
        label_map: Image.Image | np.ndarray | None = None,
        seed: int | None = None,
        pad: bool = False,
        mi_layers: LayerSpec = None,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        max_memory_gb: float = DEFAULT_BUDGET_GB,
        control: ControlConfig | dict | str | Path | None = None,
        instance_boxes: torch.Tensor | np.ndarray | None = None,
        use_layout_model: bool = True,
    ) -> MIDIPipelineOutput | tuple:
        """Generate one latent set (and mesh) per instance, all instances of a scene jointly.

        Args:
            image: a scene image (RGB) with ``mask`` (or ``label_map``) its instance label map
                ``[H, W]`` (0 = background); or a list of instance images (object on white) with
                ``mask`` their masks (uint8 0/255) and ``image_scene`` their scene images.
            num_inference_steps, guidance_scale: ``None`` = the folder's ``sampling_defaults``.
            generator: noise generator; or ``seed`` to draw one on the execution device.
            num_instances: instances per scene in list mode: ``None`` = all in one scene, an int N
                for scenes of N, or a list of per-scene counts (mixed sizes in one batch).
            num_latent_tokens: latent tokens per instance (default: transformer width).
            output_type: ``"latent"`` or ``"mesh"``.
            extraction: meshing options (its ``resolution`` ``None`` = the folder's default).
            callback_on_step_end: diffusers' ``fn(pipe, step, t, callback_kwargs) -> dict``; the
                kwargs hold the tensors named in ``callback_on_step_end_tensor_inputs`` (any of
                ``_callback_tensor_inputs``); a returned ``"latents"`` replaces the latents.
            pad: the official image padding (scene-image mode).
            mi_layers: multi-instance blocks for this call only (``None``: as set on the pipeline).
            max_instances, max_memory_gb: refusal limits, checked before anything large is
                allocated (:mod:`midi3d.pipelines.memory`).
            control: instance control (:mod:`midi3d.control`: a config, mapping, YAML path or
                preset name); ``None`` = the folder's ``control_defaults`` (if any), ``"neutral"``
                = none even then.
            instance_boxes: object-frame VAEs only: the 3D box ``[I, 6]`` (centre xyz, half-size
                xyz; scene frame) of each instance, in the order of the output's ``instance_ids``.
                The sampler holds the latents' box channels on them (their forward-noised value at
                every step, the box itself at the end), so the shapes are generated for these boxes.
            use_layout_model: with no ``instance_boxes``, take them from the folder's
                ``layout_model`` when it has one (``False``: the transformer generates the boxes).
        """
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

        if output_type not in ("latent", "mesh"):
            raise ValueError(f"output_type must be 'latent' or 'mesh', got {output_type!r}")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = sorted(set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs))
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown}: not in {self._callback_tensor_inputs}")
        if label_map is not None:
            if mask is not None:
                raise ValueError("pass the label map once: as mask or as label_map")
            mask = label_map
        extraction = extraction or ExtractionOptions()
        settings = self.sampling_defaults.resolve(num_inference_steps, guidance_scale, extraction.resolution,
                                                  extraction.fallback_levels)
        control = load_control(control) if control is not None else self.control_defaults
        inputs = self._instance_inputs(image, mask, image_scene, pad, max_instances, settings, extraction,
                                       num_latent_tokens, max_memory_gb)
        if isinstance(image, (list, tuple)):
            counts = self.check_inputs(inputs.images, inputs.masks, inputs.scenes, num_instances)
        else:  # one scene, its instances cut from one image: consistent by construction
            counts = [len(inputs.ids)]
        if generator is None and seed is not None:
            generator = torch.Generator(device=self._execution_device).manual_seed(seed)

        with self._multi_instance_layers_for_call(mi_layers):
            plan = None
            if control is not None:
                plan = ControlPlan.resolve(control, self.transformer.config.num_layers, self.transformer.mi_layers)
            return self._sample(inputs, counts, settings, generator, latents, num_latent_tokens, output_type,
                                extraction, postprocess, callback_on_step_end, callback_on_step_end_tensor_inputs,
                                return_dict, seed, pad, plan, instance_boxes, use_layout_model)

    def held_boxes(self, instance_boxes, use_layout_model: bool, masks: torch.Tensor, counts: list[int]
                   ) -> tuple[torch.Tensor | None, str]:
        """The boxes ``[I, 6]`` the sampler holds the latents on, and where they come from
        (``"given"``, ``"layout_model"``; ``"generated"`` with ``None``: the transformer's own)."""
        object_frame = bool(self.vae.config.get("object_frame"))
        if instance_boxes is not None:
            if not object_frame:
                raise ValueError("instance_boxes: this pipeline's VAE is scene-frame; its latents hold no box")
            boxes = torch.as_tensor(np.asarray(instance_boxes, dtype=np.float32))
            if boxes.shape != (len(masks), 6):
                raise ValueError(f"instance_boxes must be [{len(masks)}, 6] (centre, half-size per instance), "
                                 f"got {tuple(boxes.shape)}")
            if not torch.isfinite(boxes).all() or (boxes[:, 3:] <= 0).any():
                raise ValueError("instance_boxes: half-sizes must be positive and every value finite")
            return boxes, "given"
        if use_layout_model and object_frame and self.layout_model is not None:
            return self.layout_model(masks.to(self.layout_model.device), counts).float().cpu(), "layout_model"
        return None, "generated"

    @contextlib.contextmanager
    def _multi_instance_layers_for_call(self, layers: LayerSpec):
        if layers is None:
            yield
            return
        previous = list(self.transformer.mi_layers)
        self.set_multi_instance_layers(layers)
        try:
            yield
        finally:
            self.transformer.set_multi_instance_layers(previous)

    def _sample(self, inputs: InstanceInputs, counts: list[int], settings: SamplingDefaults, generator, latents,
                num_latent_tokens, output_type, extraction, postprocess, callback_on_step_end,
                callback_on_step_end_tensor_inputs, return_dict, seed, pad, plan: ControlPlan | None = None,
                instance_boxes=None, use_layout_model: bool = True):
        """encode → timesteps → noise → denoising loop → meshes, for checked inputs and settings."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        cond_1, cond_2, masks = self._encode_condition(inputs.images, inputs.masks, inputs.scenes)
        regions = None
        if plan is not None and plan.needs_image_regions():
            regions = patch_regions(masks, self.image_encoder_2.config.patch_size, cond_2.shape[1]).to(cond_2.device)
        timings["encode"] = time.perf_counter() - start
        do_cfg = settings.guidance > 1.0
        if do_cfg:
            cond_1 = torch.cat([torch.zeros_like(cond_1), cond_1])
            cond_2 = torch.cat([torch.zeros_like(cond_2), cond_2])
            regions = None if regions is None else torch.cat([regions, regions])
        layout = None
        if self.transformer.has_layout_tokens:  # the unconditional half gets no layout, as in training
            layout = mask_boxes(masks).to(cond_2.device)
            layout = torch.cat([torch.zeros_like(layout), layout]) if do_cfg else layout

        boxes, box_source = self.held_boxes(instance_boxes, use_layout_model, masks, counts)

        start = time.perf_counter()
        self.scheduler.set_timesteps(settings.steps, device=self._execution_device)
        latents = self.prepare_latents(len(inputs.images), num_latent_tokens, generator, latents)
        hold = None if boxes is None else BoxHold.start(latents, boxes * self.vae.config.box_scale)
        if hold is not None:
            latents = hold.apply(latents, self.scheduler.sigmas[0])
        attention_kwargs = {"num_instances": counts[0] if len(set(counts)) == 1 else counts}
        timesteps = self.scheduler.timesteps
        for step, t in enumerate(self.progress_bar(timesteps)):
            if plan is not None:
                attention_kwargs["control"] = plan.step(step, len(timesteps), float(t), regions)
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_output = self.transformer(model_input, t.expand(model_input.shape[0]), cond_1, cond_2,
                                            attention_kwargs=attention_kwargs, layout=layout).sample
            velocity = model_output
            if do_cfg:
                uncond, cond = model_output.chunk(2)
                velocity = uncond + settings.guidance * (cond - uncond)
            latents = self.scheduler.step(velocity, t, latents).prev_sample
            if hold is not None:
                latents = hold.apply(latents, self.scheduler.sigmas[step + 1])
            if callback_on_step_end is not None:
                values = {"latents": latents, "model_input": model_input, "model_output": model_output}
                returned = callback_on_step_end(self, step, t, {k: values[k] for k in callback_on_step_end_tensor_inputs})
                latents = (returned or {}).pop("latents", latents)
        timings["denoise"] = time.perf_counter() - start

        meshes, queries = None, 0
        if output_type == "mesh":
            start = time.perf_counter()
            meshes, queries = self.extract(latents, dataclasses.replace(
                extraction, resolution=settings.resolution, fallback_levels=settings.fallback_levels), postprocess)
            timings["decode"] = time.perf_counter() - start
        self.maybe_free_model_hooks()
        if not return_dict:
            return (latents, meshes)
        used = {**settings.as_dict(), "seed": seed, "pad": pad, "mi_layers": list(self.transformer.mi_layers),
                "extraction": extraction.method, "num_latent_tokens": int(latents.shape[1]),
                "control": None if plan is None else plan.config.to_data(), "boxes": box_source}
        return MIDIPipelineOutput(latents=latents, meshes=meshes, instance_ids=inputs.ids,
                                  num_sdf_queries=queries, timings=timings, settings=used)
