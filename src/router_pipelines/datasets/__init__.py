"""Kedro datasets of the project.

* :class:`PretrainedModelDataset`, :class:`PretrainedTokenizerDataset` — ``save_pretrained``
  folders (optionally versioned), written atomically; :class:`OptionalModelDataset` also
  saves a skipped model (``{"enabled": False}``) as a version of its own.
* :class:`ModelVersionsDataset` — every saved version of a model, read lazily (read-only).
* :class:`ModelRegistryDataset` — the MLflow Model Registry, read without unpickling (read-only).
* :class:`TokenBlocksDataset` — a token split saved as a reference to its token-cache store
  (loaded by memory-mapping it again, never copied).
* :class:`AtomicJSONDataset`, :class:`AtomicParquetDataset`, :class:`AtomicMatplotlibDataset` —
  kedro-datasets' report datasets with atomic local writes (wrappable by
  ``MlflowArtifactDataset``).

Names are imported on first use (PEP 562), as kedro-datasets does: a catalog that uses one
dataset does not pay for importing pandas, pyarrow and matplotlib for the others.
"""

from router_pipelines.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "AtomicJSONDataset": "atomic",
        "AtomicMatplotlibDataset": "atomic_plot",
        "AtomicParquetDataset": "atomic",
        "ModelRegistry": "registry",
        "ModelRegistryDataset": "registry",
        "ModelStore": "model_store",
        "ModelVersionsDataset": "model_store",
        "OptionalModelDataset": "pretrained",
        "PretrainedModelDataset": "pretrained",
        "PretrainedTokenizerDataset": "pretrained",
        "RegisteredModelVersion": "registry",
        "StoredModel": "model_store",
        "TokenBlocksDataset": "token_blocks",
    },
)
