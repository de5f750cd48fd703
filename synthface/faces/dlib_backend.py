"""The offline default: dlib's HOG (or MMOD CNN) detector, its landmark predictor and its 128-d
ResNet face descriptor, all shipped by the `face_recognition_models` wheel; no network needed.

Landmarks are turned into ArcFace-ordered five points so faces from every backend align the same
way. The default 5-point predictor gives the two corners of each eye and the base of the nose; the
68-point predictor (iBUG 300-W data: its licence excludes commercial use) is only an option.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthface.errors import InvalidInputError, ModelNotFoundError
from synthface.faces.align import ARCFACE_TEMPLATE, estimate_similarity, transform_points
from synthface.faces.image import as_rgb_uint8, check_image_bounds, fit_pixels
from synthface.faces.types import AnalyzerBase, Face, l2_normalize, largest_first

#: dlib's 150 x 150 descriptor chip (padding 0.25): where its 5-point predictor's points land
#: (eye corners image-right outer, inner, image-left outer, inner; base of the nose). Measured from
#: dlib.get_face_chip on the faces of insightface's t1.jpg and made left-right symmetric.
DLIB5_CHIP = np.array(
    [[109.6, 45.7], [89.76, 45.7], [39.4, 45.7], [59.24, 45.7], [74.5, 90.9]], dtype=np.float64
)
CHIP_SIZE = 150

#: ArcFace 112 template -> dlib chip: the similarity that puts the ArcFace eye points on the
#: midpoints of dlib's eye corners (eye centres are where both conventions agree).
_EYES_CHIP = np.array([DLIB5_CHIP[2:4].mean(0), DLIB5_CHIP[0:2].mean(0)])
ARCFACE_TO_CHIP = estimate_similarity(ARCFACE_TEMPLATE[:2], _EYES_CHIP)
#: The ArcFace five points in chip coordinates, and dlib's five points in ArcFace-template space.
ARCFACE_IN_CHIP = transform_points(ARCFACE_TEMPLATE, ARCFACE_TO_CHIP)
DLIB5_IN_ARCFACE = transform_points(DLIB5_CHIP, estimate_similarity(_EYES_CHIP, ARCFACE_TEMPLATE[:2]))

#: Euclidean distance below which dlib calls two descriptors the same person (its documentation).
DLIB_SAME_PERSON_DISTANCE = 0.6
#: Typical norm of a raw dlib descriptor (median over the faces in t1.jpg, astronaut, Tom Hanks).
DLIB_TYPICAL_NORM = 1.5
#: Cosine equivalent of dlib's rule for unit-normalised descriptors: for two vectors of norm n,
#: |a - b|^2 = 2 n^2 (1 - cos), so distance 0.6 at the typical norm is cos = 1 - 0.36 / (2 n^2).
DLIB_SAME_PERSON_COS = float(round(1.0 - DLIB_SAME_PERSON_DISTANCE**2 / (2 * DLIB_TYPICAL_NORM**2), 2))

#: Most pixels dlib's detector works on for one image, counting the padding of the retry and the
#: 4x of each upsampling: about 9-34 bytes and 0.07-0.5 us per pixel (flat to busy images), so at
#: most ~0.6 GB and a few seconds per pass. Larger work is downscaled first, coordinates mapped back.
DLIB_MAX_DETECT_PIXELS = 16_000_000
#: Upsampling allowed: each step doubles both sides (3 = 8x, faces down to ~10 px).
MAX_UPSAMPLE = 3

_MODEL_FILES = {
    "shape5": "shape_predictor_5_face_landmarks.dat",
    "shape68": "shape_predictor_68_face_landmarks.dat",
    "mmod": "mmod_human_face_detector.dat",
    "resnet": "dlib_face_recognition_resnet_model_v1.dat",
}


def model_path(key: str) -> Path:
    """Path of a dlib model file inside the installed `face_recognition_models` wheel."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "The dlib face models are not installed. Install them with "
            "`pip install dlib-bin face-recognition-models`."
        )
    path = Path(spec.origin).parent / "models" / _MODEL_FILES[key]
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path.name} is missing from the face_recognition_models install at {path.parent}. "
            "Reinstall it with `pip install --force-reinstall face-recognition-models`."
        )
    return path


