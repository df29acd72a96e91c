"""Deployment: a trained sparse network made small (compressed export) and fast (sparse CPU kernels).

- `export_run` / `export_model` write a safetensors file of kept values plus their positions;
  `load_export` / `load_exported_model` read it back exactly.
- `sparse_inference_model` (or `SparseInference.from_run` / `.from_export`) folds BatchNorm and runs
  each pruned convolution and linear layer with a kernel from `KERNELS` that skips the zeros.
"""

from anymask.deploy.export import (
    ExportResult,
    ModelSpec,
    export_model,
    export_state,
    load_export,
    load_exported_model,
)
from anymask.deploy.inference import InferenceLayer, SparseInference, sparse_inference_model
from anymask.deploy.kernels import KERNELS, LayerWeights, set_num_threads
from anymask.deploy.run_folder import TrainedRun, export_run, read_run

__all__ = [
    "KERNELS",
    "ExportResult",
    "InferenceLayer",
    "LayerWeights",
    "ModelSpec",
    "SparseInference",
    "TrainedRun",
    "export_model",
    "export_run",
    "export_state",
    "load_export",
    "load_exported_model",
    "read_run",
    "set_num_threads",
    "sparse_inference_model",
]
