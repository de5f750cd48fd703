"""Which family renders a model: `register_generator`, `family_for`, `generator_names`, `build_renderer`.

Families are registered, not switched on: the built-in ones are the subpackages of
`synthface.generators` with a `family` module (each registers itself on import), and a family in
another package is an entry point in the group "synthface.generators" (its value a `GeneratorFamily`
subclass or instance), found through `importlib.metadata` the first time a family is looked up:

    [project.entry-points."synthface.generators"]
    disc = "synthface_disc:DiscFamily"

A model name goes to the family that declares it (`GeneratorFamily.models` and `aliases`, exact or
a prefix ending in "*"), a local path to the family that `claims` it, anything else to the family
declared `catch_all` (the one that reads local folders and repo ids of its own layouts).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import threading
from typing import Any

import torch

from synthface.errors import InvalidInputError
from synthface.generators.base import GeneratorFamily, Optimizations, Renderer, RenderSettings, resolve_dtype

#: The entry-point group a plug-in family registers in.
ENTRY_POINT_GROUP = "synthface.generators"

# Exact model names (lower case) and prefixes ("name*") -> family, in registration order.
_FAMILIES: dict[str, GeneratorFamily] = {}
_builtins_loaded = False
_plugins_loaded = False
_plugin_error: InvalidInputError | None = None  # a broken plug-in, raised again at every look-up
_loading = threading.RLock()


def register_generator(name_or_prefix: str, family: GeneratorFamily) -> None:
    """Route model name `name_or_prefix` (case-insensitive), or every name starting with it when it
    ends in "*", to `family`. A name already routed to another family is an InvalidInputError."""
    key = name_or_prefix.strip().lower()
    if not key or key == "*":
        raise InvalidInputError(f"A generator needs a model name or a name prefix ending in '*', got {name_or_prefix!r}.")
    taken = _FAMILIES.get(key)
    if taken is not None and taken is not family:
        raise InvalidInputError(
            f"Model name {name_or_prefix!r} already belongs to the {taken.name!r} generator family; "
            f"pick another name for {family.name!r}."
        )
    _FAMILIES[key] = family


def register_family(family: GeneratorFamily | type[GeneratorFamily]) -> GeneratorFamily:
    """Register every name `family` declares (`models`, then `aliases`); returns the instance."""
    if isinstance(family, type):
        family = family()
    if not isinstance(family, GeneratorFamily):
        raise InvalidInputError(f"A generator family must be a GeneratorFamily, got a {type(family).__name__}.")
    for name in (*family.models, *family.aliases):
        register_generator(name, family)
    return family


def _load_families() -> None:
    """Built-in families, then plug-ins, once per process (on the first look-up). A plug-in that fails
    to load is an InvalidInputError naming its distribution, raised at every look-up after."""
    global _builtins_loaded, _plugins_loaded, _plugin_error
    with _loading:
        if not _builtins_loaded:
            _builtins_loaded = True
            import synthface.generators as package

            for module in pkgutil.iter_modules(package.__path__):
                if module.ispkg:
                    importlib.import_module(f"{package.__name__}.{module.name}.family")
        if not _plugins_loaded:
            _plugins_loaded, _plugin_error = True, None
            for entry in _entry_points():
                try:
                    _load_plugin(entry)
                except InvalidInputError as exc:
                    _plugin_error = exc
    if _plugin_error is not None:
        raise _plugin_error


def _entry_points():
    from importlib.metadata import entry_points

    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def _load_plugin(entry) -> None:
    dist = getattr(getattr(entry, "dist", None), "name", None) or "an unknown distribution"
    try:
        register_family(entry.load())
    except Exception as exc:  # a plug-in's own failure, whatever it is, named with its package
        raise InvalidInputError(
            f"The generator plug-in {entry.name!r} ({entry.value}) of the installed package {dist} failed to load: "
            f"{type(exc).__name__}: {exc}. Fix or upgrade {dist}, or uninstall it (pip uninstall {dist})."
        ) from exc


def families() -> list[GeneratorFamily]:
    """Every registered family, in registration order (the catch-all one first)."""
    _load_families()
    found = list(dict.fromkeys(_FAMILIES.values()))
    return sorted(found, key=lambda f: not f.catch_all)


def default_family() -> GeneratorFamily:
    """The family declared `catch_all`: it renders names and paths no other family takes."""
    for family in families():
        if family.catch_all:
            return family
    raise InvalidInputError("No generator family is registered as the default (catch_all); reinstall synthface.")


def family_for(model: str | os.PathLike) -> GeneratorFamily:
    """The family that renders `model`: its exact name, else the longest matching prefix, else the
    first family that `claims` it as an existing local path, else the default (`catch_all`)."""
    _load_families()
    name = os.fspath(model).strip().lower()
    if name in _FAMILIES:
        return _FAMILIES[name]
    prefixes = [k for k in _FAMILIES if k.endswith("*") and name.startswith(k[:-1])]
    if prefixes:
        return _FAMILIES[max(prefixes, key=len)]
    path = os.path.expanduser(os.fspath(model))
    if os.path.exists(path):
        for family in families():
            if not family.catch_all and family.claims(path):
                return family
    return default_family()


def families_with(option: str) -> str:
    """The registered families declaring `option` (of `OPTIONS`), as a message names them: each with
    its models (random-weight ones marked for plumbing tests) or, lacking models, the names routed to
    it; "none is installed" when no family declares it."""
    parts = []
    for family in families():
        if option not in family.options:
            continue
        real = [repr(m) for m in family.models if not family.is_random(m)]
        tests = [repr(m) for m in family.models if family.is_random(m)]
        names = ", ".join(real) + (f"; {', '.join(tests)} for plumbing tests" if tests else "")
        if not names and family.aliases:
            prefixes = [repr(a[:-1]) for a in family.aliases if a.endswith("*")]
            exact = [repr(a) for a in family.aliases if not a.endswith("*")]
            names = "; ".join(([f"names starting {_either(prefixes)}"] if prefixes else []) + exact)
        parts.append(f"{family.display_name}: {names}" if names else family.display_name)
    return "; ".join(parts) if parts else "none is installed"


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def generator_names() -> list[str]:
    """Every model name a registered family loads by name alone (`GeneratorFamily.models`), in
    registration order: the choices the demo and the CLI offer besides local paths."""
    return list(dict.fromkeys(name for family in families() for name in family.models))


def family_of_pipeline(pipeline) -> GeneratorFamily:
    """The registered family `pipeline` belongs to; InvalidInputError for an unknown pipeline type."""
    registered = families()
    for family in registered:
        if family.accepts(pipeline):
            return family
    raise InvalidInputError(
        f"No generator family renders a {type(pipeline).__name__}; the registered families are "
        f"{', '.join(f.name for f in registered)}. Pass one of their pipelines or a model name."
    )


def model_licence(model: str):
    """The licence of what `model` makes, as its family declares it (`GeneratorFamily.licence`)."""
    return family_for(model).licence(model)


def build_renderer(
    model: str | os.PathLike | Any,
    *,
    settings: RenderSettings | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    optimizations: Optimizations | None = None,
    allow_download: bool = False,
    allow_pickle: bool | None = None,
    name: str | None = None,
    **load_options,
) -> Renderer:
    """A `Renderer` for a model name (loaded through its family) or a pipeline object (used in place).

    For a name: device None means "auto" (`resolve_device`), dtype None means fp32, optimizations
    None means `Optimizations()`; `load_options` go to the family's `load` (each family's `load`
    says which it takes). For a pipeline: device and dtype None keep the pipeline's own (else it is moved),
    optimizations None leaves it as it is. `name` is what the licence is looked up under (default:
    the model as given; for a pipeline, its family's name).
    The same model, settings, device, dtype and optimizations give byte-identical images either way.

    Raises InvalidInputError for an unknown device, dtype or pipeline type, or options the family's
    loader does not take; ModelNotFoundError (from the family) when the weights are not available.
    """
    from synthface.devices import resolve_device

    settings = settings or RenderSettings()
    if isinstance(model, (str, os.PathLike)):
        family = family_for(model)
        target = resolve_device(device)
        try:
            pipeline = family.load(os.fspath(model), device=target, dtype=resolve_dtype(dtype or "fp32", target),
                                   allow_download=allow_download, allow_pickle=allow_pickle, **load_options)
        except TypeError as exc:
            if not load_options:
                raise
            raise InvalidInputError(
                f"The {family.name!r} generator family does not take the option(s) {', '.join(sorted(load_options))} "
                f"({exc}). Remove them, or use a model of a family that takes them."
            ) from None
        name, optimizations = name or os.fspath(model), optimizations or Optimizations()
    else:
        if load_options:
            raise InvalidInputError(
                f"Loading options {', '.join(sorted(load_options))} apply to a model name, not to a pipeline object."
            )
        family = family_of_pipeline(model)
        pipeline = model
        if device is not None:
            pipeline.to(resolve_device(device))
        if dtype is not None:
            pipeline.to(dtype=resolve_dtype(dtype, pipeline.device))
        name = name or family.name
    pipeline.set_progress_bar_config(disable=True)
    family.call_kwargs(pipeline, settings)  # settings the model cannot honour are refused before any work
    if optimizations is not None:
        family.optimize(pipeline, optimizations)
    return Renderer(pipeline=pipeline, family=family, name=name, settings=settings)


