"""insightface-style analysis: SCRFD detection and an ArcFace ONNX recogniser.

Works from a model-pack folder (antelopev2, buffalo_l: detector + recogniser side by side) or from
explicit ONNX files (e.g. Arc2Face's `arcface.onnx`). Both models run on onnxruntime with
providers picked automatically, or inside torch (`runtime="torch"`: detection, alignment and
recognition batched on the GPU next to the diffusion model, without onnxruntime-gpu). insightface's pretrained models are licensed for
non-commercial research only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError, ModelNotFoundError
from synthface.faces.image import as_rgb_uint8, check_image_bounds
from synthface.faces.types import AnalyzerBase, Face, _as_list, l2_normalize, largest_first
from synthface.weights import Licence

#: Cosine above which two ArcFace embeddings are usually the same person (the common 1:1 operating
#: point on LFW-style benchmarks); what every ArcFace-style analyser declares as `same_person_cos`.
ARCFACE_SAME_PERSON_COS = 0.3
#: Detection input sizes tried in turn when nothing is found: a face that fills the frame is too
#: big for SCRFD at 640, and smaller inputs make it the size the detector was trained on.
DET_SIZE_FALLBACK = (640, 480, 320, 256, 160)


def select_providers(preferred: Sequence[str] | None = None) -> list[str]:
    """onnxruntime providers to use: `preferred` if given, else CUDA when present, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if preferred:
        missing = [p for p in preferred if p not in available]
        if missing:
            raise InvalidInputError(
                f"onnxruntime provider(s) {', '.join(missing)} are not available here (available: "
                f"{', '.join(available)}). For CUDA install the onnxruntime-gpu build matching your CUDA, "
                "or use runtime='torch' to run the recogniser inside torch."
            )
        return list(preferred)
    order = ["CUDAExecutionProvider", "CoreMLExecutionProvider", "CPUExecutionProvider"]
    return [p for p in order if p in available] or available


def _session(path: Path, providers: Sequence[str] | None):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=select_providers(providers))
    except InvalidInputError:
        raise
    except Exception as exc:
        raise FileFormatError(f"Cannot load {path} as an ONNX model: {str(exc).splitlines()[0]}") from None


def _input_normalisation(model) -> tuple[float, float]:
    """(mean, std) the recogniser expects on 0-255 RGB input.

    Graphs converted from MXNet subtract and scale inside the graph (Sub and Mul among their first
    nodes) and take raw pixels; PyTorch-exported ArcFace graphs expect (x - 127.5) / 127.5.
    """
    first = model.graph.node[:8]
    names = [n.name for n in first] + [n.op_type for n in first]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


