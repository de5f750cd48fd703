"""Find and load IDiff-Face-family models (IDiff-Face, UIFace, IDperturb, NegFaceDiff): the published
`.ckpt` files in their four key layouts and folders, the LDM VQ-f4 first stage beside them, or a
converted safetensors folder.

The published files (IDIFF.md, Checkpoints):

- UIFace's CASIA-WebFace model: one `ema_averaged_model_<step>.ckpt`, keys `module.eps_model.<unet key>`
  plus the DDPM wrapper's eight `module.<buffer>`s;
- IDiff-Face's (and NegFaceDiff's) `trained_models/<name>/checkpoints/ema_averaged_model.ckpt`
  (`.hydra/config.yaml` beside `checkpoints/`, optional), keys `eps_model.<unet key>` plus the buffers,
  no `empty_context_embedding` (the IDiff-Face variant: its empty context is zero);
- bare UNet names, or `module.<unet key>` alone;
- the first stage: `first_stage_decoder_state_dict.pt` (`decoder.*`, `quantize.embedding.weight`,
  `post_quant_conv.*`) and, optionally, `first_stage_encoder_state_dict.pt` (`encoder.*`, `quant_conv.*`),
  which IDiff-Face keeps under `models/autoencoder/`.

Every file is a pickle, read with torch's weights_only loader and only on the pickle opt-in. Loading is
strict: a key that is missing, unexpected or of another shape is named, and the schedule buffers must be
the published schedule's (`synthface.generators.idiff.schedule.ddpm_buffers`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from synthface.errors import FileFormatError, InvalidInputError, ModelNotFoundError
from synthface.generators._checks import check_device, check_dtype

#: Published models `load_idiff` accepts by name (registry entries of synthface.weights, placed by hand).
IDIFF_MODELS = ("idiff-uiface-casia", "idiff-ffhq-cpd25", "idiff-ffhq-cpd50", "negfacediff-casia-cpd25")
#: The random test model: the published architecture at `TINY_UNET` size, built in (no file).
IDIFF_TINY = "idiff-tiny"
#: The registry entry of the first stage, and its two files.
FIRST_STAGE_MODEL = "idiff-vq-f4"
DECODER_FILE, ENCODER_FILE = "first_stage_decoder_state_dict.pt", "first_stage_encoder_state_dict.pt"
#: The diffusion checkpoints a folder may hold (UIFace's `_<step>` suffix, IDiff-Face's none).
CHECKPOINT_GLOB, IDIFF_CHECKPOINT = "ema_averaged_model*.ckpt", "ema_averaged_model.ckpt"
#: Heads take contiguous slices of this many channels in every published config (no checkpoint stores it).
PUBLISHED_HEAD_DIM = 32
#: The learned empty context's key; a checkpoint without it is the IDiff-Face variant (zero empty context).
EMPTY_KEY = "empty_context_embedding"
#: The key layouts, by the prefix the UNet keys carry.
LAYOUTS = ("bare", "eps_model.", "module.eps_model.", "module.")
#: How far the schedule buffers may be from `ddpm_buffers()` (relative; the published ones match to ~1e-7).
BUFFER_RTOL = 1e-4
#: LDM's autoencoders normalise with 32 GroupNorm groups (hard-coded there; stored in no file).
LDM_GROUPS = 32
SCHEDULERS = ("ddim", "ddpm")


@dataclass(frozen=True)
class CheckpointReport:
    """What `read_unet_checkpoint` found: the file, its key layout, the empty context (learned, or the
    IDiff-Face variant's zero), whether the schedule buffers were there (they matched when present),
    the inferred UNet config and its parameter count."""

    path: Path
    layout: str
    learned_empty_context: bool
    buffers: bool
    config: dict
    parameters: int

    def summary(self) -> str:
        """One line: layout, empty context, buffers, parameters."""
        empty = "learned empty context" if self.learned_empty_context else "zero empty context (IDiff-Face variant)"
        buffers = "schedule buffers match" if self.buffers else "no schedule buffers"
        return f"{self.layout} layout, {empty}, {buffers}, {self.parameters:,} UNet parameters"


def normalise_unet_keys(state: dict) -> tuple[dict, dict, str]:
    """(UNet state dict with bare names, the DDPM schedule buffers found, layout name) for a state dict in
    one of `LAYOUTS`: bare UNet names; `eps_model.<key>` with the buffers beside (the DDPM wrapper);
    `module.eps_model.<key>` with `module.<buffer>` (the wrapper inside DDP); `module.<key>` alone.

    Raises:
        FileFormatError: some keys carry `module.` and others not, or the wrapper holds keys that are
            neither `eps_model.*` nor one of the buffers (the message names them).
    """
    from synthface.generators.idiff.schedule import BUFFER_NAMES

    keys = list(state)
    wrapped = [k for k in keys if k.startswith("module.")]
    if wrapped and len(wrapped) != len(keys):
        bare = [k for k in keys if not k.startswith("module.")]
        raise FileFormatError(
            f"The checkpoint mixes key layouts: {len(wrapped)} keys start with 'module.' (e.g. {wrapped[0]}) and "
            f"{len(bare)} do not ({_listed(bare)}). A published file uses one layout throughout; pass the file as "
            "it was saved (UIFace's ema_averaged_model_<step>.ckpt or IDiff-Face's ema_averaged_model.ckpt)."
        )
    stripped = {k[len("module."):] if wrapped else k: v for k, v in state.items()}
    buffers = {k: v for k, v in stripped.items() if k in BUFFER_NAMES}
    rest = {k: v for k, v in stripped.items() if k not in BUFFER_NAMES}
    inner = [k for k in rest if k.startswith("eps_model.")]
    if not inner:
        return rest, buffers, "module." if wrapped else "bare"
    outside = [k for k in rest if not k.startswith("eps_model.")]
    if outside:
        raise FileFormatError(
            f"The checkpoint's DDPM wrapper holds keys outside 'eps_model.' that are not schedule buffers: "
            f"{_listed(outside)}. The published wrapper holds only eps_model.* and the eight buffers "
            f"({', '.join(BUFFER_NAMES)}); pass the published file or a bare UNet state dict."
        )
    unet = {k[len("eps_model."):]: v for k, v in rest.items()}
    return unet, buffers, "module.eps_model." if wrapped else "eps_model."


def check_schedule_buffers(buffers: dict, source: str) -> bool:
    """True when `buffers` are the eight buffers of the published schedule (`ddpm_buffers()`, within
    `BUFFER_RTOL`), False when there are none (a bare UNet state dict).

    Raises:
        FileFormatError: some buffers are missing, or any differs (each is named with its largest
            relative difference): the model was trained with another schedule the port does not run.
    """
    from synthface.generators.idiff.schedule import BUFFER_NAMES, NUM_TRAIN_TIMESTEPS, ddpm_buffers

    if not buffers:
        return False
    missing = [k for k in BUFFER_NAMES if k not in buffers]
    expected, wrong = ddpm_buffers(), []
    for name in BUFFER_NAMES:
        if name in missing:
            continue
        got, want = buffers[name].detach().to("cpu", torch.float64), expected[name].double()
        if got.shape != want.shape:
            wrong.append(f"{name} has shape {tuple(got.shape)} (expected ({NUM_TRAIN_TIMESTEPS},))")
        elif not torch.allclose(got, want, rtol=BUFFER_RTOL, atol=0.0):
            rel = ((got - want).abs() / want.abs().clamp_min(1e-30)).max().item()
            wrong.append(f"{name} differs by up to {rel:.3g} relative")
    if not missing and not wrong:
        return True
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + wrong
    raise FileFormatError(
        f"{source}: the DDPM schedule buffers are not the published schedule's ({'; '.join(parts)}). Every "
        f"IDiff-Face-family model was trained with T = {NUM_TRAIN_TIMESTEPS} linear betas 1e-4..0.02, which is "
        "the only schedule the port samples with; pass a checkpoint trained with it (the published files are)."
    )


def unet_config_from_state(state: dict, *, head_dim: int | None = None) -> dict:
    """The `IDiffUNet` config of a bare-named UNet state dict, from its shapes: channels, cumulative
    multipliers, attention per level, blocks per level, context sizes and tokens, learned empty context.
    The head width is stored nowhere: `head_dim` (default `PUBLISHED_HEAD_DIM`) must divide every
    attention block's channels.

    Raises:
        FileFormatError: the keys are not an IDiff-Face UNet's (the message says what the file looks
            like when it is a known other model), or the blocks do not follow its layout.
    """
    needed = ("image_proj.weight", "context_emb.weight", "final.weight", "middle.attn.c_proj_in.weight")
    absent = [k for k in needed if k not in state]
    if absent:
        raise FileFormatError(f"The checkpoint is not an IDiff-Face UNet: {_foreign(state, absent)}")
    initial, in_channels = state["image_proj.weight"].shape[:2]
    projected, context_dim = state["context_emb.weight"].shape
    tokens, rest = divmod(state["middle.attn.c_proj_in.weight"].shape[0], projected)
    down = sorted({int(k.split(".")[1]) for k in state if k.startswith("down.") and k.split(".")[1].isdigit()})
    samplers = [i for i in down if f"down.{i}.conv.weight" in state]
    n_blocks = samplers[0] if samplers else len(down)
    levels = len(samplers) + 1
    layout = [i for lv in range(levels) for i in range(lv * (n_blocks + 1), lv * (n_blocks + 1) + n_blocks + (lv < levels - 1))]
    firsts = [f"down.{lv * (n_blocks + 1)}.res.conv1.weight" for lv in range(levels)]
    if rest or n_blocks < 1 or down != layout or samplers != [lv * (n_blocks + 1) + n_blocks for lv in range(levels - 1)] \
            or any(k not in state for k in firsts):
        raise FileFormatError(
            f"The checkpoint's down blocks (down.{', down.'.join(map(str, down[:12]))}) do not follow IDiff-Face's "
            "UNet layout (n residual blocks per level, a down.<i>.conv downsampler between levels); it is another "
            "model or a damaged file. Pass a published IDiff-Face / UIFace / NegFaceDiff checkpoint."
        )
    channels = [state[k].shape[0] for k in firsts]
    multipliers, previous = [], initial
    for c in channels:
        if c % previous:
            raise FileFormatError(f"The checkpoint's level channels {channels} are not cumulative integer multiples "
                                  f"of {initial}; it is not an IDiff-Face UNet.")
        multipliers.append(c // previous)
        previous = c
    head_dim = PUBLISHED_HEAD_DIM if head_dim is None else int(head_dim)
    widths = sorted({v.shape[0] for k, v in state.items() if k.endswith(".attn.x_proj_in.weight")})
    if head_dim < 1 or any(w % head_dim for w in widths):
        raise FileFormatError(
            f"Attention heads of {head_dim} channels do not divide the checkpoint's attention widths {widths}. The "
            "head width is not stored in a checkpoint: pass head_dim (IDiff-Face's .hydra/config.yaml calls it "
            "model.attention_head_channels; every published model uses 32)."
        )
    return dict(in_channels=int(in_channels), initial_channels=int(initial), channel_multipliers=tuple(multipliers),
                is_attention=tuple(f"down.{lv * (n_blocks + 1)}.attn.x_proj_in.weight" in state for lv in range(levels)),
                n_blocks=n_blocks, head_dim=head_dim, context_dim=int(context_dim), projected_context_dim=int(projected),
                context_tokens=tokens, learn_empty_context=EMPTY_KEY in state)


def _listed(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _foreign(state: dict, absent: list[str]) -> str:
    """What a state dict that is not an IDiff-Face UNet looks like, and what to pass instead."""
    keys = list(state)
    if any(k.startswith(("decoder.", "quantize.", "post_quant_conv.")) for k in keys):
        return (f"it holds the LDM VQ-f4 first stage ({_listed(keys, 3)}). Pass it as first_stage "
                f"(--first-stage) and the diffusion checkpoint (ema_averaged_model*.ckpt) as the model.")
    if any(k.startswith(("encoder.", "quant_conv.")) for k in keys):
        return (f"it holds the LDM VQ-f4 encoder ({_listed(keys, 3)}), which sampling does not need. Pass the "
                "diffusion checkpoint (ema_averaged_model*.ckpt) as the model.")
    if "model_vec2face" in keys or "latent_prior_proj_f.weight" in keys:
        return "it is a Vec2Face checkpoint; load it with load_vec2face (generation.model = vec2face)."
    return (f"no {', '.join(absent)} under any of the layouts {', '.join(LAYOUTS)}; it holds "
            f"{_listed(keys) or 'nothing'}. Pass UIFace's ema_averaged_model_<step>.ckpt, IDiff-Face's "
            "trained_models/<name>/checkpoints/ema_averaged_model.ckpt, or its folder.")


def find_checkpoint(path: str | Path) -> Path:
    """The diffusion checkpoint `path` names: the `.ckpt` itself; a folder holding one
    `ema_averaged_model*.ckpt`; or an IDiff-Face `trained_models/<name>/` folder (or its `checkpoints/`),
    where `ema_averaged_model.ckpt` is taken as IDiff-Face's sampler takes it (its step snapshots
    `ema_averaged_model_<step>.ckpt` only when it is the one file). `model.ckpt` (not EMA) is read only
    when passed itself.

    Raises:
        ModelNotFoundError: no checkpoint, or two candidates (both named: pass the one to load).
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} does not exist. Pass an IDiff-Face-family checkpoint (.ckpt) or its folder.")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() and not any(path.glob(CHECKPOINT_GLOB)) else path
    found = sorted(p for p in folder.glob(CHECKPOINT_GLOB) if p.is_file())
    if folder.name == "checkpoints" and (folder / IDIFF_CHECKPOINT).is_file():
        return folder / IDIFF_CHECKPOINT
    if len(found) == 1:
        return found[0]
    if found:
        raise ModelNotFoundError(
            f"{folder} holds {len(found)} candidate checkpoints ({', '.join(p.name for p in found)}); pass the one to "
            "load as the model (the .ckpt file itself)."
        )
    raise ModelNotFoundError(
        f"{path} holds no diffusion checkpoint: expected an {CHECKPOINT_GLOB} (UIFace) or checkpoints/"
        f"{IDIFF_CHECKPOINT} (IDiff-Face's trained_models/<name>/ folder), or a model_index.json (a converted "
        "folder). Pass the checkpoint or the folder that holds it."
    )


