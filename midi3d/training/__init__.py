"""Training: the shape VAE, the multi-instance diffusion transformer, LoRA fine-tuning.

``midi3d train vae|dit`` run these on accelerate; checkpoints are pipeline folders in the
official layout (loadable by :meth:`MIDIPipeline.from_pretrained`) plus a resumable state.
"""
