"""A tiny random FLUX pipeline built from configs (diffusers' test sizes; word-level tokenizers
built locally), saved as a local pipeline folder."""

from __future__ import annotations

from pathlib import Path

WORDS = ("a the cat dog ball brown red white fluffy sofa lamp rug room living with and on of in behind "
         "front green grass , .").split()


def word_tokenizer(max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def tiny_vae():
    """A 4-level (scale factor 8) random AutoencoderKL with FLUX's latent shift and scale."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 8, 8], latent_channels=4,
                         layers_per_block=1, norm_num_groups=8, sample_size=32, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def build_tiny_flux(folder: Path, seed: int = 0, depth: bool = False) -> Path:
    """A tiny random FLUX pipeline folder; ``depth``: a ``FluxControlPipeline`` (FLUX-Depth's
    layout: the transformer takes the latents and the encoded control image, 2 × 16 channels)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlPipeline, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=32 if depth else 16, out_channels=16 if depth else None,
                                         num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, vocab_size=64, max_position_embeddings=77,
                                        projection_dim=32, eos_token_id=1, pad_token_id=0, bos_token_id=0))
    t5 = T5EncoderModel(T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=64,
                                 relative_attention_num_buckets=8))
    vae = tiny_vae()
    kind = FluxControlPipeline if depth else FluxPipeline
    pipe = kind(scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=clip, tokenizer=word_tokenizer(77),
                        text_encoder_2=t5, tokenizer_2=word_tokenizer(64), vae=vae, transformer=transformer)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sd3(folder: Path, seed: int = 0) -> Path:
    """A tiny random SD3 pipeline (two CLIP encoders with projections, T5, a 2-block transformer)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
                                        pos_embed_max_size=32)
    clip = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=64,
                max_position_embeddings=77, projection_dim=32, eos_token_id=1, pad_token_id=0, bos_token_id=0)
    t5 = T5EncoderModel(T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=64,
                                 relative_attention_num_buckets=8))
    vae = tiny_vae()
    pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), transformer=transformer, vae=vae,
                                    text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**clip)),
                                    tokenizer=word_tokenizer(77),
                                    text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**clip)),
                                    tokenizer_2=word_tokenizer(77), text_encoder_3=t5, tokenizer_3=word_tokenizer(64))
    pipe.save_pretrained(folder)
    return folder
