"""A tiny, offline Wan2.1 for tests: random weights built from configs, no hub access.

`tiny_wan_transformer()` alone, or `tiny_wan_pipeline()` with a tiny AutoencoderKLWan, a small UMT5 encoder,
a tokenizer built locally with `tokenizers` (word-level, fixed vocabulary) and the flow-matching UniPC scheduler
Wan2.1 ships with. Default video: 9 frames of 64x96 -> latent 3x8x12 -> 3x4x6 = 72 patch tokens
(small enough for a quick VAE decode on the CPU).
"""

from __future__ import annotations

import torch

__all__ = [
    "TINY_TRANSFORMER_CONFIG",
    "TINY_VIDEO",
    "tiny_tokenizer",
    "tiny_wan_pipeline",
    "tiny_wan_transformer",
]

# 9 frames of 64x96 pixels -> latent 3x8x12 -> 72 patch tokens.
TINY_VIDEO = dict(num_frames=9, height=64, width=96)
_WORDS = ("a cat dog runs jumps on the in grass beach red blue small big slowly quickly video of and "
          "blurry low quality static").split()

TINY_TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=64,
)


def tiny_wan_transformer(seed: int = 0, **overrides):
    """A WanTransformer3DModel with TINY_TRANSFORMER_CONFIG (+ overrides) and seeded random weights."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**TINY_TRANSFORMER_CONFIG, **overrides})
    # Default init leaves some projections at zero (e.g. output heads); randomise everything so a wrong
    # attention shows up in the output.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def tiny_tokenizer():
    """A word-level fast tokenizer over a fixed vocabulary, built locally (no hub), appending </s> like T5."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def tiny_wan_pipeline(seed: int = 0, scheduler: str = "unipc"):
    """A WanPipeline of tiny random components (float32, CPU). `scheduler`: "unipc" (Wan2.1's default, flow
    sigmas, shift 3) or "euler" (FlowMatchEulerDiscreteScheduler)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gelu_new",
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    ).eval()
    z_dim = TINY_TRANSFORMER_CONFIG["in_channels"]
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
    ).eval()
    if scheduler == "unipc":
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    elif scheduler == "euler":
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    else:
        raise ValueError(f"scheduler must be 'unipc' or 'euler', got {scheduler!r}")
    transformer = tiny_wan_transformer(seed=seed + 1)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=sched,
                       transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
