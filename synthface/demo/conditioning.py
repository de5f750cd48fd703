"""What the demo conditions a generator on: the family's own recogniser (each family declares it,
`GeneratorFamily.recognisers`), or, for a random-weight test model without it, a stand-in.

The stand-in maps the analyser's descriptor to 512-d through a fixed random orthogonal projection:
it exercises the plumbing only and carries no identity. A real model refuses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthface.errors import InvalidInputError, ModelNotFoundError

CONDITIONING_DIM = 512
#: Seed of the stand-in projection; fixed so a photo always maps to the same stand-in vector.
STANDIN_SEED = 7_2024
STANDIN_NOTE = (
    "Stand-in identity vector (plumbing only): the conditioning recogniser ({missing}) is not "
    "installed, so the photo's {analyzer} descriptor is mapped to 512-d by a fixed random orthogonal "
    "projection. A random-weight test model accepts any 512-d vector; to draw the same person with a real "
    "{family} model, run `synthface models download {recogniser}`."
)

STANDIN_SHORT = "Stand-in identity vector (plumbing only; see the note at the top of the page)."
CONDITIONER_SHORT = "Conditioning recogniser: see the note at the top of the page."


class StandInConditioner:
    """Plumbing-only conditioning: analyser descriptor -> fixed orthogonal projection -> unit 512-d.
    `model` (the generator it conditions) only words the note: which recogniser would draw the person."""

    name = "stand-in"

    def __init__(self, in_dim: int, analyzer_name: str, dim: int = CONDITIONING_DIM, seed: int = STANDIN_SEED,
                 *, model: str) -> None:
        self.projection = standin_projection(in_dim, dim, seed)
        from synthface.generators import family_for

        family = family_for(model)
        self.note = STANDIN_NOTE.format(analyzer=analyzer_name, family=family.display_name,
                                        missing=", ".join(family.conditioning(model)) or "none declared",
                                        recogniser=(family.recognisers or ("its recogniser",))[0])

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence) -> np.ndarray:
        from synthface.faces import l2_normalize

        return l2_normalize(np.stack([f.embedding for f in faces]) @ self.projection.T)


def standin_projection(in_dim: int, dim: int = CONDITIONING_DIM, seed: int = STANDIN_SEED) -> np.ndarray:
    """(dim, in_dim) matrix with orthonormal columns (so it preserves cosines), fixed by `seed`."""
    if in_dim > dim:
        raise InvalidInputError(f"cannot project {in_dim}-d descriptors into {dim}-d orthogonally.")
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, in_dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)  # sign fix: unique for a given seed


def make_conditioner(kind: str, model: str, analyzer, *, allow_pickle: bool | None = None):
    """"arcface" (the conditioning recogniser `model`'s family declares, found locally:
    `GeneratorFamily.conditioner`), "stand-in", or "auto": the family's recogniser when installed, else
    the stand-in for a random-weight test model; a real model without its recogniser is an error."""
    if kind not in ("auto", "arcface", "stand-in"):
        raise InvalidInputError(f"conditioner must be 'auto', 'arcface' or 'stand-in', got {kind!r}.")
    if kind == "stand-in":
        return StandInConditioner(analyzer.embedding_dim, analyzer.name, model=model)
    from synthface.generators import family_for

    family = family_for(model)
    try:
        return family.conditioner(model, analyzer, allow_pickle=allow_pickle)
    except ModelNotFoundError:
        if kind == "auto" and family.is_random(model):
            return StandInConditioner(analyzer.embedding_dim, analyzer.name, model=model)
        raise
