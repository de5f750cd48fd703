"""Thin re-export: the .bin verification protocol lives in synthface.fr.benchmarks.bin, recognisers in
synthface.fr.benchmarks.recognizers, results.json in synthface.fr.benchmarks.registry."""

from synthface.fr.benchmarks.bin import (  # noqa: F401
    BIN_MAX_PIXELS,
    NUM_FOLDS,
    STANDARD_SETS,
    TAR_FAR,
    THRESHOLDS,
    WHERE_BINS,
    Accuracy,
    BinPack,
    SetResult,
    decode_image,
    embed_pack,
    evaluate,
    find_bins,
    fold_bounds,
    image_size,
    pair_distances,
    read_bin,
    tar_at_far,
    ten_fold_accuracy,
    threshold_at_far,
    verify_pack,
    write_bin,
)
from synthface.fr.benchmarks.recognizers import (  # noqa: F401
    Recognizer,
    check_finite,
    load_backbone,
    load_recognizer,
    torch_recognizer,
)
from synthface.fr.benchmarks.registry import write_results  # noqa: F401
