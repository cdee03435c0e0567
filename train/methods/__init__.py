"""The SSL methods, one module each, in one registry. A method is a torch module built from the TrainConfig
that owns its networks and its loss: `method(views, batch)` returns the step's loss and statistics. The trainer
looks a method up by `method=<name>` and never branches on it.

Add one: subclass SSLMethod in your own module, decorate it with `@register_method("name")`, import the module
before training (or name it in `SSLFER_PLUGINS`), and train with `method=name`. docs/architecture.md has the recipe."""
from __future__ import annotations

from train.methods.base import SSLMethod

METHODS: dict[str, type[SSLMethod]] = {}


def register_method(name: str):
    """Class decorator: the method becomes `method=<name>`."""
    def add(cls: type[SSLMethod]) -> type[SSLMethod]:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered already (by {METHODS[name].__module__})")
        METHODS[name] = cls
        return cls
    return add


def build_method(cfg) -> SSLMethod:
    if cfg.method not in METHODS:
        raise ValueError(f"method={cfg.method!r}: expected one of {' | '.join(METHODS)}")
    return METHODS[cfg.method](cfg)


from train.methods import byol, mocov2, simclr  # noqa: E402,F401  the built-in methods register themselves
