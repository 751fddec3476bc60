import dataclasses


def opt(default, help: str, *, path: bool = False, hub: bool = False):
    """A config field with its documentation; lists get a fresh copy per instance."""
    meta = {"help": help, "path": path, "hub": hub}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
