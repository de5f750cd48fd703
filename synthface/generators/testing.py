"""Tiny random Arc2Face components in the real layouts, built with no network.

`tiny_arc2face_pipeline()` is a complete `Arc2FacePipeline` (stock diffusers/transformers classes,
random weights, 32 px output) that takes 512-d ID vectors like the real model, for tests and smoke
runs. `save_tiny_published_layout()` writes the same components to disk the way the Hugging Face
repos ship them (`arc2face/` UNet, `encoder/` CLIPTextModel, and an SD 1.5 style base with `vae/`,
`tokenizer/`, `scheduler/`), so the loading code is exercised on real files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

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
    from synthface.pipelines.arc2face import default_scheduler

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
    from synthface.pipelines.arc2face import Arc2FacePipeline

    pipe = Arc2FacePipeline(**tiny_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_published_layout(
    root: str | Path,
    *,
    seed: int = 0,
    base: str | Path | None = None,
    encoder_format: str = "safetensors",
) -> Path:
    """Write tiny components to `root` as the Arc2Face repo ships them; returns `root`.

    `root/arc2face/` holds the UNet and `root/encoder/` the text encoder, with keys named as
    transformers 4.x saved them (`text_model.` prefix) in `model.safetensors`, or in
    `pytorch_model.bin` when `encoder_format="bin"` (as the published encoder is). The SD 1.5 style
    base (`vae/`, `tokenizer/` as vocab.json + merges.txt, `scheduler/` as PNDM config,
    `model_index.json`) goes to `base`, or into `root` itself when `base` is None.
    """
    from safetensors.torch import save_file

    root = Path(root)
    base_dir = Path(base) if base is not None else root
    parts = tiny_components(seed)
    parts["unet"].save_pretrained(root / "arc2face")

    encoder_dir = root / "encoder"
    encoder_dir.mkdir(parents=True, exist_ok=True)
    text_encoder = parts["text_encoder"]
    text_encoder.config.save_pretrained(encoder_dir)
    state = {f"text_model.{k}": v.contiguous() for k, v in text_encoder.state_dict().items()}
    if encoder_format == "safetensors":
        save_file(state, str(encoder_dir / "model.safetensors"), metadata={"format": "pt"})
    elif encoder_format == "bin":
        torch.save(state, encoder_dir / "pytorch_model.bin")
    else:
        raise ValueError(f"encoder_format must be 'safetensors' or 'bin', not {encoder_format!r}")

    parts["vae"].save_pretrained(base_dir / "vae")
    tok_dir = base_dir / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocab_and_merges()
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (tok_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS})
    )
    (tok_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                    "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS})
    )
    sched_dir = base_dir / "scheduler"
    sched_dir.mkdir(parents=True, exist_ok=True)
    (sched_dir / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "PNDMScheduler", "skip_prk_steps": True, **SD15_SCHEDULE})
    )
    (base_dir / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
                    "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"]})
    )
    return root


def full_size_arc2face_pipeline(*, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """Arc2Face at full size with random weights: SD 1.5's UNet/VAE, CLIP ViT-L/14 text encoder.

    For speed and memory measurements without the weights (output is noise). The tokenizer is the
    tiny one (prompt handling costs nothing at this scale). Built directly on `device`; pass
    device="meta" to inspect shapes without allocating.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from synthface.pipelines.arc2face import Arc2FacePipeline, default_scheduler

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=max(len(tokenizer), 49408), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        ))
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the defaults are SD 1.x's
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
        )
    parts = [m.to(dtype=dtype).eval() for m in (text_encoder, unet, vae)] if str(device) != "meta" else [text_encoder, unet, vae]
    return Arc2FacePipeline(vae=parts[2], text_encoder=parts[0], tokenizer=tokenizer, unet=parts[1],
                            scheduler=default_scheduler(SD15_SCHEDULE))


