"""load_idiff and its parts: the four key layouts of the published checkpoints, the schedule buffers,
the UNet config read from shapes, checkpoint and first-stage discovery in the published folders, the
pickle opt-in, converted folders, and every refusal's message.

Checkpoints are written at test time the way the originals save them (torch.save of the state dict
with the real prefixes, under the real file names and folders), from the tiny models; full-size key
sets are shape-only tensors (one element expanded), so they cost kilobytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthface import weights
from synthface.errors import FileFormatError, InvalidInputError, ModelNotFoundError
from synthface.generators.idiff.loading import (
    CheckpointReport,
    check_schedule_buffers,
    find_checkpoint,
    find_first_stage,
    hydra_head_dim,
    normalise_unet_keys,
    unet_config_from_state,
)
from synthface.generators.idiff.schedule import BUFFER_NAMES, ddpm_buffers

DATA = Path(__file__).resolve().parents[2] / "data" / "idiff_state_dict.json"  # the published key list, shipped
PUBLISHED_CONFIG = dict(in_channels=3, initial_channels=96, channel_multipliers=(1, 2, 2, 2),
                        is_attention=(False, True, True, True), n_blocks=2, head_dim=32, context_dim=512,
                        projected_context_dim=256, context_tokens=32, learn_empty_context=True)
CKPT, DECODER, ENCODER = "ema_averaged_model.ckpt", "first_stage_decoder_state_dict.pt", "first_stage_encoder_state_dict.pt"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_opt_in(monkeypatch, tmp_path):
    monkeypatch.delenv(weights.PICKLE_ENV, raising=False)
    monkeypatch.setenv(weights.HOME_ENV, str(tmp_path / "synthface-home"))  # no hand-placed model leaks in


def shape_only(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(1).expand(s) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def published_unet() -> dict[str, torch.Tensor]:
    """The published UIFace UNet's 843 names and shapes (IDIFF.md's data file), shape-only."""
    return shape_only({k: tuple(s) for k, s, _ in json.loads(DATA.read_text())["keys"]})


def with_prefix(state: dict, layout: str, buffers: dict | None = None) -> dict:
    """`state` (bare UNet names) as a checkpoint of `layout` saves it: the wrapper's buffers beside
    `eps_model.*`, every key under `module.` for the DDP-wrapped layouts."""
    inner = "eps_model." if "eps_model." in layout else ""
    out = {f"{inner}{k}": v for k, v in state.items()}
    if inner:
        out.update(ddpm_buffers() if buffers is None else buffers)
    return {f"module.{k}": v for k, v in out.items()} if layout.startswith("module.") else out


# ------------------------------------------------------------------ key layouts


@pytest.mark.parametrize("layout", ["bare", "eps_model.", "module.eps_model.", "module."])
def test_each_layout_normalises_to_the_bare_names_and_splits_the_buffers(layout):
    state = {"image_proj.weight": torch.randn(4, 3, 3, 3), "empty_context_embedding": torch.randn(8)}
    unet, buffers, name = normalise_unet_keys(with_prefix(state, layout))
    assert name == layout and list(unet) == list(state) and all(torch.equal(unet[k], state[k]) for k in state)
    expected = ddpm_buffers() if "eps_model." in layout else {}
    assert list(buffers) == list(expected) and all(torch.equal(buffers[k], expected[k]) for k in expected)


def test_mixed_prefixes_are_named():
    state = {"module.eps_model.image_proj.weight": torch.ones(1), "image_proj.bias": torch.ones(1)}
    with pytest.raises(FileFormatError, match=r"mixes key layouts: 1 keys start with 'module.' .*image_proj\.bias"):
        normalise_unet_keys(state)


def test_a_wrapper_key_that_is_neither_unet_nor_buffer_is_named():
    state = {**with_prefix({"image_proj.weight": torch.ones(1)}, "eps_model."), "step": torch.tensor(3)}
    with pytest.raises(FileFormatError, match=r"outside 'eps_model.' that are not schedule buffers: step\. "):
        normalise_unet_keys(state)


# ------------------------------------------------------------------ schedule buffers


def test_the_published_buffers_match_and_none_is_a_bare_unet():
    assert check_schedule_buffers(ddpm_buffers(), "x") is True
    assert check_schedule_buffers({}, "x") is False
    cumprod = dict(ddpm_buffers(), alpha_bars=torch.cumprod(1 - ddpm_buffers()["betas"], 0))  # 5e-7 relative
    assert check_schedule_buffers(cumprod, "x") is True


def test_another_schedule_is_refused_naming_each_differing_buffer():
    scaled = ddpm_buffers(1000, 1e-4, 0.012)  # another beta range: every buffer differs
    with pytest.raises(FileFormatError) as info:
        check_schedule_buffers(scaled, "ckpt")
    text = str(info.value)
    assert text.startswith("ckpt: the DDPM schedule buffers are not the published schedule's")
    for name in BUFFER_NAMES:
        assert f"; {name} differs by up to" in f"; {text.split('(', 1)[1]}", name
    longer = ddpm_buffers(2000)
    with pytest.raises(FileFormatError, match=r"betas has shape \(2000,\) \(expected \(1000,\)\)"):
        check_schedule_buffers(longer, "ckpt")
    partial = {k: v for k, v in ddpm_buffers().items() if k not in ("sigmas", "alpha_bars")}
    with pytest.raises(FileFormatError, match=r"missing sigmas, alpha_bars\)"):
        check_schedule_buffers(partial, "ckpt")


# ------------------------------------------------------------------ config from shapes


def test_the_published_shapes_give_the_published_config(published_unet):
    assert unet_config_from_state(published_unet) == PUBLISHED_CONFIG
    idiff = {k: v for k, v in published_unet.items() if k != "empty_context_embedding"}
    assert unet_config_from_state(idiff) == {**PUBLISHED_CONFIG, "learn_empty_context": False}
    assert unet_config_from_state(published_unet, head_dim=96 // 3)["head_dim"] == 32


def test_a_head_width_that_does_not_divide_the_attention_widths_is_refused(published_unet):
    with pytest.raises(FileFormatError, match=r"heads of 64 channels do not divide .*\[96, 192, 384, 768\].*pass head_dim"):
        unet_config_from_state(published_unet, head_dim=64)


def test_down_blocks_out_of_layout_are_refused(published_unet):
    broken = {k: v for k, v in published_unet.items() if not k.startswith("down.5.")}  # a downsampler gone
    with pytest.raises(FileFormatError, match="do not follow IDiff-Face's UNet layout"):
        unet_config_from_state(broken)


@pytest.mark.parametrize("state, needles", [
    ({"model_vec2face": {}}, ["Vec2Face checkpoint", "load_vec2face"]),
    ({"decoder.conv_in.weight": torch.ones(1), "quantize.embedding.weight": torch.ones(1)},
     ["LDM VQ-f4 first stage", "Pass it as first_stage"]),
    ({"encoder.conv_in.weight": torch.ones(1)}, ["VQ-f4 encoder", "sampling does not need"]),
    ({"fc.weight": torch.ones(1)}, ["no image_proj.weight", "it holds fc.weight", "ema_averaged_model_<step>.ckpt"]),
], ids=["vec2face", "vq decoder", "vq encoder", "random"])
def test_a_state_dict_of_another_model_says_what_it_is(state, needles):
    with pytest.raises(FileFormatError) as info:
        unet_config_from_state(state)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


# ------------------------------------------------------------------ discovery


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_checkpoint_discovery_in_the_published_folders(tmp_path):
    uiface = touch(tmp_path / "uiface" / "ema_averaged_model_250000.ckpt")
    assert find_checkpoint(uiface.parent) == uiface and find_checkpoint(uiface) == uiface
    trained = tmp_path / "trained_models" / "unet-cond-ca-bs512-150K-cpd25"
    final = touch(trained / "checkpoints" / CKPT)
    touch(trained / "checkpoints" / "model.ckpt")  # not EMA: never picked
    for snapshot in (70_000, 100_000):  # IDiff-Face's step snapshots: its sampler takes the final file
        touch(trained / "checkpoints" / f"ema_averaged_model_{snapshot}.ckpt")
    assert find_checkpoint(trained) == final and find_checkpoint(trained / "checkpoints") == final
    touch(tmp_path / "two" / "ema_averaged_model_1000.ckpt")
    touch(tmp_path / "two" / "ema_averaged_model_2000.ckpt")
    with pytest.raises(ModelNotFoundError, match=r"2 candidate checkpoints \(ema_averaged_model_1000\.ckpt, "
                                                 r"ema_averaged_model_2000\.ckpt\); pass the one"):
        find_checkpoint(tmp_path / "two")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"holds no diffusion checkpoint: expected an ema_averaged_model\*\.ckpt"):
        find_checkpoint(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        find_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("where", ["beside", "parent", "grandparent", "idiff-face repo", "registry"])
def test_first_stage_lookup(tmp_path, where):
    root = tmp_path / "IDiff-Face"
    ckpt = touch(root / "trained_models" / "unet-cond-ca-bs512-150K-cpd25" / "checkpoints" / CKPT)
    place = {"beside": ckpt.parent, "parent": ckpt.parent.parent, "grandparent": ckpt.parents[2],
             "idiff-face repo": root / "models" / "autoencoder",
             "registry": weights.models_home() / "idiff-vq-f4"}[where]
    decoder = touch(place / DECODER)
    assert find_first_stage(None, ckpt).resolve() == decoder.resolve()
    assert find_first_stage(decoder, ckpt) == decoder and find_first_stage(place, None) == decoder


def test_a_missing_first_stage_says_where_it_looked_and_where_to_get_it(tmp_path):
    ckpt = touch(tmp_path / "uiface" / "ema_averaged_model_250000.ckpt")
    with pytest.raises(ModelNotFoundError) as info:
        find_first_stage(None, ckpt)
    text = str(info.value)
    for needle in (f"No LDM VQ-f4 first stage ({DECODER}) was found beside {ckpt}", "models/autoencoder",
                   "Pass first_stage", "1d-zs3yjsnzOMNkz7qy3JSb-fMf0UmSdT", str(weights.models_home() / "idiff-vq-f4" / DECODER)):
        assert needle in text, needle
    with pytest.raises(ModelNotFoundError, match=f"neither a file nor a folder holding {DECODER}"):
        find_first_stage(tmp_path / "uiface", ckpt)


def test_the_hydra_config_gives_the_head_width(tmp_path):
    ckpt = touch(tmp_path / "m" / "checkpoints" / CKPT)
    assert hydra_head_dim(ckpt) is None
    config = tmp_path / "m" / ".hydra" / "config.yaml"
    config.parent.mkdir()
    config.write_text("model:\n  _target_: models.diffusion.unet.ConditionalUNet\n  attention_heads: -1\n"
                      "  attention_head_channels: 16\n  input_channels: ${constants.input_channels}\n")
    assert hydra_head_dim(ckpt) == 16
    config.write_text("model:\n  attention_heads: 4\n")
    with pytest.raises(FileFormatError, match="sets model.attention_heads = 4"):
        hydra_head_dim(ckpt)
    config.write_text("model: [unclosed\n")
    with pytest.raises(FileFormatError, match="cannot be read as the training config"):
        hydra_head_dim(ckpt)


def test_the_report_summary():
    report = CheckpointReport(Path("x"), "module.eps_model.", True, True, {}, 1234)
    assert report.summary() == "module.eps_model. layout, learned empty context, schedule buffers match, 1,234 UNet parameters"
    report = CheckpointReport(Path("x"), "bare", False, False, {}, 5)
    assert report.summary() == "bare layout, zero empty context (IDiff-Face variant), no schedule buffers, 5 UNet parameters"


def test_an_unknown_scheduler_is_refused_before_anything_is_read(tmp_path):
    from synthface.generators.idiff.loading import load_idiff

    with pytest.raises(InvalidInputError, match="sampler_scheduler must be one of ddim, ddpm, got 'euler'"):
        load_idiff(tmp_path / "nowhere", sampler_scheduler="euler")


def test_an_unknown_name_says_what_is_accepted(tmp_path):
    from synthface.generators.idiff.loading import load_idiff

    with pytest.raises(ModelNotFoundError, match=r"'idiff-huge' is neither an IDiff-Face-family model name \(idiff-uiface-casia"):
        load_idiff("idiff-huge")


def test_a_registered_name_not_placed_says_where_to_get_it():
    from synthface.generators.idiff.loading import load_idiff

    with pytest.raises(ModelNotFoundError) as info:
        load_idiff("idiff-ffhq-cpd50", allow_download=True)
    assert str(info.value) == weights.manual_instructions(weights.spec("idiff-ffhq-cpd50"))


# ------------------------------------------------------------------ tiny models in the published layouts

TINY_HEAD_DIM = 16  # tiny.TINY_UNET's; no checkpoint stores it


def save_unet(folder: Path, unet, layout: str) -> Path:
    """`unet` saved as a published file: "uiface" (module.eps_model. + module. buffers, UIFace's file name),
    "idiff-face" (trained_models/<name>/checkpoints/ + .hydra/config.yaml), "bare" or "module."."""
    state = unet.state_dict()
    prefix = {"uiface": "module.eps_model.", "idiff-face": "eps_model.", "bare": "bare", "module.": "module."}[layout]
    if layout == "uiface":
        path = folder / "ema_averaged_model_250000.ckpt"
    elif layout == "idiff-face":
        path = folder / "trained_models" / "unet-tiny" / "checkpoints" / CKPT
        hydra = path.parents[1] / ".hydra" / "config.yaml"
        hydra.parent.mkdir(parents=True)
        hydra.write_text(f"model:\n  attention_heads: -1\n  attention_head_channels: {TINY_HEAD_DIM}\n"
                         f"  learn_empty_context: {'empty_context_embedding' in state}\n")
    else:
        path = folder / CKPT
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(with_prefix(state, prefix), path)
    return path


def save_first_stage(folder: Path, vq, encoder: bool = True) -> Path:
    """The VQ model as IDiff-Face's two LDM-named files (decoder + codebook, encoder)."""
    from synthface.generators.idiff.autoencoder import vq_state_to_ldm

    ldm = vq_state_to_ldm(vq.state_dict())
    folder.mkdir(parents=True, exist_ok=True)
    dec = {k: v for k, v in ldm.items() if k.startswith(("decoder.", "quantize.", "post_quant_conv."))}
    torch.save(dec, folder / DECODER)
    if encoder:
        torch.save({k: v for k, v in ldm.items() if k not in dec}, folder / ENCODER)
    return folder / DECODER


@pytest.fixture(scope="module")
def tiny():
    """The tiny UNets (learned and zero empty context) and a small first stage in LDM's 32 GroupNorm groups
    (a published file stores no group count: every LDM autoencoder has 32)."""
    from synthface.generators.idiff.tiny import TINY_VQ, tiny_unet, vq_from_rule

    vq = vq_from_rule(**{**TINY_VQ, "block_out_channels": (32, 32, 32), "norm_num_groups": 32})
    return {True: tiny_unet(), False: tiny_unet(learn_empty_context=False)}, vq


def test_the_tiny_first_stage_loads_with_its_group_count_and_is_refused_without(tmp_path):
    from synthface.generators.idiff.loading import read_first_stage
    from synthface.generators.idiff.tiny import TINY_VQ, tiny_vqmodel

    vq = tiny_vqmodel()
    decoder = save_first_stage(tmp_path, vq)
    loaded, _ = read_first_stage(decoder, allow_pickle=True, norm_num_groups=TINY_VQ["norm_num_groups"])
    assert same_state(vq, loaded)
    with pytest.raises(FileFormatError, match=r"channel widths \[16, 32, 32\] are not multiples of 32 GroupNorm groups"):
        read_first_stage(decoder, allow_pickle=True)


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


def eps(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(2, 3, 8, 8, generator=g), torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=1)
    with torch.no_grad():
        return torch.cat([unet(x, torch.tensor([999, 10]), c), unet(x, torch.tensor([500, 1]), None)])


@pytest.mark.parametrize("learned", [True, False], ids=["learned empty", "zero empty"])
@pytest.mark.parametrize("layout", ["uiface", "idiff-face", "bare", "module."])
def test_every_published_layout_loads_the_same_weights(tmp_path, tiny, layout, learned):
    from synthface.generators.idiff.loading import read_unet_checkpoint
    from synthface.generators.idiff.tiny import TINY_UNET

    unet = tiny[0][learned]
    path = save_unet(tmp_path, unet, layout)
    head_dim = None if layout == "idiff-face" else TINY_HEAD_DIM  # the .hydra config says it
    rng = torch.random.get_rng_state()
    loaded, report = read_unet_checkpoint(path, allow_pickle=True, head_dim=head_dim)
    assert torch.equal(torch.random.get_rng_state(), rng)  # built on meta: nothing drawn from the global stream
    assert same_state(unet, loaded) and torch.equal(eps(unet), eps(loaded))
    assert report.layout == {"uiface": "module.eps_model.", "idiff-face": "eps_model."}.get(layout, layout)
    assert report.learned_empty_context is learned and report.buffers is (layout in ("uiface", "idiff-face"))
    assert report.config == {**PUBLISHED_CONFIG, **TINY_UNET, "learn_empty_context": learned}
    assert report.parameters == sum(p.numel() for p in unet.parameters())
    if not learned:
        assert torch.equal(loaded.empty_context_embedding, torch.zeros(TINY_UNET["projected_context_dim"]))


def test_without_the_head_width_a_tiny_uiface_file_loads_with_the_published_one(tmp_path, tiny):
    from synthface.generators.idiff.loading import read_unet_checkpoint

    loaded, report = read_unet_checkpoint(save_unet(tmp_path, tiny[0][True], "uiface"), allow_pickle=True)
    assert report.config["head_dim"] == 32 and same_state(tiny[0][True], loaded)


@pytest.mark.parametrize("encoder", [True, False])
def test_the_first_stage_loads_from_its_ldm_files(tmp_path, tiny, encoder):
    from synthface.generators.idiff.loading import read_first_stage

    vq = tiny[1]
    vq_loaded, summary = read_first_stage(save_first_stage(tmp_path, vq, encoder=encoder), allow_pickle=True)
    sa, sb = vq.state_dict(), vq_loaded.state_dict()
    decoder_keys = [k for k in sa if not k.startswith(("encoder.", "quant_conv."))]
    assert all(torch.equal(sa[k], sb[k]) for k in (sa if encoder else decoder_keys))
    assert ("decoder + encoder" in summary) is encoder
    state = torch.random.get_rng_state()
    again, _ = read_first_stage(tmp_path / DECODER, allow_pickle=True)
    assert torch.equal(torch.random.get_rng_state(), state)  # loading draws nothing from the global stream
    assert same_state(vq_loaded, again)  # an encoder left at its initialisation is the same every time
    assert summary.endswith(f"{sum(sa[k].numel() for k in (sa if encoder else decoder_keys)):,} parameters")


@pytest.mark.parametrize("case, needles", [
    ("encoder as decoder", ["is not the LDM VQ-f4 decoder file: it holds the encoder file", f"Pass {DECODER}"]),
    ("diffusion checkpoint", ["it holds a diffusion checkpoint"]),
    ("missing key", ["do not match the LDM VQ-f4 autoencoder", "missing: decoder.norm_out.weight"]),
])
def test_a_wrong_first_stage_is_named(tmp_path, tiny, case, needles):
    from synthface.generators.idiff.loading import read_first_stage

    decoder = save_first_stage(tmp_path / "vq", tiny[1])
    if case == "encoder as decoder":
        decoder = decoder.parent / ENCODER
    elif case == "diffusion checkpoint":
        decoder = save_unet(tmp_path / "unet", tiny[0][True], "uiface")
    else:
        state = torch.load(decoder)
        del state["decoder.norm_out.weight"]
        torch.save(state, decoder)
    with pytest.raises(FileFormatError) as info:
        read_first_stage(decoder, allow_pickle=True)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


@pytest.fixture
def uiface_folder(tmp_path, tiny) -> Path:
    """UIFace's files as one folder: the checkpoint and the first stage beside it."""
    folder = tmp_path / "uiface"
    save_unet(folder, tiny[0][True], "uiface")
    save_first_stage(folder, tiny[1])
    return folder


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_load_idiff_reads_a_published_folder_on_the_opt_in(uiface_folder, tiny, monkeypatch, how):
    from synthface.generators.idiff.loading import load_idiff

    if how == "environment":
        monkeypatch.setenv(weights.PICKLE_ENV, "1")
    pipe = load_idiff(uiface_folder, allow_pickle=True if how == "argument" else None, head_dim=TINY_HEAD_DIM)
    assert same_state(tiny[0][True], pipe.unet) and same_state(tiny[1], pipe.vqvae)
    assert type(pipe.scheduler).__name__ == "IDiffDDIMScheduler"
    assert type(load_idiff(uiface_folder, allow_pickle=True, sampler_scheduler="ddpm").scheduler).__name__ == \
        "IDiffDDPMScheduler"


def test_the_idiff_face_repository_layout_finds_its_first_stage_and_head_width(tmp_path, tiny):
    from synthface.generators.idiff.loading import load_idiff

    root = tmp_path / "IDiff-Face"
    ckpt = save_unet(root, tiny[0][False], "idiff-face")
    save_first_stage(root / "models" / "autoencoder", tiny[1])
    pipe = load_idiff(ckpt.parents[1], allow_pickle=True)  # trained_models/<name>/
    assert pipe.unet.config.head_dim == TINY_HEAD_DIM and not pipe.unet.config.learn_empty_context
    assert torch.equal(eps(pipe.unet), eps(tiny[0][False])) and same_state(tiny[1], pipe.vqvae)


def test_a_registered_name_loads_the_hand_placed_folder(tmp_path, tiny):
    from synthface.generators.idiff.loading import load_idiff

    folder = weights.models_home() / "idiff-uiface-casia"
    torch.save(with_prefix(tiny[0][True].state_dict(), "module.eps_model."), touch(folder / "ema_averaged_model_150000.ckpt"))
    save_first_stage(weights.models_home() / "idiff-vq-f4", tiny[1], encoder=False)  # the registry entry's place
    pipe = load_idiff("idiff-uiface-casia", allow_pickle=True, head_dim=TINY_HEAD_DIM)
    assert same_state(tiny[0][True], pipe.unet)


def test_pickles_without_the_opt_in_are_refused_naming_both_files_and_the_fix(uiface_folder):
    from synthface.generators.idiff.loading import load_idiff

    with pytest.raises(ModelNotFoundError) as info:
        load_idiff(uiface_folder)
    text = str(info.value)
    for needle in ("ema_averaged_model_250000.ckpt", DECODER, "allow_pickle=True", "--allow-pickle", weights.PICKLE_ENV,
                   "convert them once to .safetensors"):
        assert needle in text, needle


@pytest.mark.parametrize("case, needles", [
    ("truncated", ["cannot be read as a torch checkpoint", "truncated"]),
    ("vec2face", ["is a Vec2Face checkpoint", "load_vec2face"]),
    ("random dict", ["no image_proj.weight", "it holds fc.weight"]),
    ("a list", ["holds a list, not a state dict", "ema_averaged_model.ckpt"]),
    ("mismatched keys", ["does not match the IDiff-Face UNet", "missing: final.bias", "unexpected: extra.weight",
                         "wrong shape: norm.weight (7,) (expected (32,))"]),
    ("other schedule", ["schedule buffers are not the published schedule's", "betas differs by up to"]),
])
def test_a_wrong_checkpoint_is_refused_with_what_is_wrong(tmp_path, tiny, case, needles):
    from synthface.generators.idiff.loading import read_unet_checkpoint

    path = save_unet(tmp_path, tiny[0][True], "idiff-face")
    state = torch.load(path)
    content = {
        "vec2face": {"model_vec2face": {"latent_prior_proj_f.weight": torch.ones(2)}},
        "random dict": {"fc.weight": torch.ones(2)},
        "a list": [torch.ones(2)],
        "mismatched keys": {**{k: v for k, v in state.items() if k != "eps_model.final.bias"},
                            "eps_model.extra.weight": torch.ones(1), "eps_model.norm.weight": torch.ones(7)},
        "other schedule": {**state, "betas": state["betas"] * 2},
    }.get(case)
    if content is not None:
        torch.save(content, path)
    else:
        path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(FileFormatError) as info:
        read_unet_checkpoint(path, allow_pickle=True)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_a_converted_folder_round_trips_without_the_opt_in(uiface_folder, tmp_path, tiny):
    from synthface.generators.idiff.loading import converted_idiff, load_idiff

    pipe, summary = converted_idiff(uiface_folder, allow_pickle=True)
    assert summary.startswith("module.eps_model. layout, learned empty context, schedule buffers match")
    assert "VQ-f4 decoder + encoder" in summary
    pipe.save_pretrained(tmp_path / "converted")
    assert not any(p.suffix in weights.PICKLE_SUFFIXES for p in (tmp_path / "converted").rglob("*"))
    again = load_idiff(tmp_path / "converted")  # safetensors: no pickle opt-in
    assert same_state(pipe.unet, again.unet) and same_state(pipe.vqvae, again.vqvae)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(again.unet.config) == public(pipe.unet.config) and again.unet.config.head_dim == 32
    assert torch.equal(eps(again.unet), eps(pipe.unet))


def test_a_converted_folder_of_another_pipeline_is_refused(tmp_path):
    from synthface.generators.idiff.loading import load_idiff

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Vec2FacePipeline"}))
    with pytest.raises(ModelNotFoundError, match="names 'Vec2FacePipeline', not IDiffFacePipeline"):
        load_idiff(tmp_path)


def test_the_tiny_model_and_dtype(tiny):
    from synthface.generators.idiff.loading import load_idiff

    pipe = load_idiff("idiff-tiny", dtype=torch.bfloat16)
    want, got = tiny[0][True].state_dict(), pipe.unet.state_dict()
    assert pipe.unet.dtype == torch.bfloat16 and all(torch.equal(want[k].bfloat16(), got[k]) for k in want)


# ------------------------------------------------------------------ the published sizes (shape-only files)


@pytest.mark.parametrize("variant, layout, parameters", [
    ("uiface", "module.eps_model.", 216_341_443), ("idiff-face", "eps_model.", 216_341_187)])
def test_the_published_key_sets_load_in_their_published_layouts(tmp_path, published_unet, variant, layout, parameters):
    """IDIFF.md's 843 (UIFace) and 842 (IDiff-Face: no learned empty context) tensors, as the published
    files hold them, load strictly with the published config and parameter count."""
    from synthface.generators.idiff.loading import read_unet_checkpoint

    state = {k: v for k, v in published_unet.items() if variant == "uiface" or k != "empty_context_embedding"}
    path = tmp_path / ("ema_averaged_model_250000.ckpt" if variant == "uiface" else CKPT)
    torch.save(with_prefix(state, layout), path)
    unet, report = read_unet_checkpoint(path, allow_pickle=True)
    assert report.layout == layout and report.buffers and report.parameters == parameters
    assert report.config == {**PUBLISHED_CONFIG, "learn_empty_context": variant == "uiface"}
    assert sum(p.numel() for p in unet.parameters()) == parameters


def test_the_published_first_stage_files_load(tmp_path):
    from synthface.generators.idiff.loading import read_first_stage

    data = json.loads(DATA.read_text())
    for part, name in (("vq_decoder", DECODER), ("vq_encoder", ENCODER)):
        torch.save(shape_only({k: tuple(s) for k, s, _ in data[part]["keys"]}), tmp_path / name)
    vq, summary = read_first_stage(tmp_path / DECODER, allow_pickle=True)
    assert summary == f"VQ-f4 decoder + encoder, {data['vq_decoder']['parameters'] + data['vq_encoder']['parameters']:,} parameters"
    assert vq.config.num_vq_embeddings == 8192 and tuple(vq.config.block_out_channels) == (128, 256, 512)
    (tmp_path / ENCODER).unlink()
    _, summary = read_first_stage(tmp_path / DECODER, allow_pickle=True)
    assert summary.startswith("VQ-f4 decoder (encoder at its initialisation") and f"{32_985_359:,} parameters" in summary


def test_load_idiff_without_a_first_stage_names_where_it_looked(uiface_folder):
    from synthface.generators.idiff.loading import converted_idiff, load_idiff

    (uiface_folder / DECODER).unlink()
    with pytest.raises(ModelNotFoundError, match=r"No LDM VQ-f4 first stage \(first_stage_decoder_state_dict\.pt\) was found"):
        load_idiff(uiface_folder, allow_pickle=True)
    with pytest.raises(ModelNotFoundError, match=r"only available as pickled weights \(ema_averaged_model_250000\.ckpt"):
        converted_idiff(uiface_folder, allow_pickle=False, first_stage=uiface_folder / ENCODER)


def test_a_converted_folder_with_pickled_weights_is_refused(uiface_folder, tmp_path):
    from synthface.generators.idiff.loading import converted_idiff, load_idiff

    pipe, _ = converted_idiff(uiface_folder, allow_pickle=True)
    pipe.save_pretrained(tmp_path / "converted")
    unet = tmp_path / "converted" / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, unet / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelNotFoundError, match=r"lacks config.json or diffusion_pytorch_model.safetensors \(it holds "
                                                 r"pickled diffusion_pytorch_model.bin"):
        load_idiff(tmp_path / "converted")