def hydra_head_dim(checkpoint: Path) -> int | None:
    """`model.attention_head_channels` of the IDiff-Face training config beside a checkpoint
    (`<name>/.hydra/config.yaml` for `<name>/checkpoints/*.ckpt`), or None where there is none.

    Raises:
        FileFormatError: the config is unreadable, or sets `attention_heads` (a fixed head count per
            block, which no published model uses and the port does not build).
    """
    config = checkpoint.parent.parent / ".hydra" / "config.yaml"
    if checkpoint.parent.name != "checkpoints" or not config.is_file():
        return None
    import yaml

    try:
        model = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("model") or {}
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as exc:
        raise FileFormatError(f"{config} cannot be read as the training config ({type(exc).__name__}); fix or "
                              "remove it (it is optional), or pass head_dim.") from None
    heads = model.get("attention_heads", -1)
    if isinstance(heads, int) and heads > 0:
        raise FileFormatError(f"{config} sets model.attention_heads = {heads} (a fixed head count per block); the port "
                              "builds heads of attention_head_channels channels, as every published model has.")
    channels = model.get("attention_head_channels")
    return channels if isinstance(channels, int) and not isinstance(channels, bool) else None


def _strict_module(cls, config: dict, state: dict, source: str, what: str):
    """`cls(**config)` loaded strictly from `state` (`synthface.weights.strict_module`); mismatches named."""
    from synthface.weights import strict_module

    return strict_module(cls, config, state, lambda detail: (
        f"{source} does not match the {what} its shapes describe ({detail}). It is damaged, another model, or "
        "saved with extra entries; pass the published file or a folder converted from it."))


