"""Export to ONNX Runtime (Optimum, or torch.onnx + ORT's own tools) and compiled PyTorch, validated on the
task metric. Importing this package is light; the work happens in :mod:`.stage` and :mod:`.compile`."""

from .config import CompileConfig, ExportConfig

__all__ = ["ExportConfig", "CompileConfig", "export_model", "compile_model", "load_compiled", "save_gguf",
           "save_compressed_tensors", "save_genai"]


def export_model(*args, **kwargs):
    """See :func:`hf_optim.export.stage.export_model`."""
    from .stage import export_model as _impl

    return _impl(*args, **kwargs)


def compile_model(*args, **kwargs):
    """See :func:`hf_optim.export.compile.compile_model`."""
    from .compile import compile_model as _impl

    return _impl(*args, **kwargs)


def load_compiled(*args, **kwargs):
    """See :func:`hf_optim.export.compile.load_compiled`."""
    from .compile import load_compiled as _impl

    return _impl(*args, **kwargs)


def save_gguf(*args, **kwargs):
    """See :func:`hf_optim.export.gguf.save_gguf`."""
    from .gguf import save_gguf as _impl

    return _impl(*args, **kwargs)


def save_compressed_tensors(*args, **kwargs):
    """See :func:`hf_optim.export.compressed_tensors.save_compressed_tensors`."""
    from .compressed_tensors import save_compressed_tensors as _impl

    return _impl(*args, **kwargs)


def save_genai(*args, **kwargs):
    """See :func:`hf_optim.export.genai.save_genai`."""
    from .genai import save_genai as _impl

    return _impl(*args, **kwargs)