def measure_throughput(pipe, batch_sizes=(1, 4, 8, 16), *, steps: int = 25, guidance: float = 3.0,
                       size: int | None = None, repeats: int = 2) -> list[dict]:
    """Images per second and peak GPU memory per batch size (one warm-up call each)."""
    import time

    rows = []
    for batch in batch_sizes:
        ids = torch.nn.functional.normalize(torch.randn(batch, pipe.config.id_dim), dim=1)
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        call = dict(id_embeds=ids, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                    height=size, width=size, output_type="np")
        pipe(**call)  # warm-up
        cuda = torch.cuda.is_available() and pipe._execution_device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(repeats):
            pipe(**call)
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats
        rows.append({"batch": batch, "seconds_per_call": seconds, "images_per_s": batch / seconds,
                     "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None})
    return rows


# ---------------------------------------------------------------------------------------- Vec2Face

#: Keys whose deterministic test weights are 0.02 z (position tables), per VEC2FACE.md's rule.
_POSITION_KEYS = ("decoder_pos_embed_learned", "token_emb.position_embeddings.weight")


def deterministic_tensor(key: str, shape) -> torch.Tensor:
    """VEC2FACE.md's deterministic weight for `key`: z ~ randn seeded by crc32(key); 1-D: 1 + 0.1z
    for a "weight" else 0.1z; position tables 0.02z; `position_ids` arange; others z / sqrt(fan-in)."""
    import zlib

    shape = tuple(shape)
    if key.endswith("position_ids"):
        return torch.arange(math.prod(shape)).reshape(shape)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))
    if key in _POSITION_KEYS:
        return 0.02 * z
    if len(shape) == 1:
        return 1 + 0.1 * z if key.endswith("weight") else 0.1 * z
    return z / math.sqrt(math.prod(shape) / shape[0])


def deterministic_state_dict(module_or_shapes) -> dict[str, torch.Tensor]:
    """Every entry of a module's state dict (or of a {key: shape} mapping) by `deterministic_tensor`."""
    if isinstance(module_or_shapes, torch.nn.Module):
        module_or_shapes = {k: v.shape for k, v in module_or_shapes.state_dict().items()}
    return {k: deterministic_tensor(k, shape) for k, shape in module_or_shapes.items()}


#: The tiny Vec2Face: every published module and code path, 64-wide transformer, 32-channel decoder.
TINY_VEC2FACE = dict(embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
                     decoder_channels=32, num_res_blocks=1, z_channels=32)


def tiny_vec2face_pipeline(*, plus: bool = False, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A `Vec2FacePipeline` at `TINY_VEC2FACE` size with `deterministic_tensor` weights (512-d IDs in,
    112x112 out); `plus=True` adds rank-4 LoRA adapters (alpha 32) and a pose model, as Vec2Face+'s pose file."""
    from synthface.pipelines.vec2face import Vec2FacePipeline
    from synthface.pipelines.vec2face_model import PoseConditionModel, Vec2FaceModel

    return vec2face_pipeline_from_rule(Vec2FaceModel(**TINY_VEC2FACE, lora_rank=4 if plus else 0),
                                       PoseConditionModel(dim=TINY_VEC2FACE["embed_dim"]) if plus else None,
                                       device=device, dtype=dtype, pipeline_class=Vec2FacePipeline)


def full_size_vec2face_pipeline(*, plus: bool = False, device: str | torch.device = "cpu",
                                dtype: torch.dtype = torch.float32):
    """The published architecture (174M parameters; with `plus`, Vec2Face+'s LoRA and pose model)
    with `deterministic_tensor` weights: the golden-value model of VEC2FACE.md. Output is not a face."""
    from synthface.pipelines.vec2face import Vec2FacePipeline
    from synthface.pipelines.vec2face_model import PoseConditionModel, Vec2FaceModel

    with torch.device("meta"):
        vec2face = Vec2FaceModel(lora_rank=8 if plus else 0)
        pose_model = PoseConditionModel() if plus else None
    return vec2face_pipeline_from_rule(vec2face, pose_model, device=device, dtype=dtype, pipeline_class=Vec2FacePipeline)


def vec2face_pipeline_from_rule(vec2face, pose_model, *, device, dtype, pipeline_class):
    """Fill the modules with `deterministic_state_dict` weights (strict) and wrap them in a pipeline."""
    for module in (vec2face, pose_model):
        if module is not None:
            module.load_state_dict(deterministic_state_dict(module), strict=True, assign=True)
            module.eval()
    pipe = pipeline_class(vec2face=vec2face, pose_model=pose_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device) if pipe.dtype == dtype else pipe.to(device=device, dtype=dtype)
