"""Cases: the schema (``schema``), case files (``loader``) and seeded inputs (``inputs``)."""

from harness.cases.inputs import CaseContext, CaseData, as_returned, layer_output, make_inputs, make_weights, moe_config, reference_output
from harness.cases.loader import display_path, load_case_file, load_cases
from harness.cases.schema import (ACTIVATION_PRESETS, Activation, Case, CaseError, ExpertScales, Routing, Tier, case_to_yaml,
                                  parse_activation, validate_case)

__all__ = ["ACTIVATION_PRESETS", "Activation", "Case", "CaseContext", "CaseData", "CaseError", "ExpertScales", "Routing", "Tier", "case_to_yaml",
           "as_returned", "display_path", "layer_output", "load_case_file", "load_cases", "make_inputs", "make_weights", "moe_config",
           "parse_activation", "reference_output", "validate_case"]
