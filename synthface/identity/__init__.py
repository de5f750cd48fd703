"""Identity banks: well-separated unit vectors in a face recogniser's embedding space.

`sample_identities` draws candidates from a prior and keeps one only if its cosine to every kept
vector (and to every excluded real person) is at most the threshold. Checks are blocked matrix
products on CPU or CUDA, so memory stays bounded (never an N x N matrix) and the total work is
about one all-pairs GEMM pass. An infeasible threshold ends in bounded time with an error that
says how far sampling got and which threshold would work.

One module per job: `prior` (distributions on the sphere), `bank` (`IdentityBank` and its file
format), `separation` (the separation statistics and the screened checks that keep it), `sample`
(`sample_identities` and its checkpoints), `eta`, `feasibility`, `verify`, `perturb`, `bounded`
(IDperturb's bounded perturbation: each variant at a random cosine no nearer the bisector towards
its identity's nearest neighbour, `bounded_perturb`), `replace` (`draw_replacements`) and `negatives`
(NegFaceDiff's far / close / mid negative identity of each identity, `negative_indices`). This
package re-exports their public names.
"""

from synthface.identity._vectors import UNIT_ATOL
from synthface.identity.bank import BANK_FORMAT, IdentityBank, load_bank, load_vectors
from synthface.identity.bounded import (
    bank_nearest_cosines,
    bounded_cosines,
    bounded_perturb,
    lower_bounds,
    nearest_cosines,
)
from synthface.identity.feasibility import FEASIBLE_CAP
from synthface.identity.negatives import negative_embeddings, negative_indices
from synthface.identity.perturb import mixture_cosines, perturb
from synthface.identity.prior import PRIORS, Prior, gaussian_prior, isotropic_prior
from synthface.identity.replace import REPLACEMENT_DRAWS, draw_replacements
from synthface.identity.sample import (
    CHECKPOINT_EVERY,
    CHECKPOINT_FORMAT,
    GUARANTEE_MARGIN,
    ProgressCallback,
    SamplingProgress,
    sample_identities,
)
from synthface.identity.separation import MAX_BINS, Verification
from synthface.identity.verify import verify, verify_vectors

__all__ = [
    "BANK_FORMAT", "CHECKPOINT_EVERY", "CHECKPOINT_FORMAT", "FEASIBLE_CAP", "GUARANTEE_MARGIN", "MAX_BINS",
    "PRIORS", "REPLACEMENT_DRAWS", "UNIT_ATOL", "IdentityBank", "Prior", "ProgressCallback", "SamplingProgress",
    "Verification", "draw_replacements", "gaussian_prior", "isotropic_prior", "load_bank", "load_vectors",
    "bank_nearest_cosines", "bounded_cosines", "bounded_perturb", "lower_bounds", "mixture_cosines", "nearest_cosines",
    "negative_embeddings", "negative_indices", "perturb", "sample_identities", "verify", "verify_vectors",
]
