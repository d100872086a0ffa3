"""From a layout to a scene image: the layout format and layout controls for image diffusion
transformers (diffusers' FLUX), set through diffusers' attention-processor API."""

from .layout import MAX_INSTANCES, Layout, LayoutInstance, layout_from_data, load_layout

__all__ = ["MAX_INSTANCES", "Layout", "LayoutInstance", "layout_from_data", "load_layout"]
