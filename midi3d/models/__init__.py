"""Model components: the multi-instance transformer, the shape VAE, attention processors."""

from .autoencoders.shape_vae import ShapeVAE
from .transformers.midi_transformer import MIDITransformer, default_mi_layers

__all__ = ["MIDITransformer", "ShapeVAE", "default_mi_layers"]
