"""Identity sampling speed against the physical limit and a Vec2Face-style reference sampler.

Prints, for one run on one machine: the wall time, peak resident memory, kernel time and page
faults of sampling (and saving) N identities at max_cos 0.3 for the isotropic prior and an
anisotropic Gaussian prior, with the exact max cosine the sampler recorded (and, with --verify,
the independent all-pairs check); the accuracy of the progress ETA after the first tenth of the
run; the time of one exact all-pairs float32 GEMM pass over N vectors (what any exact check must
at least do), timed on a slice of rows and extrapolated; with --cli, `synthface ids sample` against
the library's sampling time plus interpreter start-up; and the time of a reference greedy sampler
written as the Vec2Face authors describe theirs (3x over-sampling, a FAISS flat inner-product
search per candidate batch of 50K, greedy acceptance inside the batch). Ratios are against
timings taken in this same process, so a noisy machine affects both sides.

    python benchmarks/bench_identity.py --num 100000 --skip-reference
    python benchmarks/bench_identity.py --num 300000 --priors isotropic --screen int8 --skip-reference
    python benchmarks/bench_identity.py --num 20000 --cli --skip-reference
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def exact_pass_seconds(vectors: np.ndarray, block: int = 8192, rows: int = 16384) -> float:
    """One full all-pairs float32 GEMM pass (every block of rows against every vector, keeping row
    maxima), timed on its first `rows` rows and extrapolated to all of them."""
    t = torch.from_numpy(vectors)
    rows = min(rows, len(t))
    start = time.perf_counter()
    for i in range(0, rows, block):
        for j in range(0, len(t), block):
            (t[i : i + block] @ t[j : j + block].T).amax(dim=1)
    return (time.perf_counter() - start) * len(t) / rows


def usage() -> dict[str, float]:
    """This process's peak resident memory (GiB), kernel CPU seconds and minor page faults so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_rss_gib": ru.ru_maxrss / 2**20, "kernel_s": ru.ru_stime, "user_s": ru.ru_utime,
            "minor_faults": ru.ru_minflt}


def eta_error(points: list[tuple[float, float | None]], total: float) -> float | None:
    """The largest relative error |ETA - time actually left| / time actually left of the ETAs reported
    after the first tenth of the run (the last 2 % left out: one batch's jitter there is most of it).
    Wall time: another process taking the cores later in the run shows up as error."""
    errors = [abs(eta - (total - t)) / (total - t) for t, eta in points if eta is not None and total / 10 <= t < total * 0.98]
    return round(max(errors), 3) if errors else None


def eta_first_shown(points: list[tuple[float, float | None]], total: float) -> float | None:
    """The share of the run that had passed when the first ETA was shown."""
    return next((round(t / total, 3) for t, eta in points if eta is not None), None)