def read_unet_checkpoint(path: str | Path, *, allow_pickle: bool | None, head_dim: int | None = None):
    """(IDiffUNet, CheckpointReport) from a published diffusion checkpoint in any of `LAYOUTS`: keys
    normalised (`normalise_unet_keys`), schedule buffers checked (`check_schedule_buffers`), config
    inferred from shapes (`unet_config_from_state`, `head_dim` from the argument, else IDiff-Face's
    .hydra config, else 32), loaded strictly. Read with torch's weights_only loader on the pickle opt-in.

    Raises:
        ModelNotFoundError: no pickle opt-in.
        FileFormatError: damaged, not a state dict, not an IDiff-Face UNet, mismatched keys (named),
            buffers of another schedule (named).
    """
    from synthface.generators.idiff.unet import IDiffUNet
    from synthface.weights import load_pickled

    path = Path(path)
    content = load_pickled(path, model=IDIFF_MODELS[0], what="IDiff-Face diffusion checkpoint", allow_pickle=allow_pickle)
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):  # a Lightning-style wrapper
        content = content["state_dict"]
    if isinstance(content, dict) and "model_vec2face" in content:
        raise FileFormatError(f"{path} is not an IDiff-Face UNet checkpoint: {_foreign(content, [])}")
    if not isinstance(content, dict) or not content or not all(isinstance(v, torch.Tensor) for v in content.values()):
        found = (f"a dict with keys {_listed([repr(k) for k in content])}" if isinstance(content, dict) and content
                 else "an empty dict" if isinstance(content, dict) else f"a {type(content).__name__}")
        raise FileFormatError(
            f"{path} holds {found}, not a state dict (name -> tensor) of an IDiff-Face UNet. Pass UIFace's "
            "ema_averaged_model_<step>.ckpt or IDiff-Face's checkpoints/ema_averaged_model.ckpt."
        )
    unet_state, buffers, layout = normalise_unet_keys(content)
    if not any(k.startswith("image_proj.") for k in unet_state):
        raise FileFormatError(f"{path} is not an IDiff-Face UNet checkpoint: {_foreign(unet_state, ['image_proj.weight'])}")
    with_buffers = check_schedule_buffers(buffers, str(path))
    config = unet_config_from_state(unet_state, head_dim=head_dim if head_dim is not None else hydra_head_dim(path))
    unet = _strict_module(IDiffUNet, config, unet_state, str(path), "IDiff-Face UNet")
    if not config["learn_empty_context"]:  # a non-persistent zero buffer, still on meta after the assign-load
        unet.empty_context_embedding = torch.zeros(config["projected_context_dim"])
    meta = [n for n, t in (*unet.named_parameters(), *unet.named_buffers()) if t.is_meta]
    assert not meta, f"IDiffUNet tensors left on meta after loading: {meta[:5]}"
    report = CheckpointReport(path, layout, config["learn_empty_context"], with_buffers, config,
                              sum(t.numel() for t in unet_state.values()))
    return unet.eval(), report