class ArcFaceRecognizer:
    """An ArcFace-style ONNX recogniser: aligned RGB crops -> unit-norm embeddings.

    runtime: "onnxruntime" (providers chosen automatically) or "torch" (graph converted to torch
    ops, run on `device`, batched; no onnxruntime-gpu needed).
    """

    def __init__(self, path: str | Path, *, runtime: str = "onnxruntime", providers=None, device=None, batch_size: int = 64):
        from synthface.faces.onnx_torch import read_onnx

        path = Path(path)
        model = read_onnx(path, "Recogniser")
        inp = next(i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
        dims = [d.dim_value or None for d in inp.type.tensor_type.shape.dim]
        if len(dims) != 4 or dims[1] != 3 or dims[2] is None or dims[2] != dims[3]:
            raise FileFormatError(
                f"{path.name} does not look like a face recogniser: its input is {dims}, expected "
                "(N, 3, S, S). Is it a detector or another model from the pack?"
            )
        out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
        self.path, self.runtime, self.batch_size = path, runtime, batch_size
        self.input_size = int(dims[2])
        self.fixed_batch = dims[0]  # None when dynamic
        self.embedding_dim = int(out_dims[-1])
        self.mean, self.std = _input_normalisation(model)
        if runtime == "onnxruntime":
            self._session = _session(path, providers)
            self._input_name = self._session.get_inputs()[0].name
        elif runtime == "torch":
            import torch

            from synthface.faces.onnx_torch import OnnxModule

            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            #: the graph as a torch module; `module.to(dtype=torch.bfloat16)` makes recognition run in
            #: that dtype (inputs are cast to it, embeddings come back float32)
            self.module = OnnxModule(model).eval().to(self.device)
        else:
            raise InvalidInputError(f"runtime must be 'onnxruntime' or 'torch', got {runtime!r}")

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB crops -> (N, D) float32 unit-norm."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3) or crops.dtype != np.uint8:
            raise InvalidInputError(
                f"{self.path.name} takes uint8 RGB crops of shape (N, {self.input_size}, {self.input_size}, 3); "
                f"got {crops.dtype} {crops.shape}. Align faces with synthface.faces.align.norm_crop first."
            )
        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        step = 1 if self.fixed_batch == 1 else self.batch_size
        out = [self._run(crops[i : i + step]) for i in range(0, len(crops), step)]
        return l2_normalize(np.concatenate(out))

    def _blob(self, crops: np.ndarray) -> np.ndarray:
        x = crops.astype(np.float32).transpose(0, 3, 1, 2)
        return np.ascontiguousarray((x - self.mean) / self.std)

    def _run(self, crops: np.ndarray) -> np.ndarray:
        if self.runtime == "onnxruntime":
            return self._session.run(None, {self._input_name: self._blob(crops)})[0]
        import torch

        x = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float()
        return self.forward_tensor(x).cpu().numpy()

    def embed_images(self, images: Sequence[np.ndarray], kps: Sequence[np.ndarray]) -> np.ndarray:
        """torch runtime only: align and embed on the device. images: uint8 RGB (H, W, 3), kps: one
        (F_i, 5, 2) array of landmarks per image -> (sum F_i, D) unit-norm float32, faces in order.

        Each image is uploaded once; images of one size are warped together (`norm_crop_torch`) and
        embedded `batch_size` crops at a time, so nothing but the landmarks and the embeddings
        crosses between host and device. The bilinear warp is not rounded to uint8 as cv2's is, so
        embeddings differ from the CPU path (`norm_crop` + `__call__`) by a cosine below 1e-3
        (measured on real photos: tests/test_faces_device.py).
        """
        import torch

        from synthface.faces.align import norm_crop_torch

        if self.runtime != "torch":
            raise InvalidInputError("embed_images needs runtime='torch'")
        counts = [len(k) for k in kps]
        out = np.zeros((sum(counts), self.embedding_dim), dtype=np.float32)
        starts = np.cumsum([0, *counts])
        by_shape: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            if counts[i]:
                by_shape.setdefault(image.shape, []).append(i)
        for members in by_shape.values():
            pixels = torch.from_numpy(np.stack([images[i] for i in members])).to(self.device)
            owner = torch.tensor([j for j, i in enumerate(members) for _ in range(counts[i])], device=self.device)
            points = torch.from_numpy(np.concatenate([np.asarray(kps[i], np.float32) for i in members]))
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in members])
            for lo in range(0, len(rows), self.batch_size):
                chunk = slice(lo, lo + self.batch_size)
                crops = norm_crop_torch(pixels[owner[chunk]], points[chunk].to(self.device), self.input_size)
                out[rows[chunk]] = self.forward_tensor(crops).cpu().numpy()
        return out

    def forward_tensor(self, x):
        """torch runtime only: (N, 3, S, S) float 0-255 RGB tensor -> (N, D) unit-norm, same device.

        Takes `synthface.faces.align.norm_crop_torch` output directly, so render -> align -> embed
        never leaves the GPU.
        """
        import torch

        if self.runtime != "torch":
            raise InvalidInputError("forward_tensor needs runtime='torch'")
        with torch.inference_mode():
            dtype = next((b.dtype for b in self.module.buffers() if b.is_floating_point()), torch.float32)
            y = self.module(((x - self.mean) / self.std).to(dtype))
        return torch.nn.functional.normalize(y.float(), dim=-1)


def find_pack_files(folder: str | Path) -> tuple[Path, Path]:
    """(detector, recogniser) ONNX files in an insightface model-pack folder, with clear errors
    for the usual mistakes: a pack nested one level too deep, or one missing a model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"Model pack folder {folder} does not exist.")
    onnx_files = sorted(folder.glob("*.onnx"))
    if not onnx_files:
        nested = sorted(folder.glob("*/*.onnx"))
        if nested:
            inner = nested[0].parent
            raise ModelNotFoundError(
                f"The model pack is nested: its ONNX files are in {inner}, not in {folder}. Unzipping "
                f"often adds an extra folder level; move them up with: mv {inner}/*.onnx {folder}/"
            )
        raise ModelNotFoundError(f"No ONNX files in {folder}; the model pack is missing or empty.")
    detector = recognizer = None
    for f in onnx_files:
        kind = _classify(f)
        if kind == "detector" and detector is None:
            detector = f
        elif kind == "recognizer" and recognizer is None:
            recognizer = f
    if detector is None or recognizer is None:
        need = " and ".join(k for k, v in (("a SCRFD detector", detector), ("an ArcFace recogniser", recognizer)) if v is None)
        raise ModelNotFoundError(
            f"The model pack in {folder} is incomplete: it lacks {need} (found: "
            f"{', '.join(f.name for f in onnx_files)}). Download the whole pack again."
        )
    return detector, recognizer


def _classify(path: Path) -> str:
    """'detector' (SCRFD: several outputs), 'recognizer' (one (N, D) output from a square face
    crop of 112 or more) or 'other' (landmarks, gender/age, ...), from the graph's signature."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return "other"
    init = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if len(inputs) != 1:
        return "other"
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    outputs = model.graph.output
    if len(outputs) >= 6:
        return "detector"
    out_dims = [d.dim_value for d in outputs[0].type.tensor_type.shape.dim]
    if len(outputs) == 1 and len(dims) == 4 and dims[2] == dims[3] and dims[2] >= 112 and len(out_dims) == 2 and out_dims[1] >= 128:
        return "recognizer"
    return "other"


