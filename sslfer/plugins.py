"""Your own methods, positive pairs and datasets without editing this package: name the modules that register
them in SSLFER_PLUGINS (comma-separated: importable module names, or paths of .py files), and every command
(`python -m preprocess|train|eval`, hence every make target) imports them before it reads its options."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

ENV = "SSLFER_PLUGINS"


class PluginError(ImportError):
    """A plugin that cannot be imported; reported as one line."""


def load_plugins(names: str | None = None) -> list[str]:
    """Import the plugins (default: $SSLFER_PLUGINS); returns their module names."""
    loaded = []
    for name in (os.environ.get(ENV, "") if names is None else names).split(","):
        name = name.strip()
        if not name:
            continue
        try:
            if name.endswith(".py"):
                path = Path(name).resolve()
                module_name = f"sslfer_plugin_{path.stem}"
                if module_name not in sys.modules:
                    spec = importlib.util.spec_from_file_location(module_name, path)
                    if spec is None or not path.is_file():
                        raise FileNotFoundError(f"no such file: {path}")
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[module_name] = module
                    spec.loader.exec_module(module)
                loaded.append(module_name)
            else:
                importlib.import_module(name)
                loaded.append(name)
        except Exception as e:  # noqa: BLE001 - whatever the plugin raises, the user needs one line naming it
            raise PluginError(f"{ENV}: cannot import {name!r} ({type(e).__name__}: {e})") from None
    return loaded


def plugins_loaded() -> bool:
    """load_plugins() at the start of a command: False, with its one-line error on stderr, when one cannot be
    imported (the command then exits 2)."""
    try:
        load_plugins()
    except PluginError as e:
        print(f"error: {e}", file=sys.stderr)
        return False
    return True
