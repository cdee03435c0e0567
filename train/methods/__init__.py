"""The SSL methods, one module each, in one registry. A method is a torch module built from the TrainConfig
that owns its networks and its loss: `method(views, batch)` returns the step's loss and statistics. The trainer
looks a method up by `method=<name>` and never branches on it.

Add one: subclass SSLMethod in your own module, decorate it with `@register_method("name")`, import the module
before training (or name it in `SSLFER_PLUGINS`), and train with `method=name`. docs/architecture.md has the recipe."""
from __future__ import annotations

from sslfer.registry import Registry
from train.methods.base import SSLMethod

METHODS = Registry("method")
register_method = METHODS.register  # class decorator: the method becomes `method=<name>`


def build_method(cfg) -> SSLMethod:
    return METHODS.get_or_explain(cfg.method, "method")(cfg)


from train.methods import byol, mocov2, simclr  # noqa: E402,F401  the built-in methods register themselves
