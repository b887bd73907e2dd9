"""The run folder: one per experiment, never overwritten. This package owns its layout, every
file name in it and all reading and writing of it; training, inference, experiments and
robustness go through it.

Layout::

    runs/<model>-<dataset>-<YYYYmmdd-HHMMSS>/
        config.yaml          resolved experiment config
        data.json            what the model was trained on (file, dims, extractor, partitions)
        env.json             software, hardware and the data file's hash
        experiment.json      seeds and status (running, finished, failed)
        results.csv/.md      one row per (seed, partition) and mean ± std
        metrics.json         aggregate metrics
        artifacts.json       mean ± std of the runs' test-split artifacts (when a model has them)
        evaluation*.json     ``msakit evaluate`` reports
        seed<S>/<partition>/ one training run
            config.yaml, data.json   copies, so the folder is self-contained
            epochs.csv       per-epoch log (train/valid losses and metrics)
            best.safetensors selected weights (no optimiser state; read with load_best_state)
            best.json        what was selected: epoch, selection metric and value
            last.pt          resumable state (model, optimiser, scheduler, RNG, counters);
                             only while the training run is unfinished (train.keep_last keeps it)
            metrics.json     test metrics of the selected checkpoint
            predictions.csv  test predictions
            artifacts.json   what the model exposes after training (e.g. generated labels)
            error.txt        the traceback, when the run failed in a worker process
"""

from msakit.runfolder.records import (
    ARTIFACTS_FILE,
    BEST_METADATA,
    BEST_WEIGHTS,
    CONFIG_FILE,
    DATA_FILE,
    ENV_FILE,
    EPOCHS_FILE,
    ERROR_FILE,
    EVALUATION_FILE,
    EXPERIMENT_FILE,
    LAST_CHECKPOINT,
    LEGACY_BEST_CHECKPOINT,
    METRICS_FILE,
    PREDICTION_COLUMNS,
    PREDICTIONS_FILE,
    RESULTS_CSV,
    RESULTS_MD,
    append_epoch_row,
    checkpoint_dirs,
    config_path,
    copy_data_record,
    data_record_path,
    discard_unfinished_training,
    error_log_path,
    evaluation_file_name,
    folder_size,
    has_config,
    has_metrics,
    human_size,
    is_failed_run,
    json_ready,
    keep_epoch_rows_up_to,
    load_config,
    metrics_path,
    new_run_dir,
    predictions_files,
    read_artifacts,
    read_config_text,
    read_config_tree,
    read_data_record,
    read_environment,
    read_epochs,
    read_experiment_record,
    read_json,
    read_metrics,
    read_predictions,
    read_predictions_file,
    results_markdown_path,
    save_config,
    sub_run_dir,
    training_dirs,
    unused_paths,
    update_experiment_record,
    write_artifacts,
    write_data_record,
    write_environment,
    write_error_log,
    write_evaluation,
    write_json,
    write_metrics,
    write_predictions,
    write_results_tables,
    writing,
)
from msakit.runfolder.weights import (
    CheckpointError,
    RunError,
    drop_last_checkpoint,
    drop_weights,
    has_best_weights,
    has_last_checkpoint,
    last_checkpoint_path,
    load_best_into,
    load_best_metadata,
    load_best_state,
    load_checkpoint,
    load_state_into,
    save_best_state,
    save_last_checkpoint,
)

__all__ = [
    "ARTIFACTS_FILE", "BEST_METADATA", "BEST_WEIGHTS", "CONFIG_FILE", "DATA_FILE", "ENV_FILE",
    "EPOCHS_FILE", "ERROR_FILE", "EVALUATION_FILE", "EXPERIMENT_FILE", "LAST_CHECKPOINT",
    "LEGACY_BEST_CHECKPOINT", "METRICS_FILE", "PREDICTIONS_FILE", "PREDICTION_COLUMNS",
    "RESULTS_CSV", "RESULTS_MD",
    "CheckpointError", "RunError",
    "append_epoch_row", "checkpoint_dirs", "config_path", "copy_data_record",
    "data_record_path", "discard_unfinished_training", "drop_last_checkpoint", "drop_weights",
    "error_log_path", "evaluation_file_name", "folder_size", "has_best_weights", "has_config",
    "has_last_checkpoint", "has_metrics", "human_size", "is_failed_run", "json_ready",
    "keep_epoch_rows_up_to", "last_checkpoint_path", "load_best_into", "load_best_metadata",
    "load_best_state", "load_checkpoint", "load_config", "load_state_into", "metrics_path",
    "new_run_dir", "predictions_files", "read_artifacts", "read_config_text",
    "read_config_tree", "read_data_record", "read_environment", "read_epochs",
    "read_experiment_record", "read_json", "read_metrics", "read_predictions",
    "read_predictions_file", "results_markdown_path", "save_best_state", "save_config",
    "save_last_checkpoint", "sub_run_dir", "training_dirs", "unused_paths",
    "update_experiment_record", "write_artifacts", "write_data_record", "write_environment",
    "write_error_log", "write_evaluation", "write_json", "write_metrics", "write_predictions",
    "write_results_tables", "writing",
]
