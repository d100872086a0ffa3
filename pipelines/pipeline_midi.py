"""``MIDIPipeline``: instance images + masks + scene image → jointly denoised latents → meshes.

Reads and writes the official MIDI-3D pipeline folder layout. Readable top to bottom:
``check_inputs → encode → timesteps → prepare_latents → denoising loop → extract meshes``.
"""

from __future__ import annotations

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

from ..embedded import OFFICIAL_DEFAULTS, SamplingDefaults
from ..geometry.extraction import GridResult, dense_grids, extract_meshes
from ..geometry.postprocess import PostprocessConfig, postprocess_mesh
from ..io.files import write_folder_atomic
from ..models.autoencoders.shape_vae import ShapeVAE
from ..models.checkpoint import (
    CheckpointError,
    load_weights_strict,
    read_json,
    save_weights,
    weight_files,
    write_json,
)
from ..models.image_encoders import (
    build_image_processor,
    clip_pixels,
    dino_pixels,
    encode_clip,
    encode_dino,
)
from ..models.transformers.midi_transformer import MIDITransformer
from ..schedulers.rectified_flow import RectifiedFlowScheduler

logger = logging.getLogger(__name__)

COMPONENTS = ("transformer", "vae", "scheduler", "image_encoder_1", "image_encoder_2",
              "feature_extractor_1", "feature_extractor_2")
MI_LAYERS_KEY = "_midi3d_mi_layers"


@dataclass
class ExtractionOptions:
    """How latents become meshes (see :mod:`midi3d.geometry.extraction`)."""

    method: str = "hierarchical"
    resolution: int | None = None  # None: the pipeline's default (``MIDIPipeline.sampling_defaults``)
    coarse_resolution: int = 32  # clamped to the resolution for grids smaller than 32³
    progressive: bool = True
    smooth: bool = False
    vertex_mapping: str = "official"
    chunk_size: int = 50_000


@dataclass
class MIDIPipelineOutput(BaseOutput):
    """``latents`` ``[B, T, C]``; ``meshes`` one per instance (``None`` if it has no surface)."""

    latents: torch.Tensor
    meshes: list[trimesh.Trimesh | None] | None = None
    num_sdf_queries: int = 0
    timings: dict[str, float] = field(default_factory=dict)


# -- component loading -------------------------------------------------------------------------