class InsightFaceAnalyzer(AnalyzerBase):
    """SCRFD detection + ArcFace recognition from a pack (`pack="antelopev2"` or a folder) or files.

    detector: a SCRFD ONNX path, or "dlib" to detect with the offline dlib backend instead.
    recognizer: an ArcFace ONNX path (e.g. Arc2Face's arcface.onnx); overrides the pack's.
    runtime: "onnxruntime" (the default) or "torch". With "torch" everything runs on `device`
    (default: CUDA when torch sees it, else the CPU): SCRFD detects a batch of images per forward
    (`synthface.faces.scrfd.ScrfdDetector`: the graph through the ONNX->torch runner, decoding and
    NMS in torch), faces are aligned by batched `norm_crop_torch` and embedded by the recogniser in
    torch, so only uint8 images go up and boxes, landmarks and embeddings come back. A dlib
    detector stays on the CPU. Results equal the onnxruntime path's within the network's float
    error: the same faces in the same order, boxes and landmarks within 1e-3 px and scores within
    1e-5 (tests/test_faces_device_detect.py), embeddings within a cosine of 1e-3.
    det_size / det_thresh: SCRFD input size (a multiple of 32, 32 to 1280) and score threshold
    (0 to 1); smaller sizes from DET_SIZE_FALLBACK are tried when nothing is found (tight crops).

    Bounds: images over MAX_PIXELS pixels or MAX_ASPECT_RATIO:1 are refused (ImageError); SCRFD
    works on a det_size x det_size resized copy, so its memory does not grow with the image.
    """

    name = "insightface"
    same_person_cos = ARCFACE_SAME_PERSON_COS

    def __init__(
        self,
        *,
        pack: str | Path | None = None,
        detector: str | Path | None = None,
        recognizer: str | Path | None = None,
        runtime: str = "onnxruntime",
        providers: Sequence[str] | None = None,
        device=None,
        det_size: int = 640,
        det_thresh: float = 0.5,
        allow_download: bool = False,
    ) -> None:
        for key, value in (("pack", pack), ("detector", detector), ("recognizer", recognizer)):
            if value is not None and not isinstance(value, (str, Path)):
                raise InvalidInputError(
                    f"insightface analyser option {key} must be a pack name or a path, got {type(value).__name__} {value!r}."
                )
        if providers is not None and (isinstance(providers, str) or not all(isinstance(p, str) for p in providers)):
            raise InvalidInputError(
                f"insightface analyser option providers must be a list of onnxruntime provider names, got {providers!r}."
            )
        if not (isinstance(det_size, int) and not isinstance(det_size, bool) and 32 <= det_size <= 1280
                and det_size % 32 == 0):
            raise InvalidInputError(f"insightface analyser option det_size must be a multiple of 32 from 32 to 1280, got {det_size!r}.")
        if not (isinstance(det_thresh, (int, float)) and not isinstance(det_thresh, bool) and 0 <= det_thresh <= 1):
            raise InvalidInputError(f"insightface analyser option det_thresh must be a number from 0 to 1, got {det_thresh!r}.")
        if pack is None and (detector is None or recognizer is None):
            pack = "antelopev2"
        if pack is not None:
            folder = Path(pack)
            if not folder.is_dir():
                from synthface import weights

                folder = weights.find(str(pack), allow_download=allow_download)
            pack_det, pack_rec = find_pack_files(folder)
            detector = detector or pack_det
            recognizer = recognizer or pack_rec
        self.recognizer = ArcFaceRecognizer(recognizer, runtime=runtime, providers=providers, device=device)
        self.embedding_dim = self.recognizer.embedding_dim
        self.embedding_space, found = _provenance(Path(recognizer), detector)
        self.license, self.license_restricted = found.text, found.restricted
        self.det_size, self.det_thresh = det_size, det_thresh
        self._dlib = self._scrfd = self._device_scrfd = None
        if str(detector) == "dlib":
            from synthface.faces.dlib_backend import DlibAnalyzer

            self._dlib = DlibAnalyzer()
        elif runtime == "torch":
            from synthface.faces.scrfd import ScrfdDetector

            self._device_scrfd = ScrfdDetector(detector, device=self.recognizer.device, det_thresh=det_thresh)
        else:
            self._scrfd = self._load_scrfd(Path(detector), providers)

    @staticmethod
    def _load_scrfd(path: Path, providers):
        from insightface.model_zoo.scrfd import SCRFD

        if not path.is_file():
            raise ModelNotFoundError(f"Detector file {path} does not exist.")
        model = SCRFD(model_file=str(path), session=_session(path, providers))
        return model

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        images = [as_rgb_uint8(im) for im in _as_list(images)]
        if self._dlib is not None:
            return [[_rebrand(f, self.name) for f in faces] for faces in self._dlib.detect(images)]
        if self._device_scrfd is not None:
            return self._detect_on_device(images)
        return [self._detect_one(im) for im in images]

    def _det_sizes(self) -> list[int]:
        """det_size, then the smaller DET_SIZE_FALLBACK sizes, tried in turn while nothing is found."""
        return [self.det_size, *(s for s in DET_SIZE_FALLBACK if s < self.det_size)]

    def _faces(self, det: np.ndarray, kps: np.ndarray) -> list[Face]:
        return largest_first([Face(bbox=d[:4], kps=k, det_score=float(d[4]), backend=self.name) for d, k in zip(det, kps)])

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        check_image_bounds(image.shape[1], image.shape[0])
        bgr = np.ascontiguousarray(image[..., ::-1])
        for size in self._det_sizes():
            self._scrfd.prepare(0, input_size=(size, size), det_thresh=self.det_thresh)
            det, kps = self._scrfd.detect(bgr, input_size=(size, size))
            if det is not None and len(det):
                if kps is None:
                    raise FileFormatError("This SCRFD model gives no keypoints; use a *_kps detector (antelopev2, buffalo_l).")
                return self._faces(det, kps)
        return []

    def _detect_on_device(self, images: list[np.ndarray]) -> list[list[Face]]:
        """`_detect_one` for a whole batch on the device: every image at det_size in batched
        forwards, then only the images still without a face at each smaller fallback size."""
        for image in images:
            check_image_bounds(image.shape[1], image.shape[0])
        found: list[list[Face]] = [[] for _ in images]
        pending, tried = list(range(len(images))), set()
        for size in self._det_sizes():
            input_size = self._device_scrfd.input_size(size)
            if input_size in tried:  # a fixed-size graph runs at its own size whatever is asked
                continue
            tried.add(input_size)
            for i, (det, kps) in zip(pending, self._device_scrfd.detect([images[i] for i in pending], input_size)):
                found[i] = self._faces(det, kps)
            pending = [i for i in pending if not found[i]]
            if not pending:
                break
        return found

    def crops(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        from synthface.faces.align import norm_crop

        return np.stack([norm_crop(image, f.kps, size=self.recognizer.input_size) for f in faces])

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        return self.recognizer(aligned)

    def embed_faces(self, images: list[np.ndarray], faces: list[list[Face]]) -> np.ndarray:
        """runtime="torch": align and embed on the recogniser's device (`ArcFaceRecognizer.embed_images`);
        otherwise crop on the CPU with cv2 and embed with onnxruntime."""
        if self.recognizer.runtime != "torch":
            return super().embed_faces(images, faces)
        return self.recognizer.embed_images(images, [np.stack([f.kps for f in fs]) if fs else np.zeros((0, 5, 2))
                                                     for fs in faces])


def _provenance(recognizer: Path, detector) -> tuple[str, Licence]:
    """(embedding space, licence) of an analyser built from these files: the registered model each
    file belongs to (synthface.weights), or, for a file no registered model ships, its content digest
    as the space and an unknown (restricted) licence."""
    from synthface.weights import UNKNOWN_LICENCE, combined_licence, licence, model_of_file

    rec_model = model_of_file(recognizer)
    if rec_model is not None:
        space = f"arcface:{rec_model}"
    else:
        import hashlib

        with open(recognizer, "rb") as handle:
            space = f"onnx:{recognizer.name}:{hashlib.file_digest(handle, 'sha256').hexdigest()[:12]}"
    det_model = "dlib" if str(detector) == "dlib" else model_of_file(detector)
    return space, combined_licence([licence(m) if m else UNKNOWN_LICENCE for m in (rec_model, det_model)])


def _rebrand(face: Face, backend: str) -> Face:
    face.backend = backend
    return face
