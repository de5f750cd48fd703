"""Arc2Face's tiny random model: a complete `Arc2FacePipeline` (stock diffusers/transformers classes,
random weights, 32 px output) that takes 512-d ID vectors like the real model, built with no network.
The family loads it as "tiny" (smoke runs, tests); `synthface.generators.arc2face.testing` writes it to disk in
the published layouts for the loading tests.
"""

from __future__ import annotations

import torch

# Words the tiny vocabulary spells as whole tokens; everything else falls back to letters.
_WORDS = ("photo", "of", "a", "id", "person", "face", "man", "woman")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

TEXT_HIDDEN = 512  # at least the ArcFace width, so a 512-d ID vector fits a token embedding
TINY_SIZE = 32  # default image side in pixels


def tiny_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A CLIP-style byte-level BPE vocabulary: letters, whole-word tokens for the prompt, specials."""
    tokens = list(_LETTERS) + [c + "</w>" for c in _LETTERS]
    merges: list[str] = []
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right; every intermediate is a vocabulary entry
            merged = parts[0] + parts[1]
            merges.append(f"{parts[0]} {parts[1]}")
            if merged not in tokens:
                tokens.append(merged)
            parts = [merged, *parts[2:]]
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, list(dict.fromkeys(merges))


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab_and_merges()
    pairs = [tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=77)


def _text_encoder(vocab_size: int, bos: int, eos: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return CLIPTextModel(config).eval()


def _unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TINY_SIZE // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=2,
        norm_num_groups=4,
    ).eval()


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(4, 8),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=TINY_SIZE,
    ).eval()


# Stable Diffusion 1.5's noise schedule (its scheduler_config.json, minus the class name).
SD15_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
    prediction_type="epsilon",
)


def tiny_components(seed: int = 0) -> dict:
    """Random tiny vae, text_encoder, tokenizer, unet, scheduler, reproducible from `seed`."""
    from synthface.generators.arc2face.pipeline import default_scheduler

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        text_encoder = _text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
        unet = _unet()
        vae = _vae()
    scheduler = default_scheduler(SD15_SCHEDULE)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def tiny_arc2face_pipeline(seed: int = 0):
    """A complete `Arc2FacePipeline` with tiny random weights: 512-d IDs in, 32x32 images out."""
    from synthface.generators.arc2face.pipeline import Arc2FacePipeline

    pipe = Arc2FacePipeline(**tiny_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe
