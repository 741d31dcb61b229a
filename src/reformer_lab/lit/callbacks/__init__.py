"""Lightning callbacks: memory budget and peaks, the pre-training fit check, the NaN guard,
the sampler-epoch fix that makes resuming exact, and samples logged at validation end."""

from reformer_lab.lit.callbacks.fit_check import FitCheck, FitReport, MemoryBudgetExceeded
from reformer_lab.lit.callbacks.memory import MemoryBudget, PeakMemoryLogger, oom_advice
from reformer_lab.lit.callbacks.nonfinite import NonFiniteLossError, StopOnNonFiniteLoss
from reformer_lab.lit.callbacks.resume import SamplerEpochFromTrainer
from reformer_lab.lit.callbacks.sample_logger import SampleLogger

__all__ = [
    "FitCheck",
    "FitReport",
    "MemoryBudget",
    "MemoryBudgetExceeded",
    "NonFiniteLossError",
    "PeakMemoryLogger",
    "SampleLogger",
    "SamplerEpochFromTrainer",
    "StopOnNonFiniteLoss",
    "oom_advice",
]