def cli_seconds(num: int, seed: int) -> tuple[float, float]:
    """Wall time of `synthface ids sample --num num` and of the interpreter start-up it includes
    (python importing torch and synthface.identity), each in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "synthface", "ids", "sample", "--num", str(num), "--max-cos",
                        str(THRESHOLD), "--seed", str(seed), "--out", str(Path(tmp) / "ids.safetensors")],
                       check=True, capture_output=True)
        command = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import synthface.cli, synthface.identity"], check=True)
    return command, time.perf_counter() - start


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
    parser.add_argument("--screen", choices=("auto", "float32", "bfloat16", "int8"), default="auto",
                        help="the screen for the bank checks (auto: this machine's cached probe decides)")
    parser.add_argument("--verify", action="store_true", help="also time the independent all-pairs check")
    parser.add_argument("--cli", action="store_true", help="also time `synthface ids sample` in a fresh process")
    parser.add_argument("--priors", default="isotropic,gaussian", help="comma-separated: isotropic, gaussian")
    parser.add_argument("--skip-exact-pass", action="store_true",
                        help="do not time the exact all-pairs pass (minutes at 1M; no ratios against it)")
    parser.add_argument("--eta-trace", type=Path, default=None,
                        help="write every progress report (seconds, accepted, ETA) per prior to this JSON file")
    args = parser.parse_args()
    if args.screen != "auto":
        screening.SCREEN = args.screen != "float32"
        screening.INT8 = args.screen == "int8"
    screen = screening.gemm_screen(torch.device("cpu"), torch.randn(8, DIM))
    results: dict[str, object] = {
        "num": args.num,
        "max_cos": THRESHOLD,
        "torch_threads": torch.get_num_threads(),
        "screen": "float32" if screen is None else f"{screen.name} + float32 recheck",
        "bank_gib": round(args.num * DIM * 4 / 2**30, 3),
        "before_sampling": usage(),
    }
    priors = {"isotropic": isotropic_prior(DIM), "gaussian": anisotropic_prior()}
    names = args.priors.split(",")
    traces: dict[str, dict] = {}
    for name in names:
        before, points = usage(), []
        start = time.perf_counter()
        bank = sample_identities(args.num, max_cos=THRESHOLD, prior=priors[name], seed=args.seed, device="cpu",
                                 progress=lambda s: points.append((time.perf_counter() - start, s.eta_s, s.accepted)))
        sampled = time.perf_counter() - start
        traces[name] = {"total_s": sampled, "points": points}
        points = [(t, eta) for t, eta, _ in points]
        with tempfile.TemporaryDirectory() as tmp:
            saved = time.perf_counter()
            bank.save(Path(tmp) / "ids.safetensors")
            saved = time.perf_counter() - saved
        after = usage()
        entry = {
            "sample_s": round(sampled, 2),
            "save_s": round(saved, 2),
            "max_cos_recorded": round(bank.separation(bins=0).max_cos, 4),
            "eta_max_error_after_first_tenth": eta_error(points, sampled),
            "eta_first_shown_at": eta_first_shown(points, sampled),
            "peak_rss_gib": round(after["peak_rss_gib"], 3),
            "kernel_s": round(after["kernel_s"] - before["kernel_s"], 2),
            "cpu_s": round(after["user_s"] + after["kernel_s"] - before["user_s"] - before["kernel_s"], 2),
            "minor_faults": after["minor_faults"] - before["minor_faults"],
        }
        entry["peak_over_bank"] = round(entry["peak_rss_gib"] / results["bank_gib"], 2)
        if args.verify:
            check = verify(bank, bins=0, device="cpu")
            entry.update(verify_s=round(check.seconds, 2), max_cos_verified=round(check.max_cos, 4))
        results[name] = entry
        print(f"{name}: {json.dumps(entry)}", flush=True)
        if args.eta_trace is not None:
            args.eta_trace.write_text(json.dumps(traces))

    if not args.skip_exact_pass:
        limit = exact_pass_seconds(bank.vectors)
        results["exact_pass_s"] = round(limit, 2)
        for name in names:
            entry = results[name]
            entry["sample_over_exact_pass"] = round(entry["sample_s"] / limit, 3)
            if args.verify:
                entry["sample_and_verify_over_exact_pass"] = round((entry["sample_s"] + entry["verify_s"]) / limit, 3)
        print(f"one exact all-pairs GEMM pass (extrapolated from a slice): {limit:.1f} s", flush=True)

    if args.cli:
        command, startup = cli_seconds(args.num, args.seed)
        library = results["isotropic"]["sample_s"] + results["isotropic"]["save_s"]
        results["cli"] = {"ids_sample_s": round(command, 2), "startup_s": round(startup, 2),
                          "over_library_plus_startup": round(command / (library + startup), 2)}
        print(f"cli: {json.dumps(results['cli'])}", flush=True)

    if not args.skip_reference:
        for name, prior in priors.items():
            vectors, seconds = reference_greedy(prior, args.num, THRESHOLD, args.seed)
            results[name]["reference_s"] = round(seconds, 2)
            results[name]["reference_reached"] = int(len(vectors))
            # Our sampling also yields the bank's exact nearest-neighbour cosines; the reference's bank is unchecked.
            results[name]["sampling_speedup_vs_reference"] = round(seconds / results[name]["sample_s"], 2)
            print(f"reference greedy ({name}): {len(vectors)} identities in {seconds:.1f} s", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