def find_first_stage(first_stage: str | Path | None, checkpoint: Path | None) -> Path:
    """The first stage's decoder file: `first_stage` itself (the .pt, or a folder holding
    `first_stage_decoder_state_dict.pt`); else beside the checkpoint or in one of its 3 parent folders,
    in each also IDiff-Face's `models/autoencoder/`; else the registry entry idiff-vq-f4 (placed by hand).

    Raises:
        ModelNotFoundError: not found (the message says where it looked and where to get the file).
    """
    from synthface import weights

    if first_stage is not None:
        given = Path(first_stage).expanduser()
        if given.is_file():
            return given
        if (given / DECODER_FILE).is_file():
            return given / DECODER_FILE
        raise ModelNotFoundError(
            f"first_stage {given} is neither a file nor a folder holding {DECODER_FILE} (the LDM VQ-f4 decoder). "
            f"Pass the decoder file or its folder; {weights.manual_instructions(weights.spec(FIRST_STAGE_MODEL))}"
        )
    folders = [] if checkpoint is None else list(checkpoint.resolve().parents)[:4]
    for folder in folders:
        for candidate in (folder / DECODER_FILE, folder / "models" / "autoencoder" / DECODER_FILE):
            if candidate.is_file():
                return candidate
    try:
        found = Path(weights.find(FIRST_STAGE_MODEL))
        return found / DECODER_FILE if found.is_dir() else found
    except ModelNotFoundError:
        where = f"beside {checkpoint}, in its 3 parent folders or their models/autoencoder/, or" if folders else "in"
        raise ModelNotFoundError(
            f"No LDM VQ-f4 first stage ({DECODER_FILE}) was found {where} {weights.models_home() / FIRST_STAGE_MODEL}. "
            f"Pass first_stage (the file or its folder; --first-stage on the command line), or place it: "
            f"{weights.manual_instructions(weights.spec(FIRST_STAGE_MODEL))}"
        ) from None


