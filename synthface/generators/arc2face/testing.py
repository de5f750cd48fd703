"""Arc2Face test and benchmark helpers: the tiny model written in the published layouts
(`save_tiny_published_layout`, so the loading code runs on real files), a full-size random model
(`full_size_arc2face_pipeline`) and `measure_throughput`. The tiny model itself is `tiny`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from synthface.generators.arc2face.tiny import (
    BOS,
    EOS,
    SD15_SCHEDULE,
    tiny_components,
    tiny_tokenizer,
    tiny_vocab_and_merges,
)


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

    from synthface.generators.arc2face.pipeline import Arc2FacePipeline, default_scheduler

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
