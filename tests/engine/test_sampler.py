"""[generation.sampler] through the engine: the section reaches the renderer as RenderSettings.sampler;
with a negative, each image gets its identity's NegFaceDiff negative, a row of the bank it is rendered
from (a resampling round's set with its replacements in place), whatever the batches or shards; a
generator that cannot follow the section is refused before the run folder exists."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from synthface import engine
from synthface.errors import InvalidInputError
from synthface.generators import GeneratorFamily, Renderer, build_renderer, families_with
from synthface.generators.idiff.pipeline import IDiffFacePipeline
from synthface.generators.idiff.scheduler import IDiffDDIMScheduler
from synthface.generators.idiff.tiny import tiny_unet, tiny_vqmodel
from synthface.identity import load_bank, negative_indices
from tests.helpers.engine import PLANTED, PhotoRenderer, data_files, noise_renderer, photo_recipe, small_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


class SpyPipeline(IDiffFacePipeline):
    """The tiny IDiff-Face pipeline, recording what every call was given (seeds from the generators)."""

    calls: list

    def __call__(self, id_embeds, **kwargs):
        call = {"seeds": [g.initial_seed() for g in kwargs["generator"]], "id_embeds": id_embeds.clone(),
                **{k: v for k, v in kwargs.items() if k != "generator"}}
        out = super().__call__(id_embeds, **kwargs)
        self.calls.append({**call, "images": out.images.clone()})
        return out


@pytest.fixture(scope="module")
def pipe():
    spy = SpyPipeline(tiny_unet(), tiny_vqmodel(), IDiffDDIMScheduler(), latent_size=8)
    spy.calls = []
    return spy


def idiff_recipe(negative="far", **sections):
    sampler = {"negative": negative, "negative_scale": 0.75} if negative else {}
    generation = {"model": "idiff-tiny", "steps": 2, "guidance": 2.0, "sampler": sampler, **sections.pop("generation", {})}
    return small_recipe(identities={"dim": 512}, generation=generation, **sections)


def run_idiff(pipe, recipe, out, **options):
    """engine.run with the tiny pipeline as the recipe's Renderer (the settings the engine would build)."""
    pipe.calls.clear()
    engine.run(recipe, out, renderer=build_renderer(pipe, settings=engine.render_settings(recipe)), **options)
    return pipe.calls


def manifest(out) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


@pytest.mark.parametrize("kind", ["far", "close", "mid"])
def test_each_image_is_steered_away_from_its_identity_s_negative_in_the_bank(pipe, kind, tmp_path):
    recipe = idiff_recipe(kind)
    calls = run_idiff(pipe, recipe, tmp_path / "run")
    bank = engine.ensure_identities(recipe, engine.RunLayout(tmp_path / "run"), engine.Ranks()).vectors
    expected = negative_indices(bank, kind).numpy()
    rows = manifest(tmp_path / "run")
    identity_of = {r["seed"]: r["identity"] for r in rows}
    assert len(rows) == 21 and [r["negative_identity"] for r in rows] == [expected[r["identity"]] for r in rows]
    seen = 0
    for call in calls:
        identities = [identity_of[s] for s in call["seeds"]]
        assert np.array_equal(call["negative_embeds"].numpy(), bank[expected[identities]])  # the bank's own rows
        assert (call["sampler"], call["negative_scale"], call["adaptive_negative"]) == ("cfg", 0.75, False)
        assert "guidance_scale" not in call  # the negative takes the empty context's place: w, not the guidance
        seen += len(identities)
    assert seen == 21
    if kind == "close":
        assert all(r["negative_identity"] != r["identity"] for r in rows)


def per_image(calls) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """seed -> (the negative it was given, the image the pipeline returned), over every call."""
    return {seed: (call["negative_embeds"][i].numpy(), call["images"][i].numpy())
            for call in calls for i, seed in enumerate(call["seeds"])}


def test_shards_change_no_negative_and_no_file(pipe, tmp_path):
    """batch_size 3 = one identity's candidates, so only the cut into shards differs between the runs."""
    run_idiff(pipe, idiff_recipe("far", generation={"batch_size": 3}), tmp_path / "two")
    run_idiff(pipe, idiff_recipe("far", generation={"batch_size": 3}, compute={"shard_size": 3}), tmp_path / "three")

    def by_image(out):
        return {(r["identity"], r["image"]): (r["seed"], r["negative_identity"]) for r in manifest(out)}

    assert by_image(tmp_path / "three") == by_image(tmp_path / "two") and len(by_image(tmp_path / "two")) == 21

    def images(out):
        return {p.relative_to(out / "export"): p.read_bytes() for p in (out / "export" / "imagefolder").rglob("*.jpg")}

    assert images(tmp_path / "three") == images(tmp_path / "two") and len(images(tmp_path / "two")) == 21