def _read_ldm_file(path: Path, allow_pickle, what: str) -> dict:
    from synthface.weights import read_pickled_state_dict

    return read_pickled_state_dict(path, model=FIRST_STAGE_MODEL, what=what, allow_pickle=allow_pickle)


def vq_config_from_state(ldm_state: dict, *, norm_num_groups: int = LDM_GROUPS) -> dict:
    """`idiff_vqmodel` overrides for LDM-named first-stage weights, from their shapes: channels per
    level, residual blocks per level, latent channels, codebook size and width. The GroupNorm group
    count is stored nowhere; LDM's is always 32 (`norm_num_groups` for models that are not LDM's).

    Raises:
        FileFormatError: the decoder's blocks are not LDM's layout, or the group count does not divide
            its channel widths.
    """
    dec = {k[len("decoder."):]: v for k, v in ldm_state.items() if k.startswith("decoder.")}
    levels = sorted({int(k.split(".")[1]) for k in dec if k.startswith("up.") and k.split(".")[1].isdigit()})
    blocks = {int(k.split(".")[3]) for k in dec if k.startswith("up.0.block.")}
    widths = [dec.get(f"up.{i}.block.0.conv2.weight") for i in levels]
    if not levels or not blocks or any(w is None for w in widths) or levels != list(range(len(levels))):
        raise FileFormatError(f"The first stage's decoder blocks (decoder.up.*) are not the LDM VQ-f4 layout; pass "
                              f"{DECODER_FILE} of fdbtrs/IDiff-Face's first stage (registry entry {FIRST_STAGE_MODEL}).")
    channels = [int(w.shape[0]) for w in widths]
    if any(c % norm_num_groups for c in channels):
        raise FileFormatError(
            f"The first stage's channel widths {channels} are not multiples of {norm_num_groups} GroupNorm groups (LDM's "
            f"autoencoders always use {LDM_GROUPS}); it is not an LDM VQ-f4 file. Pass {DECODER_FILE} of the published "
            f"first stage (registry entry {FIRST_STAGE_MODEL})."
        )
    codes, embed = ldm_state["quantize.embedding.weight"].shape
    out = dec["conv_out.weight"].shape[0]
    encoder_in = ldm_state.get("encoder.conv_in.weight")
    return dict(in_channels=int(encoder_in.shape[1]) if encoder_in is not None else int(out), out_channels=int(out),
                block_out_channels=tuple(channels), layers_per_block=len(blocks) - 1, norm_num_groups=norm_num_groups,
                latent_channels=int(dec["conv_in.weight"].shape[1]), num_vq_embeddings=int(codes), vq_embed_dim=int(embed),
                down_block_types=("DownEncoderBlock2D",) * len(levels), up_block_types=("UpDecoderBlock2D",) * len(levels))


