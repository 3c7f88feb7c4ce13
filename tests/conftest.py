"""Test-wide settings: offline, quiet, one thread per process (2-core machines, STACK-NOTES 9)."""
import os

for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
             "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "DVC_NO_ANALYTICS": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}.items():
    os.environ.setdefault(k, v)

import torch  # noqa: E402

torch.set_num_threads(1)
