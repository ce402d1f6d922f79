"""Experiment commands over the bundles (``python -m maskseg_monai.experiments.{sweep,ablation,study}``) and
the shared runner, validation, evaluation, report and command-line pieces."""

from maskseg_monai.experiments.cli import (
    COMMON_RESERVED_KEYS,
    add_common_arguments,
    check_run_inputs,
    command_line,
    parse_command,
    parse_override,
)
from maskseg_monai.experiments.evaluate import (
    BASELINE_METRICS,
    DEFAULT_SMALL_AREA,
    GLOBAL_METRICS,
    REGION_METRICS,
    REPORTED_KEYS,
    evaluate_cell,
)
from maskseg_monai.experiments.report import (
    format_value,
    load_pyplot,
    markdown_table,
    mean_std,
    run_settings,
    save_figure,
    summarize_runs,
    write_csv,
    write_markdown,
)
from maskseg_monai.experiments.runner import (
    DEFAULT_DEMO_SET,
    Cell,
    bundle_config_file,
    prepare_data,
    probe_cells,
    read_bundle,
    run_cells,
    run_overrides,
    train_cell,
)
from maskseg_monai.experiments.validation import ValidationSet, iter_batches, load_validation, validation_set

__all__ = [
    "BASELINE_METRICS",
    "COMMON_RESERVED_KEYS",
    "Cell",
    "DEFAULT_DEMO_SET",
    "DEFAULT_SMALL_AREA",
    "GLOBAL_METRICS",
    "REGION_METRICS",
    "REPORTED_KEYS",
    "ValidationSet",
    "add_common_arguments",
    "bundle_config_file",
    "check_run_inputs",
    "command_line",
    "evaluate_cell",
    "format_value",
    "iter_batches",
    "load_pyplot",
    "load_validation",
    "markdown_table",
    "mean_std",
    "parse_command",
    "parse_override",
    "prepare_data",
    "probe_cells",
    "read_bundle",
    "run_cells",
    "run_overrides",
    "run_settings",
    "save_figure",
    "summarize_runs",
    "train_cell",
    "validation_set",
    "write_csv",
    "write_markdown",
]
