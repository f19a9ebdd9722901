"""The quantization schemes, in one table (light: no torch import).

Every list of scheme names, choice and default elsewhere (the ``QuantizeConfig.scheme`` values, the planner's
candidates, the schemes ``from_pretrained`` can apply at load time, the command line's choices) is derived from
:data:`SCHEMES`. Adding a scheme is one entry here plus, for a scheme that replaces Linear layers, its module
class in :mod:`hf_optim.quantize.modules` (named by ``module``, with the same ``scheme`` attribute).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

__all__ = ["Scheme", "SCHEMES", "SCHEME_NAMES", "LINEAR_SCHEMES", "WEIGHT_ONLY_SCHEMES", "AT_LOAD_SCHEMES"]


@dataclasses.dataclass(frozen=True)
class Scheme:
    """What a quantization scheme stores and what it needs.

    Args:
        name (`str`): the scheme's name in configs and checkpoints.
        weight_bits (`int`): bits per stored weight (16 for the float casts).
        module (`str`, *optional*): the :mod:`~hf_optim.quantize.modules` class that replaces each target
            ``nn.Linear`` (:func:`~hf_optim.quantize.modules.module_for_scheme` returns it); unset for schemes
            that cast the whole model (``dtype``).
        dtype (`str`, *optional*): the ``torch`` dtype a cast scheme converts the model to.
        weight_only (`bool`, *optional*, defaults to `False`): activations stay float; the weights may be
            group-wise (``group_size``), asymmetric (zero points) and solved by GPTQ.
        default_group_size (`int`, *optional*): input features per scale when ``group_size`` is unset (unset:
            one scale per output channel).
        data (`str`, *optional*): ``"calibration"`` (activation ranges from data) or ``"training"`` (fine-tuned
            with fake quantization); unset: the weights alone decide, so it can be applied at load time.
        plan_by_default (`bool`, *optional*, defaults to `True`): a default candidate of the precision planner
            (off for schemes that train, or that CPUs run slowly).
    """

    name: str
    weight_bits: int
    module: Optional[str] = None
    dtype: Optional[str] = None
    weight_only: bool = False
    default_group_size: Optional[int] = None
    data: Optional[Literal["calibration", "training"]] = None
    plan_by_default: bool = True

    @property
    def replaces_linears(self) -> bool:
        return self.module is not None


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("int8_dynamic", 8, module="Int8DynamicLinear"),
    Scheme("int8_static", 8, module="Int8StaticLinear", data="calibration"),
    Scheme("int8_qat", 8, module="Int8StaticLinear", data="training", plan_by_default=False),
    Scheme("int8_weight_only", 8, module="Int8WeightOnlyLinear", weight_only=True),
    Scheme("int4_weight_only", 4, module="Int4WeightOnlyLinear", weight_only=True, default_group_size=32),
    Scheme("fp16", 16, dtype="float16", plan_by_default=False),  # CPUs compute float16 slowly
    Scheme("bf16", 16, dtype="bfloat16"),
)}

SCHEME_NAMES: tuple[str, ...] = tuple(SCHEMES)
# Schemes that replace Linear modules (the others cast the whole model).
LINEAR_SCHEMES: tuple[str, ...] = tuple(n for n, s in SCHEMES.items() if s.replaces_linears)
WEIGHT_ONLY_SCHEMES: tuple[str, ...] = tuple(n for n, s in SCHEMES.items() if s.weight_only)
# What ``from_pretrained(..., quantization_config=HfOptimConfig(scheme=...))`` can apply: no data needed.
AT_LOAD_SCHEMES: tuple[str, ...] = tuple(n for n, s in SCHEMES.items() if s.data is None)