def test_batches_change_no_negative_and_no_image_beyond_the_pipeline_s_batch_tolerance(pipe, tmp_path):
    """Each image's negative is bitwise the same in batches of 5 and of 2 (it depends on its identity and
    the bank alone), and so is everything the engine writes from it but the pixels: the IDiff-Face pipeline
    is batch-independent to < 1e-4, not bitwise (batched GEMMs round differently), so a JPEG may differ."""
    five = per_image(run_idiff(pipe, idiff_recipe("far"), tmp_path / "five"))
    two = per_image(run_idiff(pipe, idiff_recipe("far", generation={"batch_size": 2}), tmp_path / "two",
                              max_in_flight=1))
    assert five.keys() == two.keys() and len(five) == 21
    for seed, (negative, image) in five.items():
        assert np.array_equal(two[seed][0], negative)
        assert np.abs(two[seed][1] - image).max() < 1e-4
    assert (tmp_path / "two" / "manifest.parquet").read_bytes() == (tmp_path / "five" / "manifest.parquet").read_bytes()


def test_the_negative_changes_the_images_and_an_unset_section_renders_as_before(pipe, tmp_path):
    """With the section unset the renderer gets sampler None (the family's default, 'cfg') and no negatives."""
    plain = small_recipe(identities={"dim": 512}, generation={"model": "idiff-tiny", "steps": 2, "guidance": 1.5})
    assert engine.render_settings(plain).sampler is None
    calls = run_idiff(pipe, plain, tmp_path / "plain")
    assert all("negative_embeds" not in c and c["guidance_scale"] == 1.5 and c["sampler"] == "cfg" for c in calls)
    assert "negative_identity" not in manifest(tmp_path / "plain")[0]
    run_idiff(pipe, idiff_recipe("far"), tmp_path / "far")
    first = [p.read_bytes() for p in sorted((tmp_path / "plain" / "export" / "imagefolder").rglob("*.jpg"))]
    steered = [p.read_bytes() for p in sorted((tmp_path / "far" / "export" / "imagefolder").rglob("*.jpg"))]
    assert len(first) == len(steered) == 21 and all(a != b for a, b in zip(first, steered))


# ------------------------------------------------------------------ collision resampling


class _PhotoFamily(GeneratorFamily):
    """A test double declaring "sampler" and "negatives": its pipeline returns uint8 photos as they are."""

    name = "photo-double"
    options = frozenset({"sampler", "negatives"})

    def call_kwargs(self, pipeline, settings):
        return {}

    def negative_kwargs(self, pipeline, negatives):
        return {"negative_embeds": negatives}

    def to_uint8(self, images):
        return images


class _PhotoPipeline:
    """PhotoRenderer behind the family pipeline call, recording each call's seeds and negatives."""

    def __init__(self, photos: PhotoRenderer):
        self.photos, self.calls = photos, []

    def __call__(self, id_embeds, generator, output_type, negative_embeds):
        seeds = [g.initial_seed() for g in generator]
        self.calls.append((seeds, negative_embeds.numpy()))
        return SimpleNamespace(images=self.photos(id_embeds.numpy(), seeds))