def read_first_stage(decoder: str | Path, *, allow_pickle: bool | None, norm_num_groups: int = LDM_GROUPS):
    """(VQModel, one-line report) from the LDM VQ-f4 decoder file and, when it sits beside it, the
    encoder file (else the encoder stays at its initialisation, seeded with 0 on a forked generator so
    torch's global stream is untouched: sampling never uses it). Strict: every
    decoder, codebook and post-quantisation key must be there with its shape. `norm_num_groups`: see
    `vq_config_from_state` (32 for every LDM file).

    Raises:
        ModelNotFoundError: no pickle opt-in.
        FileFormatError: damaged, not the decoder file (the encoder file or a diffusion checkpoint is
            named as such), or mismatched keys (named).
    """
    from synthface.generators.idiff.autoencoder import idiff_vqmodel, vq_state_from_ldm, vq_state_to_ldm
    from synthface.weights import state_dict_mismatch

    decoder = Path(decoder)
    state = _read_ldm_file(decoder, allow_pickle, "LDM VQ-f4 first-stage decoder")
    needed = ("decoder.conv_in.weight", "decoder.conv_out.weight", "quantize.embedding.weight", "post_quant_conv.weight")
    if any(k not in state for k in needed):
        keys = list(state)
        looks = ("the encoder file (encoder.*, quant_conv.*)" if any(k.startswith("encoder.") for k in keys) else
                 "a diffusion checkpoint" if any("eps_model." in k or k.startswith("image_proj.") for k in keys) else
                 f"{_listed(keys) or 'nothing'}")
        raise FileFormatError(
            f"{decoder} is not the LDM VQ-f4 decoder file: it holds {looks}, not decoder.*, quantize.embedding.weight "
            f"and post_quant_conv.*. Pass {DECODER_FILE} as first_stage (its folder also works)."
        )
    encoder = decoder.parent / ENCODER_FILE
    has_encoder = encoder.is_file() and encoder != decoder
    if has_encoder:
        state = {**_read_ldm_file(encoder, allow_pickle, "LDM VQ-f4 first-stage encoder"), **state}
    config = vq_config_from_state(state, norm_num_groups=norm_num_groups)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(0)  # an encoder left at its initialisation is the same one every time
        vq = idiff_vqmodel(**config)
    expected = {k: tuple(v.shape) for k, v in vq_state_to_ldm(vq.state_dict()).items()  # named as in the files
                if has_encoder or not k.startswith(("encoder.", "quant_conv."))}
    detail = state_dict_mismatch(expected, state)
    if detail:
        raise FileFormatError(
            f"{decoder}{' and ' + ENCODER_FILE if has_encoder else ''} do not match the LDM VQ-f4 autoencoder their "
            f"shapes describe ({detail}). Pass the files of fdbtrs/IDiff-Face's first stage (registry entry "
            f"{FIRST_STAGE_MODEL}), or a folder converted from them."
        )
    converted = vq_state_from_ldm(state)
    vq.load_state_dict(converted, strict=False)
    parts = "decoder + encoder" if has_encoder else "decoder (encoder at its initialisation: sampling does not use it)"
    return vq.eval(), f"VQ-f4 {parts}, {sum(t.numel() for t in converted.values()):,} parameters"


def _scheduler(kind: str):
    from synthface.generators.idiff.scheduler import IDiffDDIMScheduler, IDiffDDPMScheduler

    return (IDiffDDIMScheduler if kind == "ddim" else IDiffDDPMScheduler)()


