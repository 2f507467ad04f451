"""Sample-data simulator: realistic Customer Success data with known ground truth.

A tool beside the product: it writes the seven contract tables (as a customer's
export would look) plus the true churn and expansion probabilities, so the
pipeline can be run and judged end to end. Presets (:data:`PRESETS`) change the
dynamics — which latent state drives churn, when changes can happen, the contract
mix — so that a model's findings can be checked against a known answer.

    from simulator import generate, write_dataset
    result = generate(600, 24, seed=42, start=dt.date(2024, 1, 1), preset="outcome_driven")
    write_dataset(result, Path("data/raw"), Path("data/truth.parquet"))
"""

from simulator.core import (
    END_DATE_CONVENTIONS,
    EndDateConvention,
    SimResult,
    Simulator,
    generate,
)
from simulator.output import write_dataset
from simulator.presets import PRESETS, Dynamics, get_preset, preset_names

__all__ = [
    "END_DATE_CONVENTIONS",
    "PRESETS",
    "Dynamics",
    "EndDateConvention",
    "SimResult",
    "Simulator",
    "generate",
    "get_preset",
    "preset_names",
    "write_dataset",
]
