"""sslfer: expression-aware self-supervised face pretraining (BMVC 2022). The ground floor every stage shares,
and the public API: `from sslfer import load_encoder, FacePreprocess`."""

_PUBLIC = {"load_encoder": "sslfer.encoder", "load_projector": "sslfer.encoder", "FacePreprocess": "sslfer.encoder",
           "NoFace": "sslfer.encoder"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:  # imported on first use: `import sslfer.config` stays free of torch
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'sslfer' has no attribute {name!r}")
