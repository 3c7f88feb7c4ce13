"""One module per pipeline stage: load inputs, call the algorithm, write outputs. Pure core: no prefect/mlflow/dvc.

Each ``run(cfg, on_log)`` returns a StageResult; tasks/ turns it into MLflow calls, metrics files and plots."""