def _load_diffusers_model(cls):
    def load(folder: Path, dtype: torch.dtype, allow_pickle: bool):
        config = read_json(folder / "config.json")
        try:
            with torch.device("meta"):
                model = cls.from_config(config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{folder / 'config.json'}: invalid {cls.__name__} config ({err})") from None
        load_weights_strict(model, folder, "diffusion_pytorch_model", dtype, allow_pickle)
        return model.eval()

    return load


def _load_transformers_model(class_name: str):
    def load(folder: Path, dtype: torch.dtype, allow_pickle: bool):
        import transformers

        read_json(folder / "config.json")  # a clear error for a missing or broken config
        weight_files(folder, "model", allow_pickle)  # refuses pickles unless allowed
        cls = getattr(transformers, class_name)
        from transformers.utils import logging as hf_logging

        bar_was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model, info = cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                              use_safetensors=not allow_pickle or None, output_loading_info=True)
        except Exception as err:
            raise CheckpointError(f"{folder}: cannot load {class_name} ({type(err).__name__}: {err})") from None
        finally:
            if bar_was_enabled:
                hf_logging.enable_progress_bar()
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
    return RectifiedFlowScheduler.from_config(read_json(folder / "scheduler_config.json"))


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
    """Multi-instance diffusion for compositional 3D scene generation."""

    model_cpu_offload_seq = "image_encoder_1->image_encoder_2->transformer->vae"
    # What high-level callers (``generate_scene``, ``extract``) use when given no value; the
    # embedded model's loader replaces it with its own.
    sampling_defaults: SamplingDefaults = OFFICIAL_DEFAULTS

    def __init__(self, transformer: MIDITransformer, vae: ShapeVAE, scheduler: RectifiedFlowScheduler,
                 image_encoder_1, image_encoder_2, feature_extractor_1, feature_extractor_2):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler,
                              image_encoder_1=image_encoder_1, image_encoder_2=image_encoder_2,
                              feature_extractor_1=feature_extractor_1, feature_extractor_2=feature_extractor_2)

    # -- loading / saving ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                        mi_layers: Sequence[int] | None = None, allow_pickle: bool = False) -> MIDIPipeline:
        """Load a pipeline folder in the official layout, strictly (no missing/unexpected key).

        Args:
            folder: the pipeline folder (``model_index.json`` and one sub-folder per component).
            dtype: parameter dtype of the networks (float32 on CPU by default).
            mi_layers: multi-instance block indices; ``None`` uses the folder's recorded list
                or the released model's layers.
            allow_pickle: accept ``.bin``/``.ckpt`` weights (``weights_only`` loading).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: pipeline folder not found")
        index = read_json(folder / "model_index.json")
        components = {}
        for name in COMPONENTS:
            entry = index.get(name)
            if not (isinstance(entry, list) and len(entry) == 2):
                raise CheckpointError(f"{folder / 'model_index.json'}: missing component {name!r}")
            class_name = entry[1]
            loader = COMPONENT_LOADERS.get(class_name)
            if loader is None:
                raise CheckpointError(f"{folder / 'model_index.json'}: unsupported class {class_name!r} for {name} "
                                      "(classes named by a checkpoint are never imported)")
            if not (folder / name).is_dir():
                raise CheckpointError(f"{folder / name}: component folder not found")
            components[name] = loader(folder / name, dtype, allow_pickle)
        pipe = cls(**components)
        if mi_layers is None and isinstance(index.get(MI_LAYERS_KEY), list):
            mi_layers = index[MI_LAYERS_KEY]
        pipe.transformer.set_multi_instance_layers(mi_layers)
        return pipe.to(device)

    def save_pretrained(self, folder: str | Path, **_: object) -> None:
        """Write the official layout (official class names) atomically: a temporary sibling folder
        is filled, then swapped in, so an existing folder is never left half-written."""
        write_folder_atomic(Path(folder), self._write_folder)

    def _write_folder(self, folder: Path) -> None:
        import diffusers

        index = {"_class_name": "MIDIPipeline", "_diffusers_version": diffusers.__version__,
                 MI_LAYERS_KEY: list(self.transformer.mi_layers)}
        for name in ("transformer", "vae"):
            model = getattr(self, name)
            config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
            config.update(_class_name=model.official_class_name, _diffusers_version=diffusers.__version__)
            write_json(folder / name / "config.json", config)
            save_weights(model, folder / name, "diffusion_pytorch_model")
            index[name] = [model.official_module, model.official_class_name]
        config = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
        config.update(_class_name=self.scheduler.official_class_name, _diffusers_version=diffusers.__version__)
        write_json(folder / "scheduler" / "scheduler_config.json", config)
        index["scheduler"] = [self.scheduler.official_module, self.scheduler.official_class_name]
        for name in ("image_encoder_1", "image_encoder_2"):
            encoder = getattr(self, name)
            encoder.save_pretrained(folder / name, safe_serialization=True)
            index[name] = ["transformers", type(encoder).__name__]
        for name, kind in (("feature_extractor_1", "clip"), ("feature_extractor_2", "bit")):
            config = getattr(self, name).to_dict()
            config["image_processor_type"] = SAVED_PROCESSOR_NAMES[kind]
            write_json(folder / name / "preprocessor_config.json", config)
            index[name] = ["transformers", SAVED_PROCESSOR_NAMES[kind]]
        write_json(folder / "model_index.json", index)

    def to_dtype(self, dtype: torch.dtype) -> MIDIPipeline:
        """Cast every network to ``dtype`` (diffusers' ``to(dtype=)`` warns spuriously here)."""
        for name in ("transformer", "vae", "image_encoder_1", "image_encoder_2"):
            torch.nn.Module.to(getattr(self, name), dtype=dtype)
        return self

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
        """CLIP embeddings ``[B, 1, D1]`` and DINOv2 tokens ``[B, S2, D2]``."""
        embeds_1 = encode_clip(self.image_encoder_1, clip_pixels(self.feature_extractor_1, image))
        embeds_2 = encode_dino(self.image_encoder_2, dino_pixels(self.feature_extractor_2, image, image_scene, mask))
        return embeds_1.to(self.transformer.dtype), embeds_2.to(self.transformer.dtype)

    def prepare_latents(self, batch: int, num_tokens: int | None, generator, latents: torch.Tensor | None
                        ) -> torch.Tensor:
        """Initial noise ``[B, T, C]``; ``T`` defaults to the transformer width (official rule)."""
        channels = self.transformer.config.in_channels
        tokens = num_tokens or self.transformer.config.width
        if latents is not None:
            if latents.shape[0] != batch or latents.shape[-1] != channels:
                raise ValueError(f"latents must be [{batch}, T, {channels}], got {tuple(latents.shape)}")
            return latents.to(device=self.device, dtype=self.transformer.dtype)
        return randn_tensor((batch, tokens, channels), generator=generator, device=self.device,
                            dtype=self.transformer.dtype)

    def decode_dense_grids(self, latents: torch.Tensor, octree_depth: int = 8, progressive: bool = True
                           ) -> list[GridResult]:
        """The official ``decode_latents``: dense ``(2^depth + 1)^3`` grid(s) per instance."""
        sdfs = self.vae.sdf_functions(latents)
        return list(dense_grids(sdfs, resolution=2**octree_depth, progressive=progressive))

    @torch.no_grad()
    def extract(self, latents: torch.Tensor, options: ExtractionOptions | None = None,
                postprocess: PostprocessConfig | None = None) -> tuple[list[trimesh.Trimesh | None], int]:
        """Meshes in the scene frame for latents ``[B, T, C]``; returns ``(meshes, sdf_queries)``."""
        options = options or ExtractionOptions()
        resolution = options.resolution or self.sampling_defaults.resolution
        coarse_resolution = min(options.coarse_resolution, resolution)
        sdfs = self.vae.sdf_functions(latents.to(self.vae.dtype), chunk_size=options.chunk_size)
        with self.progress_bar(total=len(sdfs)) as bar:
            meshes, stats = extract_meshes(sdfs, options.method, resolution, options.smooth,
                                           options.progressive, options.vertex_mapping, coarse_resolution,
                                           on_instance_done=lambda _: bar.update())
        if postprocess is not None:
            meshes = [postprocess_mesh(m, postprocess) if m is not None else None for m in meshes]
        return meshes, stats.num_queries

    # -- call ----------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: Sequence[Image.Image | np.ndarray],
        mask: Sequence[Image.Image | np.ndarray],
        image_scene: Sequence[Image.Image | np.ndarray],
        num_inference_steps: int = 50,
        guidance_scale: float = 7.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        num_instances: int | Sequence[int] | None = None,
        num_latent_tokens: int | None = None,
        output_type: str = "mesh",
        extraction: ExtractionOptions | None = None,
        postprocess: PostprocessConfig | None = None,
        callback_on_step_end: Callable[[MIDIPipeline, int, torch.Tensor, dict], None] | None = None,
        return_dict: bool = True,
    ) -> MIDIPipelineOutput | tuple:
        """Generate one latent set (and mesh) per instance.

        Args:
            image: instance images (object on white), one per instance, scenes consecutive.
            mask: instance masks (uint8, 0/255).
            image_scene: the scene image of each instance.
            num_instances: instances per scene: ``None`` = all in one scene, an int N for
                scenes of N, or a list of per-scene counts (mixed sizes in one batch).
            num_latent_tokens: latent tokens per instance (default: transformer width).
            output_type: ``"latent"`` or ``"mesh"``.
            callback_on_step_end: called as ``fn(pipe, step, t, {"model_input", "model_output",
                "latents"})`` after every step.
        """
        if output_type not in ("latent", "mesh"):
            raise ValueError(f"output_type must be 'latent' or 'mesh', got {output_type!r}")
        counts = self.check_inputs(image, mask, image_scene, num_instances)
        batch = len(image)
        do_cfg = guidance_scale > 1.0

        timings: dict[str, float] = {}
        start = time.perf_counter()
        cond_1, cond_2 = self.encode_condition(image, mask, image_scene)
        timings["encode"] = time.perf_counter() - start
        if do_cfg:
            cond_1 = torch.cat([torch.zeros_like(cond_1), cond_1])
            cond_2 = torch.cat([torch.zeros_like(cond_2), cond_2])

        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = self.prepare_latents(batch, num_latent_tokens, generator, latents)
        attention_kwargs = {"num_instances": counts[0] if len(set(counts)) == 1 else counts}

        start = time.perf_counter()
        for step, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            timestep = t.expand(model_input.shape[0])
            velocity = self.transformer(model_input, timestep, cond_1, cond_2,
                                        attention_kwargs=attention_kwargs).sample
            model_output = velocity
            if do_cfg:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(velocity, t, latents).prev_sample
            if callback_on_step_end is not None:
                callback_on_step_end(self, step, t, {"model_input": model_input, "model_output": model_output,
                                                     "latents": latents})

        timings["denoise"] = time.perf_counter() - start

        meshes, queries = (None, 0)
        if output_type == "mesh":
            start = time.perf_counter()
            meshes, queries = self.extract(latents, extraction, postprocess)
            timings["decode"] = time.perf_counter() - start
        self.maybe_free_model_hooks()
        if not return_dict:
            return (latents, meshes)
        return MIDIPipelineOutput(latents=latents, meshes=meshes, num_sdf_queries=queries, timings=timings)
