"""What reaches the terminal: verbosity, progress bars and ONNX Runtime's own log.

:func:`set_verbosity` is the one place that decides how talkative hf_optim and the libraries under it are; the
``hf-optim`` CLI calls it once (``-q``: quiet, ``-v``: verbose). Library code never sets log levels itself: it
shows progress through :func:`progress` and builds ONNX Runtime sessions with :func:`ort_session_options`,
and both follow the level set here.

============  =====================================  =============================  ==========================
level         hf_optim log on the console            transformers / datasets        ONNX Runtime (C++ log)
============  =====================================  =============================  ==========================
``quiet``     errors only; no progress bars          errors only, no progress bars  errors only
``normal``    INFO and up; progress bars             their defaults                 errors only
``verbose``   DEBUG and up; progress bars            INFO and up                    warnings and errors
============  =====================================  =============================  ==========================

The run log (``logs/run-*.log``, written by the runner) keeps hf_optim's INFO lines whatever the level: quiet
silences the console, not the record.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings
from typing import Iterable, Literal, Optional

__all__ = ["set_verbosity", "get_verbosity", "progress", "ort_session_options", "ort_log_severity", "LEVELS"]

LEVELS = ("quiet", "normal", "verbose")
Level = Literal["quiet", "normal", "verbose"]
# ONNX Runtime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
_ORT_SEVERITY = {"quiet": 3, "normal": 3, "verbose": 2}
_CONSOLE_LEVEL = {"quiet": logging.ERROR, "normal": logging.INFO, "verbose": logging.DEBUG}
# Read by transformers / datasets / huggingface_hub when they are imported (also by child processes).
_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error", "HF_HUB_VERBOSITY": "error",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

_level: Level = "normal"


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (not the one at creation), so redirections and test capture work."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


_console: Optional[logging.Handler] = None


def get_verbosity() -> Level:
    """The level last set by :func:`set_verbosity` (``normal`` until then)."""
    return _level


def set_verbosity(level: Level) -> None:
    """Set how much hf_optim, transformers, datasets and ONNX Runtime print (see the module docstring).

    Args:
        level (`str`): ``quiet`` (errors and results only), ``normal`` or ``verbose``.
    """
    global _level, _console
    if level not in LEVELS:
        raise ValueError(f"verbosity {level!r}: use one of {', '.join(LEVELS)}")
    _level = level
    root = logging.getLogger()
    if _console is None and not root.handlers:  # like logging.basicConfig: an application's own setup stands
        _console = _StderrHandler()
        _console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        root.addHandler(_console)
    if _console is not None:
        _console.setLevel(_CONSOLE_LEVEL[level])
    if level == "verbose":
        root.setLevel(logging.INFO)
    # hf_optim's logger stays at INFO (DEBUG when verbose) so the run log is complete; the console handler filters.
    logging.getLogger("hf_optim").setLevel(logging.DEBUG if level == "verbose" else logging.INFO)
    if level == "quiet":
        os.environ.update(_QUIET_ENV)
        warnings.simplefilter("ignore")
    _set_library_levels(level)
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        onnxruntime.set_default_logger_severity(_ORT_SEVERITY[level])


def _set_library_levels(level: Level) -> None:
    """Libraries already imported do not read the environment again: set their levels through their API."""
    if level == "normal":
        return
    quiet = level == "quiet"
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        (tf_logging.set_verbosity_error if quiet else tf_logging.set_verbosity_info)()
        if quiet:
            tf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        from datasets.utils import logging as ds_logging
        from datasets.utils.tqdm import disable_progress_bars

        (ds_logging.set_verbosity_error if quiet else ds_logging.set_verbosity_info)()
        if quiet:
            disable_progress_bars()
    if quiet and "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars as hub_disable_progress_bars

        hub_disable_progress_bars()


def progress(iterable: Optional[Iterable] = None, desc: str = "", total: Optional[int] = None,
             enabled: bool = True, unit: str = "it"):
    """A tqdm progress bar over ``iterable`` (or a manual one with ``total``), on stderr.

    Args:
        iterable (*optional*): what to iterate over; without it, call ``update(n)`` yourself.
        desc (`str`): what is being done (``"GPTQ layers"``).
        total (`int`, *optional*): number of steps (taken from ``len(iterable)`` when it has one).
        enabled (`bool`, *optional*, defaults to `True`): the caller's ``progress`` flag (a stage's
            ``StageContext.progress``, the CLI's ``--no-progress``). Quiet verbosity disables every bar.
    """
    from tqdm.auto import tqdm

    # leave=None: a bar nested in another (a plan's candidates, then each one's evaluation) clears when done
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled or _level == "quiet",
                dynamic_ncols=True, leave=None)


def ort_log_severity() -> int:
    """The ONNX Runtime log severity for the current verbosity (3 = errors only, unless verbose)."""
    return _ORT_SEVERITY[_level]


def ort_session_options():
    """``onnxruntime.SessionOptions`` whose log severity follows the verbosity: ONNX Runtime's INFO and WARNING
    lines (initializers removed, nodes placed on CPU ...) stay out of the terminal unless verbose."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = ort_log_severity()
    return opts