class DlibAnalyzer(AnalyzerBase):
    """dlib detection + landmarks + 128-d ResNet descriptor (99.38 % on LFW).

    detector: "hog" (fast on CPU, frontal faces) or "mmod" (CNN, more poses, slow on CPU).
    landmarks: 5 (public domain, default) or 68 (licence excludes commercial use).
    upsample: how many times the detector doubles the image, 0 to MAX_UPSAMPLE (finds faces down
        to ~40 px at 1).
    pad_retry: when nothing is found, retry once on the image padded by this fraction per side
        (0 to 1), which rescues tight crops whose face touches the border.
    det_threshold: HOG score threshold (finite; higher finds fewer faces).
    num_jitters: descriptor re-samplings averaged per face (0 to 100; 0 is dlib's plain descriptor).

    Bounds: images over MAX_PIXELS pixels or MAX_ASPECT_RATIO:1 are refused (ImageError); each
    detection pass, padding and upsampling included, works on at most DLIB_MAX_DETECT_PIXELS
    pixels, the image being downscaled first when needed (boxes and points are mapped back).
    """

    name = "dlib"
    embedding_dim = 128
    embedding_space = "dlib-resnet-v1"
    same_person_cos = DLIB_SAME_PERSON_COS

    def __init__(
        self,
        *,
        detector: str = "hog",
        landmarks: int = 5,
        upsample: int = 1,
        det_threshold: float = 0.0,
        pad_retry: float = 0.3,
        num_jitters: int = 0,
    ) -> None:
        import dlib

        _check_option("detector", detector, detector in ("hog", "mmod"), "'hog' or 'mmod'")
        _check_option("landmarks", landmarks, landmarks in (5, 68) and not isinstance(landmarks, bool), "5 or 68")
        _check_option("upsample", upsample, _is_int(upsample) and 0 <= upsample <= MAX_UPSAMPLE,
                      f"an integer from 0 to {MAX_UPSAMPLE}")
        _check_option("det_threshold", det_threshold, _is_real(det_threshold), "a finite number")
        _check_option("pad_retry", pad_retry, _is_real(pad_retry) and 0 <= pad_retry <= 1, "a number from 0 to 1")
        _check_option("num_jitters", num_jitters, _is_int(num_jitters) and 0 <= num_jitters <= 100,
                      "an integer from 0 to 100")
        self.detector_name, self.landmarks = detector, landmarks
        self.upsample, self.det_threshold, self.pad_retry = upsample, det_threshold, pad_retry
        self.num_jitters = num_jitters
        if detector == "hog":
            self._detector = dlib.get_frontal_face_detector()
        else:
            self._detector = dlib.cnn_face_detection_model_v1(str(model_path("mmod")))
        self._predictor = dlib.shape_predictor(str(model_path("shape5" if landmarks == 5 else "shape68")))
        self._recognizer = dlib.face_recognition_model_v1(str(model_path("resnet")))
        from synthface.weights import combined_licence, licence

        # The licences are the registry's (synthface.weights): the 68-point predictor is a separate model.
        found = combined_licence([licence("dlib")] + ([licence("dlib-68")] if landmarks == 68 else []))
        self.license, self.license_restricted = found.text, found.restricted

    # -- detection ------------------------------------------------------------------------------

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        from synthface.faces.types import _as_list

        return [self._detect_one(as_rgb_uint8(im)) for im in _as_list(images)]

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        check_image_bounds(w, h)
        faces = self._detect_bounded(image, 0)
        if not faces and self.pad_retry > 0:
            faces = self._detect_bounded(image, int(round(self.pad_retry * max(h, w))))
        return largest_first(faces)

    def _detect_bounded(self, image: np.ndarray, pad: int) -> list[Face]:
        """Detect on `image` padded by `pad` pixels per side, downscaled first so that the detector
        works on at most DLIB_MAX_DETECT_PIXELS pixels; faces in `image`'s coordinates."""
        h, w = image.shape[:2]
        work = (h + 2 * pad) * (w + 2 * pad) * 4**self.upsample
        small = fit_pixels(image, max(1, h * w * DLIB_MAX_DETECT_PIXELS // work))
        sy, sx = small.shape[0] / h, small.shape[1] / w
        p = int(pad * min(sx, sy))
        faces = self._detect_at(np.pad(small, ((p, p), (p, p), (0, 0)), mode="edge") if p else small, p)
        if small is not image:  # downscaled: back to the caller's pixels
            scale = np.array([sx, sy], dtype=np.float32)
            for f in faces:
                f.kps, f.bbox = f.kps / scale, f.bbox / np.tile(scale, 2)
        return faces

    def _detect_at(self, image: np.ndarray, offset: int) -> list[Face]:
        import dlib

        if self.detector_name == "hog":
            rects, scores, _ = self._detector.run(image, self.upsample, self.det_threshold)
        else:
            found = self._detector(image, self.upsample)
            rects, scores = [d.rect for d in found], [d.confidence for d in found]
        faces = []
        for rect, score in zip(rects, scores):
            shape = self._predictor(image, dlib.rectangle(rect.left(), rect.top(), rect.right(), rect.bottom()))
            pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            kps = self._arcface_points(pts) - offset
            bbox = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64) - offset
            faces.append(Face(bbox=bbox, kps=kps, det_score=float(score), backend=self.name))
        return faces

    def _arcface_points(self, pts: np.ndarray) -> np.ndarray:
        if self.landmarks == 68:
            return np.array([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])
        # Fit dlib's five points to where they sit in ArcFace space, then place the template back.
        to_template = estimate_similarity(pts, DLIB5_IN_ARCFACE)
        back = estimate_similarity(transform_points(pts, to_template), pts)
        return transform_points(ARCFACE_TEMPLATE, back)

    # -- embedding ------------------------------------------------------------------------------

    def crops(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """150 x 150 dlib chips straight from the full image (sharper than resampling a 112 crop)."""
        import cv2

        chips = []
        for f in faces:
            m = estimate_similarity(f.kps, ARCFACE_IN_CHIP)
            chips.append(cv2.warpAffine(image, m, (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR))
        return np.stack(chips)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        return self._descriptors(crops)

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        """ArcFace-aligned (N, 112, 112, 3) crops -> (N, 128) unit vectors (resampled to dlib chips)."""
        import cv2

        aligned = _check_crops(aligned, 112)
        chips = np.stack([cv2.warpAffine(c, ARCFACE_TO_CHIP, (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR) for c in aligned])
        return self._descriptors(chips)

    def _descriptors(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        batch = [np.ascontiguousarray(c) for c in chips]
        raw = self._recognizer.compute_face_descriptor(batch, self.num_jitters)
        return l2_normalize(np.array([np.array(d) for d in raw], dtype=np.float32))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and np.isfinite(value)


def _check_option(name: str, value, ok: bool, accepted: str) -> None:
    if not ok:
        raise InvalidInputError(f"dlib analyser option {name} must be {accepted}, got {value!r}.")


def _check_crops(aligned: np.ndarray, size: int) -> np.ndarray:
    arr = np.asarray(aligned)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1:] != (size, size, 3) or arr.dtype != np.uint8:
        raise InvalidInputError(
            f"embed() takes aligned crops as uint8 (N, {size}, {size}, 3) RGB; got {arr.dtype} {tuple(np.shape(aligned))}. "
            "Use synthface.faces.align.norm_crop(image, face.kps) to make them."
        )
    return np.ascontiguousarray(arr)