def _load_converted(folder: Path, sampler_scheduler: str):
    """Components of a folder written by `IDiffFacePipeline.save_pretrained` (safetensors only, strict)."""
    from diffusers import VQModel
    from safetensors.torch import load_file

    from synthface.generators.idiff.unet import IDiffUNet

    index = json.loads((folder / "model_index.json").read_text())
    if index.get("_class_name") != "IDiffFacePipeline":
        raise ModelNotFoundError(
            f"{folder}/model_index.json names {index.get('_class_name')!r}, not IDiffFacePipeline. Pass a folder "
            "written by IDiffFacePipeline.save_pretrained or `synthface models convert`."
        )
    parts = {}
    for name, cls in (("unet", IDiffUNet), ("vqvae", VQModel)):
        weights_file, config_file = folder / name / "diffusion_pytorch_model.safetensors", folder / name / "config.json"
        if not (weights_file.is_file() and config_file.is_file()):
            pickled = sorted(p.name for p in (folder / name).glob("*.bin")) if (folder / name).is_dir() else []
            raise ModelNotFoundError(
                f"{folder / name} lacks config.json or diffusion_pytorch_model.safetensors"
                f"{f' (it holds pickled {pickled[0]}, which a converted folder never does)' if pickled else ''}. "
                "Convert the published checkpoint again with `synthface models convert`."
            )
        config = {k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("_")}
        for key in ("channel_multipliers", "is_attention", "block_out_channels", "down_block_types", "up_block_types"):
            if isinstance(config.get(key), list):
                config[key] = tuple(config[key])
        try:
            state = load_file(str(weights_file))
        except Exception as exc:  # safetensors raises its own error types for damaged headers
            raise FileFormatError(f"{weights_file} is damaged or truncated ({exc}); convert it again.") from None
        parts[name] = _strict_module(cls, config, state, str(weights_file), cls.__name__)
    unet = parts["unet"]
    if not unet.config.learn_empty_context:
        unet.empty_context_embedding = torch.zeros(unet.config.projected_context_dim)
    summary = f"converted folder, {sum(p.numel() for p in unet.parameters()):,} UNet parameters"
    return unet.eval(), parts["vqvae"].eval(), summary, index.get("latent_size")


def _registered(name: str, allow_download: bool) -> Path:
    """The hand-placed folder (or file) of a registered model; any one checkpoint found there counts."""
    from synthface import weights

    folder = weights.models_home() / name
    if folder.is_dir() and (any(folder.glob(CHECKPOINT_GLOB)) or (folder / "checkpoints").is_dir()):
        return folder
    return Path(weights.find(name, allow_download=allow_download))  # raises where to get it and where it goes


def _load(model, first_stage, *, allow_pickle, allow_download, sampler_scheduler, head_dim):
    """(unet, vqvae, summary, latent side or None) for `load_idiff` and `converted_idiff`."""
    from synthface import weights

    name = str(model)
    if name == IDIFF_TINY:
        from synthface.generators.idiff.tiny import tiny_unet, tiny_vqmodel

        return tiny_unet(), tiny_vqmodel(), "random tiny model", None
    if name in IDIFF_MODELS:
        path = _registered(name, allow_download)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelNotFoundError(
                f"{name!r} is neither an IDiff-Face-family model name ({', '.join([*IDIFF_MODELS, IDIFF_TINY])}) nor an "
                f"existing file or folder. Place a published model by hand (`synthface models download {IDIFF_MODELS[0]}` "
                "says where to get it and where it goes) and pass the name, the .ckpt file or its folder."
            )
    if path.is_dir() and (path / "model_index.json").is_file():
        return _load_converted(path, sampler_scheduler)
    checkpoint = find_checkpoint(path)
    decoder = find_first_stage(first_stage, checkpoint)
    if not weights.pickle_allowed(allow_pickle):  # refused before any file is opened, naming both
        raise weights.pickle_refusal("IDiff-Face-family model", [checkpoint.name, decoder.name])
    unet, report = read_unet_checkpoint(checkpoint, allow_pickle=True, head_dim=head_dim)
    vqvae, vq_report = read_first_stage(decoder, allow_pickle=True)
    return unet, vqvae, f"{report.summary()}; {vq_report}", None


