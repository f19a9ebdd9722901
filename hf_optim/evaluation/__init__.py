"""Task metrics and speed/size/memory measurements."""

from .config import EvalConfig
from .metrics import compute_metric

__all__ = ["EvalConfig", "compute_metric", "evaluate_model"]


def evaluate_model(*args, **kwargs):
    """See :func:`hf_optim.evaluation.stage.evaluate_model` (imported lazily: it needs torch)."""
    from .stage import evaluate_model as _impl

    return _impl(*args, **kwargs)
