"""Where the model a family trains (or starts from) comes from, decided the same way for every family.

A family's training node is a *provider*: it either trains its model or hands on one that already
exists. ``ModelSourceConfig.source`` chooses:

* ``train`` — always train (the default of every family's own pipeline).
* ``auto`` — the newest *compatible* saved version of the family's model (catalog dataset
  ``<namespace>.saved_models``), else the compatible registered version
  ``registry_name``/``registry_version`` (catalog dataset ``model_registry``; single process only,
  see below), else train.
* ``catalog`` — the newest compatible saved version, or an error saying why the newest one is not.
* ``registry`` — ``models:/<registry_name>/<registry_version>`` whatever it was trained with, as
  long as it fits the data's tokenizer.
* ``pretrained`` — the family's ``from_pretrained`` weights as they are (hub id or local folder).

"Compatible" means the same :class:`ModelIdentity`: everything that determines the trained model —
the family, its model and training settings (those that change the result), the data fingerprint
(which covers the corpus, sampling, ``seq_len`` and the tokenizer spec), the tokenizer's own
vocabulary and the identities of the models it was built from. Every trained model stores its
identity in ``router_pipelines.json`` and, when registered, its fingerprint as the version tag
``fingerprint``, so a scheduled retrain never silently reuses a stale model: change anything that
matters and the fingerprint changes.

Registry look-ups in ``auto`` happen only in a single process: off rank 0 MLflow is not configured
(see hooks.py), so ranks could decide differently. Under ``accelerate launch`` use ``catalog``
or ``registry`` explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router_pipelines.config import check_choice, check_registry_version, setting_differences
from router_pipelines.storage import digest_json

logger = logging.getLogger(__name__)

SOURCES = ("auto", "catalog", "registry", "pretrained", "train")
# A model only this project trains (a switchable model, a router, a routed LM) has no
# pretrained hub checkpoint to start from: the sources it accepts (check_trained_source).
TRAINED_SOURCES = tuple(source for source in SOURCES if source != "pretrained")
IDENTITY_KEY = "identity"  # where a bundle's metadata keeps its identity
FINGERPRINT_TAG = "fingerprint"  # the registry version tag holding the identity's fingerprint


@dataclass
class ModelSourceConfig:
    """Where a family's model comes from (see the module docstring)."""

    source: str = "train"  # auto | catalog | registry | pretrained | train
    registry_name: str | None = None  # null: the family's register.name
    registry_version: Any = "latest"  # a version number, "latest" or "@alias"

    def __post_init__(self) -> None:
        check_choice("source", self.source, SOURCES)
        if self.registry_name is not None and (
            not isinstance(self.registry_name, str) or not self.registry_name.strip()
        ):
            raise ValueError(f"registry_name: expected a name or null, got {self.registry_name!r}")
        self.registry_version = check_registry_version("registry_version", self.registry_version)


def check_trained_source(config: ModelSourceConfig, what: str) -> None:
    """``config.source`` is one of :data:`TRAINED_SOURCES`; ``what`` names the models.

    Raises:
        ValueError: ``source.source: 'pretrained' is not a source of <what>; ...``.
    """
    if config.source not in TRAINED_SOURCES:
        raise ValueError(
            f"source.source: {config.source!r} is not a source of {what}; choose one of "
            f"{list(TRAINED_SOURCES)}"
        )


@dataclass(frozen=True)
class ModelIdentity:
    """What determines a trained model, as JSON-ready ``inputs``; equal inputs, equal model."""

    inputs: Mapping[str, Any]

    @property
    def fingerprint(self) -> str:
        return digest_json(self.inputs)

    def to_metadata(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "inputs": dict(self.inputs)}

    def differences(self, other: Mapping[str, Any] | None) -> list[str]:
        """``"key theirs -> ours"`` for every leaf that differs from ``other`` (an identity's
        ``inputs``); one explanatory entry for a model saved before identities existed."""
        if not other:
            return ["it records no identity (saved by an older version of the project)"]
        return setting_differences(other, self.inputs)


