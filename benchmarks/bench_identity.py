"""Identity sampling speed against the physical limit and a Vec2Face-style reference sampler.

Prints, for one run on one machine: the time to sample and verify N identities at max_cos 0.3
for the isotropic prior and an anisotropic Gaussian prior; the time of one exact all-pairs GEMM
pass over N vectors (what any exact check must at least do); and the time of a reference greedy
sampler written as the Vec2Face authors describe theirs (3x over-sampling, a FAISS flat
inner-product search per candidate batch of 50K, greedy acceptance inside the batch).
Ratios are against timings taken in this same process, so a noisy machine affects both sides.

    python benchmarks/bench_identity.py --num 100000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from synthface import screening
from synthface.identity import gaussian_prior, isotropic_prior, sample_identities, verify

DIM = 512
THRESHOLD = 0.3


def anisotropic_prior(seed: int = 0):
    """A Gaussian fitted to 2000 synthetic references whose variance decays across dimensions,
    so plain draws have wider cosine spread than isotropic ones, as real ArcFace features do."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((2000, DIM)) * np.sqrt(np.exp(-np.arange(DIM) / 150.0))
    return gaussian_prior(ref)


def exact_pass_seconds(vectors: np.ndarray, block: int = 8192) -> float:
    """One full all-pairs GEMM pass (every block of rows against every vector), keeping row maxima."""
    t = torch.from_numpy(vectors)
    start = time.perf_counter()
    for i in range(0, len(t), block):
        (t[i : i + block] @ t.T).amax(dim=1)
    return time.perf_counter() - start


def reference_greedy(prior, n: int, threshold: float, seed: int, batch: int = 50_000) -> tuple[np.ndarray, float]:
    """Vec2Face-style: 3n candidates, FAISS flat IP search of each batch against the kept index,
    then greedy acceptance candidate by candidate inside the batch."""
    import faiss

    start = time.perf_counter()
    candidates = prior.draw(np.random.default_rng(seed), 3 * n)
    index = faiss.IndexFlatIP(prior.dim)
    kept_total = 0
    for lo in range(0, len(candidates), batch):
        chunk = candidates[lo : lo + batch]
        if index.ntotal:
            scores, _ = index.search(chunk, 1)
            chunk = chunk[scores[:, 0] <= threshold]
        kept = np.empty_like(chunk)
        count = 0
        for vec in chunk:
            if count == 0 or float((kept[:count] @ vec).max()) <= threshold:
                kept[count] = vec
                count += 1
                if kept_total + count == n:
                    break
        index.add(kept[:count])
        kept_total += count
        if kept_total == n:
            break
    vectors = index.reconstruct_n(0, index.ntotal)
    return vectors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true", help="skip the slow reference sampler")
    parser.add_argument("--no-screen", action="store_true", help="plain float32, no low-precision screening")
    parser.add_argument("--no-int8", action="store_true", help="screen in bfloat16 even where int8 is faster")
    args = parser.parse_args()
    if args.no_screen:
        screening.SCREEN = False
    if args.no_int8:
        screening.INT8 = False
    screen = screening.gemm_screen(torch.device("cpu"), torch.randn(8, DIM))
    results: dict[str, object] = {
        "num": args.num,
        "max_cos": THRESHOLD,
        "torch_threads": torch.get_num_threads(),
        "screen": "float32" if screen is None else f"{screen.name} + float32 recheck",
    }

    for name, prior in (("isotropic", isotropic_prior(DIM)), ("gaussian", anisotropic_prior())):
        start = time.perf_counter()
        bank = sample_identities(args.num, max_cos=THRESHOLD, prior=prior, seed=args.seed, device="cpu")
        sampled = time.perf_counter() - start
        check = verify(bank, bins=0, device="cpu")
        results[name] = {
            "sample_s": round(sampled, 2),
            "verify_s": round(check.seconds, 2),
            "max_cos": round(check.max_cos, 4),
        }
        print(f"{name}: sampled {args.num} in {sampled:.1f} s, verified in {check.seconds:.1f} s, max cos {check.max_cos:.4f}", flush=True)

    limit = exact_pass_seconds(bank.vectors)
    results["exact_pass_s"] = round(limit, 2)
    for name in ("isotropic", "gaussian"):
        entry = results[name]
        entry["sample_and_verify_over_exact_pass"] = round((entry["sample_s"] + entry["verify_s"]) / limit, 2)
    print(f"one exact all-pairs GEMM pass: {limit:.1f} s", flush=True)

    if not args.skip_reference:
        for name, prior in (("isotropic", isotropic_prior(DIM)), ("gaussian", anisotropic_prior())):
            vectors, seconds = reference_greedy(prior, args.num, THRESHOLD, args.seed)
            ours = results[name]["sample_s"] + results[name]["verify_s"]
            results[name]["reference_s"] = round(seconds, 2)
            results[name]["reference_reached"] = int(len(vectors))
            results[name]["speedup_vs_reference"] = round(seconds / ours, 2)
            # The reference only samples (its bank is never checked): like for like, sampling alone.
            results[name]["sampling_speedup_vs_reference"] = round(seconds / results[name]["sample_s"], 2)
            print(f"reference greedy ({name}): {len(vectors)} identities in {seconds:.1f} s", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
