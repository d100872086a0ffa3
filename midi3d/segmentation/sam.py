"""The ``sam`` back end: segment-anything with a local checkpoint (never downloaded).

The architecture (vit_b / vit_l / vit_h or a custom size) is read from the checkpoint's
tensor shapes, not guessed from its file name. Automatic mode keeps SAM's proposals whose
area lies between ``min_area`` and ``max_area`` of the image (so background-sized regions go),
paints them largest first so that smaller objects stay visible, and caps their number.
Prompted mode makes one instance per point and per box, in the order given; a box prompt's
mask is clipped to its box.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..models.checkpoint import CheckpointError, check_state_dict
from .base import relabel

logger = logging.getLogger(__name__)

CHECKPOINT_ENV = "MIDI3D_SAM_CHECKPOINT"
HOW_TO_GET = (f"download a checkpoint (e.g. sam_vit_b_01ec64.pth) from the segment-anything release page, then pass "
              f"--sam-checkpoint PATH or set {CHECKPOINT_ENV}=PATH; .pth files also need --trust-pickle")
KNOWN_TYPES = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}


def resolve_checkpoint(path: str | Path | None) -> Path:
    """The checkpoint to use: ``path``, else ``$MIDI3D_SAM_CHECKPOINT``; a clear error when neither exists."""
    chosen = path or os.environ.get(CHECKPOINT_ENV)
    if not chosen:
        raise CheckpointError(f"no SAM checkpoint configured: {HOW_TO_GET}")
    chosen = Path(chosen)
    if not chosen.is_file():
        raise CheckpointError(f"{chosen}: SAM checkpoint not found ({HOW_TO_GET})")
    return chosen


def read_sam_state(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """SAM weights from safetensors, or (only with ``allow_pickle``) a ``.pth`` via ``weights_only``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if not allow_pickle:
            raise CheckpointError(f"{path}: pickled checkpoints are refused by default; pass --trust-pickle to load "
                                  "it with torch.load(weights_only=True), or convert it to safetensors")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("model", state) if isinstance(state, dict) else state
    except CheckpointError:
        raise
    except Exception as err:  # safetensors / torch raise several unrelated types for bad files
        raise CheckpointError(f"{path}: unreadable SAM checkpoint ({type(err).__name__}: {err})") from None


def sam_architecture(state: dict[str, torch.Tensor], source: Path) -> dict:
    """Constructor sizes read from tensor shapes."""
    try:
        embed, _, patch, _ = state["image_encoder.patch_embed.proj.weight"].shape
        grid = state["image_encoder.pos_embed"].shape[1]
        depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
        head_dim = state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
        rel_sizes = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] for i in range(depth)]
        global_blocks = [i for i, size in enumerate(rel_sizes) if size == 2 * grid - 1]
        windowed = [size for size in rel_sizes if size != 2 * grid - 1]
        decoder_depth = len({k.split(".")[3] for k in state if k.startswith("mask_decoder.transformer.layers.")})
        iou_depth = len({k.split(".")[3] for k in state if k.startswith("mask_decoder.iou_prediction_head.layers.")})
        return {
            "type": KNOWN_TYPES.get((int(embed), depth), "custom"), "embed_dim": int(embed), "depth": depth,
            "num_heads": int(embed) // int(head_dim), "patch_size": int(patch), "img_size": int(grid * patch),
            "global_attn_indexes": global_blocks, "window_size": (windowed[0] + 1) // 2 if windowed else 14,
            "mlp_ratio": state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / int(embed),
            "out_chans": int(state["image_encoder.neck.0.weight"].shape[0]),
            "mask_in_chans": int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
            "decoder_depth": decoder_depth,
            "decoder_mlp_dim": int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
            "iou_head_depth": iou_depth,
            "iou_head_hidden_dim": int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
            "multimask_outputs": int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
        }
    except (KeyError, IndexError) as err:
        raise CheckpointError(f"{source}: not a segment-anything checkpoint (missing or odd tensor {err})") from None


