import dataclasses


def opt(default, help: str, *, path: bool = False, hub: bool = False, result: bool | None = None,
        ge=None, gt=None, le=None, lt=None, multiple_of: int | None = None, required: tuple[str, ...] = ()):
    """A study-file field with its documentation, range and role.

    help: one line, without the default (the flag's help and the README add it once).
    path: a path, resolved relative to the study file; hub: may also be a hub id.
    result: whether the value changes the result (fingerprints and workflow re-runs follow it);
        default: True, except for paths (their *content* is fingerprinted instead).
    ge/gt/le/lt: numeric bounds (each item of a list); NaN and infinity are always refused.
    multiple_of: each number must be a multiple of it (image sizes: 8, the VAE's downsampling).
    required: the commands that need a value (e.g. ("lora train",)).
    Lists get a fresh copy per instance.
    """
    meta = {"help": help, "path": path, "hub": hub, "result": (not path) if result is None else result,
            "ge": ge, "gt": gt, "le": le, "lt": lt, "multiple_of": multiple_of, "required": tuple(required)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_default(f):
    """A dataclass field's default value (its default, or a fresh one from its default_factory)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
