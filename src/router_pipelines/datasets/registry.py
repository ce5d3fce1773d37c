"""The MLflow Model Registry, read without unpickling or importing model code.

:class:`ModelRegistryDataset` loads a :class:`ModelRegistry` handle bound to the registry the
run uses (kedro-mlflow sets it from ``conf/<env>/mlflow.yml``). Looking up versions reads the
registry's database; :meth:`RegisteredModelVersion.load` downloads only the model's bundle
folder (artifact ``model``: safetensors weights, tokenizer, ``router_pipelines.json``) and reads
it with :func:`router_pipelines.models.bundle.load_bundle`. ``mlflow.pyfunc.load_model`` is never
called: it would execute the code logged with the model (and older models were pickles).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from router_pipelines.config import check_non_empty_str, check_registry_version
from router_pipelines.models.bundle import ModelBundle, load_bundle

BUNDLE_ARTIFACT = "model"  # the pyfunc artifact key holding the bundle folder (see serving/)
PYFUNC_FLAVOR = "python_function"


@dataclass(frozen=True)
class RegisteredModelVersion:
    """One registered version; :meth:`load` reads its bundle from safetensors."""

    name: str
    version: str
    tags: dict[str, str]
    run_id: str | None
    uri: str  # models:/<name>/<version>
    description: str | None = None
    aliases: tuple[str, ...] = ()
    _registry: ModelRegistry | None = field(default=None, repr=False, compare=False)

    def load(self, trust_remote_code: bool = False) -> ModelBundle:
        """Download the bundle folder and load it; the bundle's ``source_dir`` is ``None`` (a
        registry copy, which a versioned catalog dataset saves as a new version).

        Raises:
            ValueError: the version has no bundle artifact (not logged by ``register_model``).
        """
        if self._registry is None:
            raise ValueError(f"{self.uri}: not bound to a registry")
        return self._registry.load_bundle(self, trust_remote_code=trust_remote_code)


class ModelRegistry:
    """Registered models of one MLflow registry (lazy: nothing is read until asked)."""

    def __init__(self, registry_uri: str, tracking_uri: str | None = None) -> None:
        self.registry_uri = registry_uri
        self.tracking_uri = tracking_uri or registry_uri
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.registry_uri
            )
        return self._client

    def versions(self, name: str) -> list[RegisteredModelVersion]:
        """Every version of ``name``, newest (highest number) first; empty if not registered."""
        _check_name(name)
        found = self.client.search_model_versions(f"name = '{name}'")
        return sorted((self._wrap(v) for v in found), key=lambda v: int(v.version), reverse=True)

    def get(self, name: str, version: str | int = "latest") -> RegisteredModelVersion:
        """``version``: ``"latest"`` (the highest number), ``"@alias"`` or a number.

        Raises:
            ValueError: a bad name or version, or one that is not registered, naming the name,
                the version and this registry's URI.
        """
        from mlflow.exceptions import MlflowException

        _check_name(name)
        version = check_registry_version("version", version)
        if version == "latest":
            versions = self.versions(name)
            if not versions:
                raise ValueError(self._missing(name, version, "no version is registered"))
            return versions[0]
        try:
            if version.startswith("@"):
                found = self.client.get_model_version_by_alias(name, version[1:])
            else:
                found = self.client.get_model_version(name, version)
        except MlflowException as err:
            known = [v.version for v in self.versions(name)]
            reason = f"registered versions: {known}" if known else "no version is registered"
            raise ValueError(self._missing(name, version, f"{reason} ({err.message})")) from None
        return self._wrap(found)

    def load_bundle(
        self, version: RegisteredModelVersion, trust_remote_code: bool = False
    ) -> ModelBundle:
        """Download ``version``'s bundle folder into a temporary folder and load it."""
        from mlflow.artifacts import download_artifacts
        from mlflow.models import Model

        root = self.client.get_model_version_download_uri(version.name, version.version)
        with tempfile.TemporaryDirectory(prefix="registry-") as tmp:
            mlmodel = download_artifacts(
                artifact_uri=f"{root.rstrip('/')}/MLmodel",
                dst_path=tmp,
                tracking_uri=self.tracking_uri,
            )
            # MLmodel is YAML, read with yaml.safe_load: no code runs here.
            flavor = Model.load(mlmodel).flavors.get(PYFUNC_FLAVOR, {})
            artifact = (flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT)
            if not artifact or "path" not in artifact:
                raise ValueError(
                    f"{version.uri} (registry {self.registry_uri}): no {BUNDLE_ARTIFACT!r} "
                    "bundle artifact; it was not registered by router_pipelines.serving"
                )
            folder = download_artifacts(
                artifact_uri=f"{root.rstrip('/')}/{artifact['path']}",
                dst_path=str(Path(tmp) / "bundle"),
                tracking_uri=self.tracking_uri,
            )
            # Weights are read into memory (or mapped: an unlinked file stays readable on
            # POSIX), so the download can go once the bundle is loaded.
            bundle = load_bundle(Path(folder), trust_remote_code=trust_remote_code)
        bundle.source_dir = None
        return bundle

    def _wrap(self, found: Any) -> RegisteredModelVersion:
        return RegisteredModelVersion(
            name=found.name,
            version=str(found.version),
            tags=dict(found.tags or {}),
            run_id=found.run_id,
            uri=f"models:/{found.name}/{found.version}",
            description=found.description or None,
            aliases=tuple(getattr(found, "aliases", None) or ()),
            _registry=self,
        )

    def _missing(self, name: str, version: str, reason: str) -> str:
        return (
            f"model {name!r} version {version!r} is not in the registry at "
            f"{self.registry_uri}: {reason}"
        )

    def __repr__(self) -> str:
        return f"ModelRegistry({self.registry_uri!r})"


def _check_name(name: Any) -> None:
    check_non_empty_str("name", name)
    if "'" in name:  # it goes into a search filter string
        raise ValueError(f"name: a registered model name cannot contain a quote, got {name!r}")


class ModelRegistryDataset(AbstractDataset):
    """Read-only: loads a :class:`ModelRegistry` for the current MLflow registry.

    Without arguments the registry and tracking URIs are MLflow's current ones at load time
    (kedro-mlflow sets them when the session starts).

    Catalog example::

        model_registry:
          type: router_pipelines.datasets.ModelRegistryDataset
    """

    def __init__(
        self,
        registry_uri: str | None = None,
        tracking_uri: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._registry_uri = registry_uri
        self._tracking_uri = tracking_uri
        self.metadata = metadata

    def load(self) -> ModelRegistry:
        import mlflow

        tracking_uri = self._tracking_uri or mlflow.get_tracking_uri()
        registry_uri = self._registry_uri or mlflow.get_registry_uri()
        return ModelRegistry(registry_uri, tracking_uri=tracking_uri)

    def save(self, data: Any) -> None:
        raise DatasetError(
            "ModelRegistryDataset is read-only; register models with "
            "router_pipelines.serving.register_model"
        )

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"registry_uri": self._registry_uri, "tracking_uri": self._tracking_uri}