def build_sam(arch: dict):
    """A segment-anything ``Sam`` of the given sizes (random weights)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch["img_size"] // arch["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch["depth"], embed_dim=arch["embed_dim"], img_size=arch["img_size"], mlp_ratio=arch["mlp_ratio"],
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch["num_heads"],
            patch_size=arch["patch_size"], qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=arch["global_attn_indexes"], window_size=arch["window_size"],
            out_chans=arch["out_chans"]),
        prompt_encoder=PromptEncoder(embed_dim=arch["out_chans"], image_embedding_size=(grid, grid),
                                     input_image_size=(arch["img_size"], arch["img_size"]),
                                     mask_in_chans=arch["mask_in_chans"]),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch["multimask_outputs"],
            transformer=TwoWayTransformer(depth=arch["decoder_depth"], embedding_dim=arch["out_chans"],
                                          mlp_dim=arch["decoder_mlp_dim"], num_heads=8),
            transformer_dim=arch["out_chans"], iou_head_depth=arch["iou_head_depth"],
            iou_head_hidden_dim=arch["iou_head_hidden_dim"]),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(path: str | Path | None, allow_pickle: bool = False, device: str = "cpu"):
    """Load a SAM checkpoint strictly; returns ``(sam, architecture)``."""
    source = resolve_checkpoint(path)
    state = read_sam_state(source, allow_pickle)
    arch = sam_architecture(state, source)
    sam = build_sam(arch)
    check_state_dict(sam, state, source)
    sam.load_state_dict(state, strict=True)
    return sam.to(device).eval(), arch


class SamSegmenter:
    """Automatic proposals, or one instance per point/box prompt (pixel coordinates ``x, y``)."""

    name = "sam"

    def __init__(self, checkpoint: str | Path | None = None, allow_pickle: bool = False, device: str = "cpu",
                 points: list[tuple[float, float]] | None = None,
                 boxes: list[tuple[float, float, float, float]] | None = None, points_per_side: int = 32,
                 pred_iou_thresh: float = 0.86, stability_score_thresh: float = 0.92, min_area: float = 0.001,
                 max_area: float = 0.5, max_instances: int = 32):
        self.sam, self.architecture = load_sam(checkpoint, allow_pickle, device)
        self.points, self.boxes = list(points or []), list(boxes or [])
        self.points_per_side = points_per_side
        self.pred_iou_thresh, self.stability_score_thresh = pred_iou_thresh, stability_score_thresh
        self.min_area, self.max_area, self.max_instances = min_area, max_area, max_instances

    @torch.no_grad()
    def segment(self, rgb: np.ndarray) -> np.ndarray:
        if self.points or self.boxes:
            return self._prompted(rgb)
        return self._automatic(rgb)

    def _automatic(self, rgb: np.ndarray) -> np.ndarray:
        from segment_anything import SamAutomaticMaskGenerator

        generator = SamAutomaticMaskGenerator(self.sam, points_per_side=self.points_per_side,
                                              pred_iou_thresh=self.pred_iou_thresh,
                                              stability_score_thresh=self.stability_score_thresh)
        size = rgb.shape[0] * rgb.shape[1]
        proposals = [p for p in generator.generate(rgb) if self.min_area * size <= p["area"] <= self.max_area * size]
        proposals.sort(key=lambda p: p["area"], reverse=True)
        labels = np.zeros(rgb.shape[:2], np.int64)
        for index, proposal in enumerate(proposals, start=1):  # largest first: smaller ones stay on top
            labels[proposal["segmentation"]] = index
        areas = np.bincount(labels.ravel(), minlength=len(proposals) + 1)
        visible = [i for i in range(1, len(proposals) + 1) if areas[i] >= self.min_area * size]
        visible = sorted(visible, key=lambda i: -areas[i])[: self.max_instances]
        return relabel(np.where(np.isin(labels, visible), labels, 0))

    def _prompted(self, rgb: np.ndarray) -> np.ndarray:
        from segment_anything import SamPredictor

        predictor = SamPredictor(self.sam)
        predictor.set_image(rgb)
        masks = []
        for x, y in self.points:
            candidates, scores, _ = predictor.predict(point_coords=np.array([[x, y]], np.float32),
                                                      point_labels=np.array([1]), multimask_output=True)
            masks.append(candidates[int(np.argmax(scores))])
        for box in self.boxes:
            candidates, _, _ = predictor.predict(box=np.array(box, np.float32), multimask_output=False)
            inside = np.zeros(rgb.shape[:2], bool)  # a box prompt's instance never leaves its box
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
            masks.append(candidates[0] & inside)
        labels = np.zeros(rgb.shape[:2], np.int64)
        for index in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
            labels[masks[index]] = index + 1  # prompt order gives the ids; smaller masks painted last
        missing = [i + 1 for i in range(len(masks)) if not (labels == i + 1).any()]
        if missing:
            logger.warning("SAM returned no visible mask for prompt(s) %s", ", ".join(map(str, missing)))
        return labels
