"""`synthface embed`: detect, align and embed faces in photos; write a safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console()


def register(root: typer.Typer) -> None:
    root.command("embed")(embed)


def embed(
    images: Annotated[list[Path], typer.Argument(help="Photos (JPEG, PNG, WebP, ...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors file.")],
    backend: Annotated[str, typer.Option(help="A registered face analyser: dlib (offline) or insightface (SCRFD + ArcFace ONNX). Its licence is written into the output.")] = "dlib",
    all_faces: Annotated[bool, typer.Option("--all-faces", help="Embed every face, not only the largest per photo.")] = False,
    mean: Annotated[bool, typer.Option("--mean", help="Photos of one person: average their largest faces into one unit identity vector.")] = False,
    pack: Annotated[Optional[str], typer.Option(help="insightface pack name or folder (default antelopev2).")] = None,
    recognizer: Annotated[Optional[Path], typer.Option(help="ArcFace ONNX file, e.g. Arc2Face's arcface.onnx (insightface backend).")] = None,
    detector: Annotated[Optional[str], typer.Option(help="SCRFD ONNX file, or 'dlib' (insightface backend).")] = None,
    skip_no_face: Annotated[bool, typer.Option("--skip-no-face", help="Warn and continue when a photo has no face.")] = False,
) -> None:
    """Embed the faces in IMAGE... and write embeddings, boxes, keypoints and sources to OUT."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from synthface.errors import InvalidInputError, NoFaceError
    from synthface.faces import get_analyzer, l2_normalize, load_image
    from synthface.io import atomic_path, check_output_path

    if mean and all_faces:
        raise InvalidInputError("--mean averages one person's photos; it cannot be combined with --all-faces.")
    check_output_path(out)
    # Options the backend does not take are refused by the registry, naming the ones it does.
    kwargs = {k: v for k, v in (("pack", pack), ("recognizer", recognizer), ("detector", detector)) if v is not None}
    analyzer = get_analyzer(backend, **kwargs)
    rows, sources = [], []
    for path in images:
        faces = analyzer.analyze([load_image(path)], all_faces=all_faces)[0]
        if not faces:
            message = (
                f"No face found in {path}. Use a photo where the face is clearly visible and not too "
                "small (about 80 px or more between the ears), or a wider crop if it fills the frame."
            )
            if skip_no_face:
                console.print(f"[yellow]skipped:[/] {message}", highlight=False)
                continue
            raise NoFaceError(message)
        for face in faces:
            rows.append((len(sources), face))
        sources.append(str(path))
    if not rows:
        raise NoFaceError("No face found in any of the photos.")
    emb = np.stack([f.embedding for _, f in rows]).astype(np.float32)
    tensors = {
        "bboxes": np.stack([f.bbox for _, f in rows]),
        "kps": np.stack([f.kps for _, f in rows]),
        "det_scores": np.array([f.det_score for _, f in rows], dtype=np.float32),
        "image_index": np.array([i for i, _ in rows], dtype=np.int64),
    }
    if mean:
        tensors["face_embeddings"] = emb
        emb = l2_normalize(emb.mean(0, keepdims=True))
        _warn_if_different_people(l2_normalize(tensors["face_embeddings"]), [sources[i] for i, _ in rows], analyzer)
    tensors["embeddings"] = emb
    metadata = {
        "source": json.dumps(sources),
        "backend": analyzer.name,
        "license": analyzer.license,
        "license_restricted": str(analyzer.license_restricted).lower(),
        "embedding_space": analyzer.embedding_space,
        "embedding_dim": str(analyzer.embedding_dim),
        "mean": str(mean).lower(),
        "all_faces": str(all_faces).lower(),
    }
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    spread = ""
    if mean and len(rows) > 1:
        cos = l2_normalize(tensors["face_embeddings"]) @ emb[0]
        spread = f"; cosine of each photo to the mean: {cos.min():.3f}-{cos.max():.3f}"
    console.print(f"{len(rows)} face(s) from {len(sources)} photo(s), {analyzer.name} {emb.shape[1]}-d -> {out}{spread}", highlight=False)


def _warn_if_different_people(unit, names: list[str], analyzer) -> None:
    """Warn (the output is still written) when a photo is not the same person as at least half of the
    other photos, by the analyser's same-person cosine (the threshold the demo judges faces by).

    Photos are compared pairwise, not to the mean: the mean of two faces at cosine c has cosine
    sqrt((1 + c) / 2) to each, which would pass two different people as one.
    """
    import numpy as np
    from rich.markup import escape

    if len(names) < 2:
        return
    threshold = analyzer.same_person_cos
    cos = unit @ unit.T
    np.fill_diagonal(cos, -1.0)
    matches = (cos >= threshold).sum(axis=1)
    odd = [f"{escape(name)} (best {best:.2f})" for name, m, best in zip(names, matches, cos.max(axis=1))
           if 2 * m < len(names) - 1]
    if odd:
        console.print(
            f"[yellow]warning:[/] --mean averages photos of one person, but by {analyzer.name}'s same-person "
            f"cosine {threshold:.2f} these photos match fewer than half of the others: {', '.join(odd)}. "
            "Their mean is nobody's identity; check the photos, or embed them without --mean.",
            highlight=False,
        )
