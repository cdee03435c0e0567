"""Where users add things: a registry maps a name (what an option or a command line says) to the thing."""
from __future__ import annotations


class Registry(dict):
    """name -> a registered thing (an SSL method class, a positive-pair piece, an evaluation dataset). `kind` names
    what it holds in messages."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str):
        """Decorator (or call with the thing) adding it under `name`; a second, different thing of that name is a
        mistake."""
        def add(thing):
            known = self.get(name)
            if known is not None and known is not thing and known != thing:
                raise ValueError(f"{self.kind} {name!r} is registered already "
                                 f"(by {getattr(known, '__module__', '?')})")
            self[name] = thing
            return thing
        return add

    def get_or_explain(self, name: str, option: str):
        """The thing, or a ValueError naming the registered ones."""
        if name not in self:
            raise ValueError(f"{option}={name!r}: expected one of {' | '.join(self)}")
        return self[name]