def identity_of(metadata: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The identity ``inputs`` recorded in a bundle's metadata, or ``None``."""
    recorded = (metadata or {}).get(IDENTITY_KEY)
    return recorded.get("inputs") if isinstance(recorded, Mapping) else None


def fingerprint_of(metadata: Mapping[str, Any] | None) -> str | None:
    recorded = (metadata or {}).get(IDENTITY_KEY)
    return recorded.get("fingerprint") if isinstance(recorded, Mapping) else None


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of a tokenizer's vocabulary and special tokens (what a model's ids mean)."""
    return digest_json(
        {
            "vocab": sorted(tokenizer.get_vocab().items()),
            "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        }
    )


@dataclass
class SourceDecision:
    """What a provider node does: hand on ``bundle`` (reused) or build/train one (``None``)."""

    origin: str  # catalog | registry | pretrained | train
    bundle: Any = None  # the reused ModelBundle, when origin is catalog or registry
    where: str = ""  # the saved folder or models:/ URI it came from
    metadata: Mapping[str, Any] | None = None  # the reused model's router_pipelines.json

    @property
    def reused(self) -> bool:
        return self.bundle is not None


def resolve_source(
    config: ModelSourceConfig,
    identity: ModelIdentity,
    saved: Any,
    registry: Any,
    *,
    registry_name: str,
    key: str,
    single_process: bool = True,
) -> SourceDecision:
    """Decide where the model comes from (see the module docstring).

    Args:
        config: the family's source settings.
        identity: the identity the model would have if trained now.
        saved: a ``router_pipelines.datasets.ModelStore`` over the family's saved versions.
        registry: a ``router_pipelines.datasets.ModelRegistry``.
        registry_name: the registered name to look up when ``config.registry_name`` is null.
        key: the parameter path of ``config`` for error messages, e.g. ``"switchable.base"``.
        single_process: whether registry look-ups are allowed for ``auto``.

    Raises:
        ValueError: ``catalog`` without a compatible saved version (naming what differs), or a
            registry version that does not exist (naming it and the registry).
    """
    name = config.registry_name or registry_name
    fingerprint = identity.fingerprint
    if config.source in ("auto", "catalog"):
        versions = saved.versions()  # newest first; metadata only, no weights
        stored = next((v for v in versions if fingerprint_of(v.metadata) == fingerprint), None)
        if stored is not None:
            logger.info("%s: reusing the saved model %s (same identity)", key, stored.path)
            return SourceDecision("catalog", stored.load(), str(stored.path), stored.metadata)
        if config.source == "catalog" and not versions:
            raise ValueError(
                f"{key}.source=catalog: no saved model in {saved.path}; train one first "
                "(source: train) or use source: auto"
            )
        if versions:
            reasons = "; ".join(identity.differences(identity_of(versions[0].metadata))[:8])
            if config.source == "catalog":
                raise ValueError(
                    f"{key}.source=catalog: no saved model in {saved.path} was trained with the "
                    f"current data and settings; the newest ({versions[0].path}) differs in: "
                    f"{reasons}"
                )
            logger.info("%s: the newest saved model is not reused: %s", key, reasons)
        if single_process:
            version = _registered_match(registry, name, config.registry_version, fingerprint)
            if version is not None:
                logger.info("%s: reusing the registered model %s (same identity)", key, version.uri)
                bundle = version.load()
                return SourceDecision("registry", bundle, version.uri, bundle.metadata)
        return SourceDecision("train")
    if config.source == "registry":
        try:
            version = registry.get(name, config.registry_version)
        except ValueError as err:
            raise ValueError(f"{key}.registry_name / registry_version: {err}") from None
        bundle = version.load()
        differences = identity.differences(identity_of(bundle.metadata))
        if differences:
            logger.warning(
                "%s: using %s as asked, although it was trained with other settings or data: %s",
                key,
                version.uri,
                "; ".join(differences[:8]),
            )
        return SourceDecision("registry", bundle, version.uri, bundle.metadata)
    return SourceDecision(config.source)


def decide_source(
    source_params: Mapping[str, Any] | None,
    key: str,
    identity: ModelIdentity,
    saved: Any,
    registry: Any,
    *,
    registry_name: str,
) -> SourceDecision:
    """:func:`resolve_source` for a provider node: its ``source`` parameters (``None``: train)
    parsed at ``key``, registry look-ups only in a single process."""
    from router_pipelines.config import config_from_dict
    from router_pipelines.hooks import world_size

    config = config_from_dict(ModelSourceConfig, source_params, key)
    return resolve_source(
        config,
        identity,
        saved,
        registry,
        registry_name=registry_name,
        key=key,
        single_process=world_size() == 1,
    )


def _registered_match(registry: Any, name: str, version: str, fingerprint: str) -> Any:
    """The registered ``name``/``version`` if it exists and carries ``fingerprint``, else None."""
    if not registry.versions(name):
        return None
    try:
        candidate = registry.get(name, version)
    except ValueError:
        return None
    return candidate if candidate.tags.get(FINGERPRINT_TAG) == fingerprint else None


def tokenizer_problems(model: Any, tokenizer: Any) -> list[str]:
    """Why ``model`` cannot be trained or evaluated on ids from ``tokenizer`` (empty: it can).

    Checks that every token id fits the input embedding, and that the special-token ids the
    model's config declares (eos, bos, pad) are the tokenizer's.
    """
    problems = []
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embedding, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        problems.append(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows"
        )
    config = getattr(model, "config", None)
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
        model_id = getattr(config, name, None)
        token_id = getattr(tokenizer, name, None)
        if isinstance(model_id, int) and isinstance(token_id, int) and model_id != token_id:
            problems.append(f"{name} is {model_id} in the model but {token_id} in the tokenizer")
    return problems
