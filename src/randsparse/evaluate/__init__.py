"""Evaluation beyond accuracy: calibration, OOD detection, adversarial robustness and complexity.

`run(model, test_data, options=EvalConfig(...), ...)` does everything a run's evaluation needs and
returns a flat, JSON-ready dict (key scheme in `randsparse.evaluate.runner`); the parts are usable
on their own.
"""

from randsparse.evaluate.adversarial import (
    Normalize,
    RobustnessResult,
    fgsm,
    input_gradient,
    pgd,
    robust_accuracy,
    with_normalization,
)
from randsparse.evaluate.calibration import (
    CalibrationResult,
    ReliabilityBins,
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    reliability_diagram,
    topk_accuracy,
)
from randsparse.evaluate.complexity import (
    FlopReport,
    LayerFlops,
    MemoryReport,
    ParamCounts,
    complexity_summary,
    count_flops,
    count_params,
    memory_bytes,
)
from randsparse.evaluate.config import EvalConfig, RunEvalConfig, eval_config, format_eps
from randsparse.evaluate.inference import LogitCache, cached_logits, collect_logits, eval_mode, model_fingerprint
from randsparse.evaluate.ood import (
    OodMetrics,
    available_ood_scores,
    ood_metrics,
    ood_score,
    register_ood_score,
)
from randsparse.evaluate.runner import RawPixels, run

__all__ = [
    "CalibrationResult",
    "EvalConfig",
    "FlopReport",
    "LayerFlops",
    "LogitCache",
    "MemoryReport",
    "Normalize",
    "OodMetrics",
    "ParamCounts",
    "RawPixels",
    "ReliabilityBins",
    "RobustnessResult",
    "RunEvalConfig",
    "available_ood_scores",
    "brier_score",
    "cached_logits",
    "calibration_metrics",
    "collect_logits",
    "complexity_summary",
    "count_flops",
    "count_params",
    "eval_config",
    "eval_mode",
    "expected_calibration_error",
    "fgsm",
    "format_eps",
    "input_gradient",
    "maximum_calibration_error",
    "memory_bytes",
    "model_fingerprint",
    "negative_log_likelihood",
    "ood_metrics",
    "ood_score",
    "pgd",
    "register_ood_score",
    "reliability_bins",
    "reliability_diagram",
    "robust_accuracy",
    "run",
    "topk_accuracy",
    "with_normalization",
]
