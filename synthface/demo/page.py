"""The demo's Gradio page over `synthface.demo.session.DemoSession`: the Blocks layout, its two endpoints
(/generate, /random_identity), and a launch with safe defaults (localhost, upload limit, errors shown
as messages, the session's files removed on exit). `synthface demo` and apps/demo.py launch it.
"""

from __future__ import annotations

import os
import socket
import threading
import weakref

from synthface.demo.conditioning import CONDITIONER_SHORT, STANDIN_SHORT
from synthface.demo.photos import MAX_UPLOAD_MB
from synthface.demo.session import (
    KEEP_OUTPUTS_S,
    MAX_IMAGES,
    DemoSession,
    Settings,
    default_model,
    installed_models,
    lcm_available,
    lcm_hint,
    new_seed,
    sampler_settings,
    weights_notice,
)
from synthface.errors import ImageError, InvalidInputError, ModelNotFoundError, NoFaceError, SynthfaceError

DESCRIPTION = """\
# synthface · identity customisation
Upload one or more photos of **one person** (their identity vectors are averaged), or draw a
**random identity**; get new images of that identity. Each caption gives the image's cosine to the
identity as measured by the face analyser, and whether a dataset filter would **keep** or **drop** it.
"""

MISSING_WEIGHTS = """\
**Weights not installed.** Only models whose weights are found on this machine are offered (and the
random-weight test models, which draw no faces). To add one, fetch its weights and restart the demo:

"""

HOW_TO_READ = """\
**Reading the captions.** *ID cos* is measured by the analyser ({analyzer}) between the generated
face and the uploaded photos (for a random identity: the centre of the generated faces, unless the
analyser is the conditioning recogniser); *keep* means at least {threshold}, the analyser's
same-person threshold. *condition cos* is the cosine between the vector the image was rendered
from and the identity (the *variation* control). {licence}
"""


GRADIO_MISSING = (
    "The demo needs Gradio, which is not installed: it comes with synthface's [demo] extra. Install it with "
    'pip install -e ".[demo]" in a clone of synthface, or pip install "synthface[demo]" from a wheel, then run '
    "synthface demo again. Everything else in synthface works without it."
)