def load_idiff(model, first_stage=None, *, device="cpu", dtype=torch.float32, allow_pickle=None,
               allow_download=False, sampler_scheduler="ddim", head_dim=None):
    """Load an `IDiffFacePipeline` on `device` in `dtype`.

    Args:
        model: a published model by name ("idiff-uiface-casia", "idiff-ffhq-cpd25", "idiff-ffhq-cpd50",
            "negfacediff-casia-cpd25": placed by hand in `synthface.weights.models_home()/<name>/`;
            `synthface models download NAME` says where to get each); "idiff-tiny" (random, small, same
            code path); a folder holding one diffusion checkpoint (UIFace's ema_averaged_model_<step>.ckpt,
            or IDiff-Face's trained_models/<name>/ with checkpoints/ema_averaged_model.ckpt, .hydra
            optional) or that .ckpt itself, in any key layout of `LAYOUTS` (a checkpoint without
            'empty_context_embedding' is IDiff-Face's: zero empty context); or a converted safetensors
            folder (model_index.json naming IDiffFacePipeline; no pickle opt-in needed).
        first_stage: the LDM VQ-f4 decoder file first_stage_decoder_state_dict.pt or its folder (the
            encoder file beside it is read too when present); None looks beside the checkpoint, in its
            3 parent folders and their models/autoencoder/, then in the registry entry idiff-vq-f4.
        device, dtype: where and in what precision the modules live.
        allow_pickle: read the published pickled files (torch's weights_only loader);
            SYNTHFACE_ALLOW_PICKLE=1 opts in as well.
        allow_download: accepted for symmetry with the other loaders; these files cannot be downloaded
            (the error says where to get them).
        sampler_scheduler: "ddim" (IDiffDDIMScheduler: cfg, uiface) or "ddpm" (IDiffDDPMScheduler).
        head_dim: the attention head width, stored in no checkpoint: default IDiff-Face's .hydra
            config's, else the published 32.

    Raises:
        ModelNotFoundError: the model or its first stage is not there, or is pickled without an opt-in.
        FileFormatError: a file is damaged or not what it should be, keys do not match (named), or the
            schedule buffers are not the published schedule's.
        InvalidInputError: an unknown sampler_scheduler.
    """
    dtype, device = check_dtype(dtype), check_device(device)  # refused before anything is read
    if sampler_scheduler not in SCHEDULERS:
        raise InvalidInputError(f"sampler_scheduler must be one of {', '.join(SCHEDULERS)}, got {sampler_scheduler!r}: "
                                "'ddim' for the cfg and uiface samplers, 'ddpm' for IDiff-Face's 1000-step DDPM.")
    unet, vqvae, _, latent_size = _load(model, first_stage, allow_pickle=allow_pickle, allow_download=allow_download,
                                        sampler_scheduler=sampler_scheduler, head_dim=head_dim)
    from synthface.generators.idiff.pipeline import IDiffFacePipeline

    pipe = IDiffFacePipeline(unet=unet, vqvae=vqvae, scheduler=_scheduler(sampler_scheduler),
                             **({"latent_size": latent_size} if latent_size else {}))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device) if pipe.dtype == dtype else pipe.to(device=device, dtype=dtype)


def converted_idiff(model, *, allow_pickle, first_stage=None):
    """(pipeline, one-line summary) for `synthface models convert`: a published checkpoint (name, file or
    folder) with its first stage, ready for `save_pretrained` (safetensors). Weights that share memory
    are refused (safetensors cannot store them)."""
    from synthface.generators.idiff.pipeline import IDiffFacePipeline

    unet, vqvae, summary, latent_size = _load(model, first_stage, allow_pickle=allow_pickle, allow_download=False,
                                              sampler_scheduler="ddim", head_dim=None)
    for part, module in (("unet", unet), ("vqvae", vqvae)):
        _refuse_shared_storage(module, part, str(model))
    pipe = IDiffFacePipeline(unet=unet, vqvae=vqvae, scheduler=_scheduler("ddim"),
                             **({"latent_size": latent_size} if latent_size else {}))
    return pipe, summary


def _refuse_shared_storage(module, part: str, model: str) -> None:
    owners: dict[int, list[str]] = {}
    for name, tensor in module.state_dict().items():
        storage = tensor.untyped_storage()
        if storage.nbytes():
            owners.setdefault(storage.data_ptr(), []).append(name)
    shared = [names for names in owners.values() if len(names) > 1]
    if shared:
        raise FileFormatError(
            f"{model}: {len(shared)} group(s) of {part} weights share memory ({'; '.join(' = '.join(n[:3]) for n in shared[:3])}): "
            "one tensor stored under several names, which safetensors cannot write and no published file holds. Save a "
            "copy whose entries are separate tensors (torch.save({k: v.clone() for k, v in state.items()}, path)) and "
            "convert that."
        )