def test_a_replaced_identity_s_negative_is_chosen_over_the_set_with_its_replacement_in_place(tmp_path):
    """The bounded perturbation's rule: a resampling round's images take their negatives over the vectors
    as they stand in that round, the shards' over the sampled bank."""
    from synthface.faces import get_analyzer

    recipe = photo_recipe(collision_policy="resample")
    recipe.identities.seed = 2  # a bank whose replaced identity 3 gets another far negative (2, then 1)
    recipe.generation.sampler = {"negative": "far"}
    out = tmp_path / "run"
    layout = engine.prepare_output(recipe, out)
    sampled = engine.ensure_identities(recipe, layout, engine.Ranks()).vectors
    pipeline = _PhotoPipeline(PhotoRenderer(sampled, recipe.seed, {}, people=PLANTED, spare=(5,)))
    renderer = Renderer(pipeline, _PhotoFamily(), "photo-double", engine.render_settings(recipe))
    summary = engine.run(recipe, out, renderer=renderer, analyzer=get_analyzer("dlib"), wait_seconds=5)
    assert summary.stats["identities_replaced"] == 1
    final = load_bank(out / "identities.safetensors").vectors  # one round: the set that round rendered from
    before, after = negative_indices(sampled, "far").numpy(), negative_indices(final, "far").numpy()
    assert before[3] != after[3]  # the replacement has another negative
    rows = manifest(out)
    assert {r["identity"] for r in rows if r["vector_round"] == 1} == {3}
    for r in rows:
        assert r["negative_identity"] == (after if r["vector_round"] == 1 else before)[r["identity"]]
    by_seed = {r["seed"]: r for r in rows}
    for seeds, negatives in pipeline.calls:
        for seed, negative in zip(seeds, negatives):
            r = by_seed[seed]
            vectors = final if r["vector_round"] == 1 else sampled
            assert np.array_equal(negative, vectors[r["negative_identity"]])
    assert sum(len(s) for s, _ in pipeline.calls) == len(rows) == 15


# ------------------------------------------------------------------ refusals


def test_a_family_without_a_sampler_choice_is_refused_before_the_folder_exists(tmp_path):
    recipe = small_recipe(generation={"sampler": {"name": "uiface"}})  # model "test-double": the Arc2Face family
    with pytest.raises(InvalidInputError) as info:
        engine.run(recipe, tmp_path / "run")
    message = str(info.value)
    assert message == ("The recipe sets [generation.sampler] (name = 'uiface'), but generation.model = 'test-double' "
                       "renders with the Arc2Face family, which offers no choice of denoising procedure. Use a model of "
                       f"a family that does ({families_with('sampler')}), or remove the [generation.sampler] section.")
    assert families_with("sampler").startswith("IDiff-Face: ")  # read from the family declarations
    assert not (tmp_path / "run").exists()


def test_a_family_without_negatives_is_refused_for_a_negative(tmp_path):
    class NoNegatives(_PhotoFamily):
        options = frozenset({"sampler"})

    class NoSampler(_PhotoFamily):
        options = frozenset({"steps", "guidance"})

    recipe = small_recipe(generation={"sampler": {"negative": "far"}})
    renderer = Renderer(_PhotoPipeline(None), NoNegatives(), "stub", engine.render_settings(recipe))
    with pytest.raises(InvalidInputError, match=r"negative = 'far' \(NegFaceDiff's negative identities\), but the "
                       r"'photo-double' renderer of 'stub' renders with the photo-double family, which takes none\. "
                       r"Use a model of a family that takes them \(IDiff-Face: .*\), or remove negative\.$"):
        engine.run(recipe, tmp_path / "run", renderer=renderer)
    with pytest.raises(InvalidInputError, match="family, which offers no choice of denoising procedure"):
        engine.run(recipe, tmp_path / "run", renderer=Renderer(None, NoSampler(), "stub"))
    assert not (tmp_path / "run").exists()


def test_a_plain_function_takes_the_section_but_not_a_negative(tmp_path):
    """A plain f(conditions, seeds) renders with its own settings (as with steps and guidance), but it has
    no way to take negatives: a negative recipe is refused like a pose recipe."""
    with pytest.raises(InvalidInputError, match=r"the renderer .*render is a plain function, which takes no negatives"):
        engine.run(small_recipe(generation={"sampler": {"negative": "close"}}), tmp_path / "neg",
                   renderer=noise_renderer())
    assert not (tmp_path / "neg").exists()
    engine.run(small_recipe(generation={"sampler": {"name": "ddpm"}}), tmp_path / "ddpm", renderer=noise_renderer())
    engine.run(small_recipe(), tmp_path / "plain", renderer=noise_renderer())
    assert data_files(tmp_path / "ddpm").keys() == data_files(tmp_path / "plain").keys()


def test_render_settings_carry_the_section_as_a_mapping():
    recipe = idiff_recipe("close", generation={"sampler": {"name": "ddpm", "negative": "close", "adaptive_negative": True}})
    settings = engine.render_settings(recipe)
    assert (settings.steps, settings.guidance, settings.resolution) == (2, 2.0, None)
    assert settings.sampler == {"name": "ddpm", "mse_threshold": 0.006, "stage_threshold": 500, "negative": "close",
                                "negative_scale": 0.5, "adaptive_negative": True}