def require_gradio() -> None:
    """Raise InvalidInputError naming the [demo] extra when Gradio cannot be imported."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InvalidInputError(GRADIO_MISSING) from None


def build_demo(
    model: str | None = None,
    analyzer: str = "dlib",
    *,
    conditioner: str = "auto",
    device: str | None = None,
    analyzer_options: dict | None = None,
    allow_pickle: bool | None = None,
    session: DemoSession | None = None,
):
    """The Gradio page over a `DemoSession` (built from the other arguments unless `session` is
    given; see DemoSession for `analyzer_options` and `allow_pickle`); `.launch()` it, or use
    `launch_demo` for the safe defaults. `model` None: `default_model()` (the first installed real
    generator, else the default family's random-weight model). The page says which weights are
    missing and how to get them, and offers the models found locally plus the random-weight test
    models."""
    require_gradio()
    import gradio as gr

    model = model or (session.model if session is not None else default_model())
    session = session or DemoSession(model, analyzer, conditioner=conditioner, device=device,
                                     analyzer_options=analyzer_options, allow_pickle=allow_pickle)
    # Gradio stores uploads (and copies of returned files) under GRADIO_TEMP_DIR, read when the page
    # and its server are built: point it into the session's folder, so closing the session removes them.
    os.environ["GRADIO_TEMP_DIR"] = str(session.uploads)
    models = installed_models(model)

    def run(photos, random_seed, num_images, steps, guidance, seed, randomize_seed, variation, lcm, model_choice, progress):
        seed = new_seed() if randomize_seed else int(seed)
        settings = Settings(int(num_images), int(steps), float(guidance), seed, float(variation), bool(lcm))
        model_choice = model_choice or model
        try:
            settings.check()
            progress(0, desc="Finding the face")
            ident = session.identity(_paths(photos), model_choice, random_seed=seed if random_seed else None)
            for note in ident.notes:
                gr.Warning(note)
            progress(0.1, desc="Loading the model")
            session.renderer(model_choice)
            results = session.render(ident, settings, model_choice)
            archive = session.write_zip(results, ident, settings, model_choice)
        except SynthfaceError as exc:
            raise gr.Error(str(exc), title=_error_title(exc), print_exception=False) from None
        kept = sum(r.verdict == "keep" for r in results)
        summary = [f"**{len(results)} images**, seed {seed}; {kept} kept by the {session.analyzer.name} check."]
        summary += [f"- {n}" for n in ident.notes]
        conditioning = session.conditioner(model_choice)
        if conditioning.note and ident.source["kind"] == "photos":
            summary.append(f"- {STANDIN_SHORT if conditioning.name == 'stand-in' else CONDITIONER_SHORT}")
        return ([(r.image, r.caption) for r in results], ident.crops, str(archive), seed, "\n".join(summary))

    def generate(photos, num_images, steps, guidance, seed, randomize_seed, variation, lcm, model_choice, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        """New images of the person in the uploaded photos, each captioned with its identity cosine."""
        return run(photos, False, num_images, steps, guidance, seed, randomize_seed, variation, lcm, model_choice, progress)

    def generate_random(num_images, steps, guidance, seed, randomize_seed, variation, lcm, model_choice, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        """Images of a random identity drawn from the prior with the seed."""
        return run(None, True, num_images, steps, guidance, seed, randomize_seed, variation, lcm, model_choice, progress)

    with gr.Blocks(title="synthface demo", delete_cache=(KEEP_OUTPUTS_S, KEEP_OUTPUTS_S)) as demo:
        gr.Markdown(DESCRIPTION)
        missing = weights_notice(model, session.analyzer_name, session.analyzer_options)
        if missing:
            gr.Markdown(MISSING_WEIGHTS + "\n".join(f"- {line}" for line in missing), elem_id="missing-weights")
        standin = _standin_note(session, model)
        standin_md = gr.Markdown(f"> ⚠️ {standin}" if standin else "", visible=bool(standin), elem_id="standin-note")
        with gr.Row():
            with gr.Column(scale=1):
                photos = gr.File(
                    label=f"Photos of one person (JPEG/PNG/WebP, up to {MAX_UPLOAD_MB} MB each)",
                    file_count="multiple", file_types=["image"], elem_id="photos",
                )
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    rand = gr.Button("Random identity", elem_id="random-identity")
                num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images")
                sampler = sampler_settings(model)  # what the family declares; the others are hidden
                with gr.Accordion("Settings", open=False):
                    steps = gr.Slider(1, 100, value=25, step=1, label="Steps", visible="steps" in sampler)
                    guidance = gr.Slider(0.1, 10.0, value=3.0, step=0.1, label="Guidance", visible="guidance" in sampler)
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, minimum=0, maximum=2**31 - 1, label="Seed")
                        randomize = gr.Checkbox(value=True, label="Randomise seed")
                    variation = gr.Slider(
                        0.5, 1.0, value=1.0, step=0.01, label="Variation: target cosine to the identity",
                        info="1 = exactly the identity; lower = more varied, less similar",
                    )
                    lcm = gr.Checkbox(value=False, label="LCM (2-4 steps)", **_lcm_props(model))
                    model_choice = gr.Dropdown(models, value=model, label="Model", interactive=len(models) > 1)
                crops = gr.Gallery(
                    label="Face used (aligned)", columns=4, height=170, fit_columns=False, format="png",
                    object_fit="contain", elem_id="crops",
                )
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Generated", columns=4, format="png", object_fit="contain", elem_id="gallery")
                info = gr.Markdown(elem_id="info")
                archive = gr.File(label="Download (images + manifest.json)", elem_id="download")
                gr.Markdown(HOW_TO_READ.format(
                    analyzer=analyzer, threshold=_threshold_text(session), licence=_licence_text(session, model),
                ))

        controls = [num_images, steps, guidance, seed, randomize, variation, lcm, model_choice]
        outputs = [gallery, crops, archive, seed, info]
        go.click(generate, [photos, *controls], outputs, api_name="generate", concurrency_limit=1, concurrency_id="gpu")
        rand.click(generate_random, controls, outputs, api_name="random_identity", concurrency_limit=1, concurrency_id="gpu")
        lcm.change(_lcm_defaults, lcm, [steps, guidance], api_visibility="private", queue=False)
        def switch_model(m):
            """The controls and the stand-in banner that apply to the newly chosen model."""
            sampler, note = sampler_settings(m), _standin_note(session, m)
            return (gr.Slider(visible="steps" in sampler), gr.Slider(visible="guidance" in sampler),
                    gr.Checkbox(value=False, **_lcm_props(m)), gr.Markdown(f"> ⚠️ {note}" if note else "", visible=bool(note)))

        model_choice.change(switch_model, model_choice, [steps, guidance, lcm, standin_md], api_visibility="private",
                            queue=False)
    demo.queue(max_size=16, default_concurrency_limit=1)
    _SESSIONS[demo] = session
    return demo


#: The session behind each page `build_demo` made, so `close_demo` can remove its files.
_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_ERROR_TITLES = {
    NoFaceError: "No face found",
    ImageError: "Unusable photo",
    ModelNotFoundError: "Weights missing",
    InvalidInputError: "Check the inputs",
}


def _error_title(exc: SynthfaceError) -> str:
    return next((t for cls, t in _ERROR_TITLES.items() if isinstance(exc, cls)), "Error")


def _paths(files) -> list[str]:
    if not files:
        return []
    files = files if isinstance(files, (list, tuple)) else [files]
    return [f if isinstance(f, str) else getattr(f, "name", None) or f["path"] for f in files]


def _lcm_props(model: str) -> dict:
    """The LCM checkbox of `model`: shown for a family declaring "lcm", usable where `lcm_available`."""
    from synthface.generators import family_for

    usable = lcm_available(model)
    return {"visible": "lcm" in family_for(model).options, "interactive": usable,
            "info": None if usable else lcm_hint(model)}


def _lcm_defaults(on: bool):
    return (4, 1.0) if on else (25, 3.0)


def _standin_note(session: DemoSession, model: str) -> str:
    try:
        return session.conditioner(model).note
    except SynthfaceError:  # reported on the first Generate instead, as an error in the page
        return ""


def _threshold_text(session: DemoSession) -> str:
    try:
        return f"{session.analyzer.same_person_cos:.2f}"
    except SynthfaceError:  # analyser weights missing: reported on the first Generate
        return "the threshold"


def _licence_text(session: DemoSession, model: str) -> str:
    try:
        return session.licence_note(model)
    except SynthfaceError:  # analyser weights missing: reported on the first Generate
        return "Check the licences of the model and the analyser (synthface models list) before using the images."


def launch_demo(demo, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False, **kwargs):
    """Launch with the demo's safety defaults: localhost only unless told, upload size limit, the
    server's refusals shown to the client as messages. A blocking launch (the default) removes the
    session's files when the server stops (Ctrl-C or SIGTERM); otherwise call `close_demo`.

    Raises:
        InvalidInputError: `port` is out of range or already in use on `host`.
    """
    if port is not None:
        check_port_free(host, port)
    kwargs.setdefault("max_file_size", f"{MAX_UPLOAD_MB}mb")
    kwargs.setdefault("show_error", True)  # else a refused file path reaches the client as {"error": null}
    blocking = not kwargs.get("prevent_thread_lock", False)
    if blocking:
        _sigterm_as_interrupt()
    try:
        return demo.launch(server_name=host, server_port=port, share=share, **kwargs)
    except OSError as exc:
        raise InvalidInputError(
            f"Cannot start the demo server on {host}:{port or 'a port from 7860'}: {exc}. Pass another --port "
            "(or none, to take the first free one), or stop the program that holds it."
        ) from None
    finally:
        if blocking:
            close_demo(demo)


def close_demo(demo) -> None:
    """Stop the page's server and remove its session's temporary files (uploads, zips)."""
    demo.close()
    session = _SESSIONS.pop(demo, None)
    if session is not None:
        session.close()


def check_port_free(host: str, port: int) -> None:
    """Raise InvalidInputError unless `port` is a valid port that can be bound on `host` now."""
    if not 1 <= port <= 65535:
        raise InvalidInputError(f"Port {port} is out of range; use 1 to 65535, or leave --port out for the first free one from 7860.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InvalidInputError(
                f"Cannot serve the demo on {host}:{port}: {exc.strerror or exc}. Another program (perhaps an earlier "
                "demo) holds that port: pass another --port, or leave it out to take the first free one from 7860."
            ) from None


def _sigterm_as_interrupt() -> None:
    """Let SIGTERM stop the server like Ctrl-C, so the session's files are removed on the way out."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
