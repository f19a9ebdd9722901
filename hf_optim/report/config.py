"""``ReportConfig``: the prices and volumes the cost/benefit section of a run report is computed with."""

from __future__ import annotations

import dataclasses
from typing import Optional

from ..config import OptimConfig

__all__ = ["ReportConfig", "DEFAULT_PRICE_PER_HOUR", "DEFAULT_PRICE_SOURCE", "DEFAULT_REQUESTS"]

# A 2-vCPU x86 machine like the one the reference numbers in this repository were measured on.
DEFAULT_PRICE_PER_HOUR = 0.08925
DEFAULT_PRICE_SOURCE = ("AWS EC2 on-demand price of a c7i.large (2 vCPU, 4 GiB, Linux, us-east-1), "
                        "https://aws.amazon.com/ec2/pricing/on-demand/")
DEFAULT_REQUESTS = 100_000_000


@dataclasses.dataclass
class ReportConfig(OptimConfig):
    """How a run report prices its artifacts (the recipe's top-level ``report:`` mapping).

    Args:
        price_per_hour (`float`, *optional*, defaults to 0.08925): price of one hour of the machine the
            artifacts were measured on. The default is the AWS EC2 on-demand price of a c7i.large (2 vCPU,
            4 GiB, Linux, us-east-1); set the price of your own machine.
        currency (`str`, *optional*, defaults to ``"USD"``): shown next to every amount.
        price_source (`str`, *optional*): where the price comes from (shown in the report); defaults to the
            source of the default price, or "user-supplied" when ``price_per_hour`` was changed.
        requests (`int`, *optional*, defaults to 100,000,000): the request volume the benefit and ROI are
            stated for.
        baseline (`str`, *optional*): the artifact (stage name) savings are measured against; defaults to the
            first evaluated artifact (the FP32 teacher in the ready recipes).
        reference (`str`, *optional*): a second artifact every other one is also compared with (e.g. the teacher
            exported by Optimum with dynamic INT8): the report adds metric and throughput columns against it.
        plots (`bool`, *optional*, defaults to `True`): draw the PNG plots (needs the ``plots`` extra).
    """

    kind = "report"
    version = 1

    price_per_hour: float = DEFAULT_PRICE_PER_HOUR
    currency: str = "USD"
    price_source: Optional[str] = None
    requests: int = DEFAULT_REQUESTS
    baseline: Optional[str] = None
    reference: Optional[str] = None
    plots: bool = True

    def validate(self) -> None:
        if not self.price_per_hour > 0:
            self._fail("price_per_hour", "must be > 0 (the price of one machine-hour, e.g. 0.08925)")
        if self.requests < 1:
            self._fail("requests", "must be >= 1 (the request volume the ROI is stated for)")
        if not self.currency.strip():
            self._fail("currency", "must not be empty (e.g. USD)")

    def source(self) -> str:
        if self.price_source:
            return self.price_source
        return DEFAULT_PRICE_SOURCE if self.price_per_hour == DEFAULT_PRICE_PER_HOUR else "user-supplied"
