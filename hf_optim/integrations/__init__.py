"""Integrations with other libraries' plugin hooks.

``import hf_optim`` must make ``from_pretrained`` understand ``quant_method: "hf_optim"`` checkpoints, but
importing transformers (and torch) costs seconds, which the CLI and config-only users should not pay.
So :func:`install_import_hook` registers the transformers integration *when transformers' quantizer
registry is first imported* (every ``from_pretrained`` imports it), or right away if it already is.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading

_TARGET = "transformers.quantizers.auto"
_lock = threading.Lock()
_installed = False


def _register_transformers() -> None:
    module = sys.modules.get(__name__ + ".transformers")
    if module is not None and not hasattr(module, "register"):
        return  # it is being imported right now and registers itself when it finishes
    from .transformers import register

    register()


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``transformers.quantizers.auto`` so the integration registers right after it runs."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module

        def exec_module(module):
            original(module)
            _remove_hook()
            _register_transformers()

        loader.exec_module = exec_module
        return spec


_hook = _RegisterOnImport()


def _remove_hook() -> None:
    try:
        sys.meta_path.remove(_hook)
    except ValueError:
        pass


def install_import_hook() -> None:
    """Register the transformers integration now or as soon as transformers' quantizers are imported (once)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        if _TARGET in sys.modules:
            _register_transformers()
        else:
            sys.meta_path.insert(0, _hook)
