"""Champion and challenger: which registered version of a family is served.

Every new version a family registers becomes the ``challenger`` (an MLflow registry alias). It
becomes the ``champion`` only when MLflow's own model validation
(:func:`mlflow.validate_evaluation_results` with one :class:`mlflow.models.MetricThreshold`
per metric) passes against the current champion:

* the family's metric (``rule.metric``, e.g. ``validation_perplexity``) is better by at least
  ``rule.min_relative_change`` (a fraction of the champion's value; 0.01 = 1 %), and
* the cost metric, if the rule names one (e.g. ``lowest_width_effective_bits``), is no worse.

Both numbers come from the same held-out data: each version records the fingerprint of the
validation split it was measured on (tag ``held_out_data``). When the champion was measured on
other data, a family that supplies a re-scoring function (``promotion_node(namespace,
evaluate=..., inputs=[...])``) has the champion loaded from the registry (safetensors, no code
run) and scored on this run's held-out data by the same evaluation as the challenger; the
comparison then uses those numbers (kept on the champion as ``rescored.*`` tags, so the next
challenger on the same data reuses them). A family without one keeps the champion and tags the
challenger "not comparable" rather than compare numbers that do not mean the same. The first
version of a name becomes champion. A version
that is not promoted gets the tag ``promotion`` with the reason; the champion alias is only
ever moved from one version to a better one, never removed.

A family adds promotion with one node (:func:`promotion_node`, placed in its namespace's
pipeline) and one rule in ``conf/base/parameters_promotion.yml`` (docs/operations.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial, update_wrapper
from typing import Any

from router_pipelines.config import ConfigError, check_bool, check_non_empty_str, config_from_dict

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
HELD_OUT_TAG = "held_out_data"
DATA_REPORT = "data_processing.data_report"  # carries the validation split's fingerprint
PROMOTION_TAG = "promotion"
# Tags on a champion scored again on newer held-out data: ``rescored.held_out_data`` (which
# data) and ``rescored.<metric>`` per metric the family's re-scoring function returned.
RESCORED_PREFIX = "rescored."
# What a failed re-scoring may raise (a bundle that does not load, a tokenizer that does not fit
# the data, a registry error); anything else is a bug and stops the run.
RESCORE_ERRORS = (ValueError, KeyError, OSError, RuntimeError)

# ``evaluate(champion_bundle, *inputs) -> {metric: value}``: a family's re-scoring function.
Evaluate = Callable[..., Mapping[str, float]]


@dataclass
class PromotionRule:
    """How a family's challenger is compared with its champion."""

    metric: str  # a key of the registration's ``metrics`` (also a version tag)
    greater_is_better: bool = False
    min_relative_change: float = 0.01  # better by at least this fraction of the champion's value
    cost_metric: str | None = None  # must be no worse than the champion's (e.g. bits, params)
    cost_greater_is_better: bool = False

    def __post_init__(self) -> None:
        check_non_empty_str("metric", self.metric)
        check_bool("greater_is_better", self.greater_is_better)
        check_bool("cost_greater_is_better", self.cost_greater_is_better)
        if not 0.0 <= float(self.min_relative_change) <= 1.0:
            raise ValueError(
                f"min_relative_change: a fraction between 0 and 1, got {self.min_relative_change}"
            )
        self.min_relative_change = float(self.min_relative_change)
        if self.cost_metric is not None:
            check_non_empty_str("cost_metric", self.cost_metric)


@dataclass
class PromotionParams:
    """The ``promotion`` parameter group: on/off and one rule per family namespace."""

    enabled: bool = True
    rules: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_bool("enabled", self.enabled)


def parse_promotion_params(group: Mapping[str, Any] | None) -> PromotionParams:
    """The ``promotion`` group with each ``rules.<namespace>`` built as a :class:`PromotionRule`;
    errors name ``promotion.rules.<namespace>.<key>``."""
    params = config_from_dict(PromotionParams, group, "promotion")
    if not isinstance(params.rules, Mapping):
        raise ConfigError(f"promotion.rules: expected a mapping, got {params.rules!r}")
    params.rules = {
        str(namespace): config_from_dict(PromotionRule, rule, f"promotion.rules.{namespace}")
        for namespace, rule in params.rules.items()
    }
    return params


def promotion_node(
    namespace: str, evaluate: Evaluate | None = None, inputs: Sequence[str] = ()
) -> Any:
    """The ``promote`` node for the namespace's pipeline: ``registration`` +
    ``data_processing.data_report`` (the validation split's fingerprint) + ``params:promotion``
    (+ ``inputs``) -> ``promotion``. Declare ``params:promotion`` in the namespace pipeline's
    ``parameters`` and ``data_processing.data_report`` in its ``inputs``.

    Args:
        namespace: the family's namespace (its rule is ``promotion.rules.<namespace>``).
        evaluate: optional ``evaluate(bundle, *loaded_inputs) -> {metric: value}``: scores a
            registered model (a :class:`~router_pipelines.models.bundle.ModelBundle`) on this
            run's held-out data with the family's own evaluation, returning the same keys as
            the registration's ``metrics``. Called for the champion only when it was measured on
            other held-out data. ``None``: such a champion is not compared.
        inputs: the datasets and ``params:`` the function takes after the bundle, as named in
            the namespace (e.g. ``["validation_tokens", "tokenizer", "params:training"]``).
    """
    from kedro.pipeline import Node

    if evaluate is None and inputs:
        raise ValueError(f"promotion_node({namespace!r}): inputs {list(inputs)} without evaluate")
    # update_wrapper: the partial gets the function's name (Kedro logs it, and warns without)
    func = update_wrapper(
        partial(promote_registration, namespace=namespace, evaluate=evaluate),
        promote_registration,
    )
    return Node(
        func,
        ["registration", DATA_REPORT, "params:promotion", *inputs],
        "promotion",
        name="promote_champion",
    )


def rule_problem(run: Any, namespace: str, reported: Sequence[str], reporter: str) -> str | None:
    """Checked before any node runs (each family's ``checks``): when the run promotes
    ``namespace``, ``promotion.rules.<namespace>`` exists and its metric and cost metric are
    among ``reported``, the headline metrics the family's registration reports (``reporter``
    names it in the message). ``run``: the :class:`~router_pipelines.validation.RunParameters`.
    """
    promotion = run.parsed.get("promotion")
    promotes = f"{namespace}.promote_champion" in run.consumers(f"{namespace}.registration")
    if promotion is None or not promotion.enabled or not promotes:
        return None
    allowed = list(reported)
    rule = promotion.rules.get(namespace)
    if rule is None:
        return (
            f"promotion.rules.{namespace}: no rule for the {namespace} family; add one to "
            f"conf/base/parameters_promotion.yml (metrics allowed: {allowed})"
        )
    for field_name in ("metric", "cost_metric"):
        key = getattr(rule, field_name)
        if key is not None and key not in allowed:
            return (
                f"promotion.rules.{namespace}.{field_name}: {key!r} is not a metric {reporter} "
                f"reports; allowed: {allowed}"
            )
    return None


def promote_registration(
    registration: Mapping[str, Any],
    data_report: Mapping[str, Any] | None,
    promotion_params: Mapping[str, Any],
    *evaluate_inputs: Any,
    namespace: str,
    evaluate: Evaluate | None = None,
) -> dict[str, Any]:
    """Node: alias the version registered in this run ``challenger``, and ``champion`` if it
    beats the champion (see the module docstring). A run that registered nothing changes
    nothing. ``evaluate_inputs`` are the loaded ``inputs`` of :func:`promotion_node`."""
    params = parse_promotion_params(promotion_params)
    if not params.enabled:
        return {"promoted": False, "alias": None, "reason": "promotion.enabled is false"}
    if not registration.get("registered"):
        return {
            "promoted": False,
            "alias": None,
            "reason": f"nothing registered ({registration.get('reason', 'no registration')})",
        }
    rule = params.rules.get(namespace)
    if rule is None:
        raise ConfigError(
            f"promotion.rules.{namespace}: no rule for the {namespace!r} family; add one to "
            f"conf/base/parameters_promotion.yml (known: {sorted(params.rules)})"
        )
    held_out = held_out_fingerprint(data_report)
    rescore = None
    if evaluate is not None:

        def rescore(champion: Any) -> Mapping[str, float]:
            return evaluate(load_registered(champion), *evaluate_inputs)

    result = promote(
        registration["name"],
        str(registration["version"]),
        registration.get("metrics") or {},
        rule,
        held_out=held_out,
        where=f"promotion.rules.{namespace}",
        rescore=rescore,
    )
    companions = [
        follow_promotion(c["name"], str(c["version"]), result)
        for c in registration.get("companions") or []
    ]
    return {**result, "companions": companions} if companions else result


def follow_promotion(name: str, version: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """Give a companion of a promoted model the same aliases: a model registered in the same
    run from the same parts (the query router's ``routed_lm``: router + switchable model) is
    challenger with it, and champion when it becomes champion, so ``models:/<name>@champion``
    serves the champion's parts. A companion has no promotion rule of its own."""
    import mlflow

    client = mlflow.MlflowClient()
    leader = f"{result['name']} v{result['version']}"
    client.set_registered_model_alias(name, CHALLENGER, version)
    if result["promoted"]:
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, PROMOTION_TAG, f"champion with {leader}")
    else:
        client.set_model_version_tag(
            name, version, PROMOTION_TAG, f"not promoted: follows {leader}"
        )
        if result.get("champion_version") is not None:
            _follow_champion(client, name, result["name"], str(result["champion_version"]))
    alias = CHAMPION if result["promoted"] else CHALLENGER
    logger.info("%s v%s is %s with %s", name, version, alias, leader)
    return {"name": name, "version": version, "alias": alias}


def _follow_champion(client: Any, name: str, leader: str, champion_version: str) -> None:
    """When ``name`` has no champion while its leader has one (a registry from before
    companions, or a first companion registered by a run that lost), alias champion the
    companion version registered by the leader champion's run, so ``models:/<name>@champion``
    serves the champion's parts. Without such a version it stays without a champion."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version_by_alias(name, CHAMPION)
        return
    except MlflowException:
        pass
    run_id = client.get_model_version(leader, champion_version).run_id
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'") if run_id else []
    if not found:
        logger.warning(
            "%s has no champion and no version from the run of %s v%s (champion): "
            "models:/%s@champion is unset until %s is promoted",
            name,
            leader,
            champion_version,
            name,
            leader,
        )
        return
    version = str(max(int(v.version) for v in found))
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(
        name, version, PROMOTION_TAG, f"champion with {leader} v{champion_version}"
    )
    logger.info("%s v%s is champion with %s v%s", name, version, leader, champion_version)


def load_registered(version: Any) -> Any:
    """The :class:`~router_pipelines.models.bundle.ModelBundle` of a registered version (an
    MLflow ``ModelVersion``), read from its safetensors bundle: no pickle, no logged code, no
    remote code."""
    import mlflow

    from router_pipelines.datasets.registry import ModelRegistry

    registry = ModelRegistry(mlflow.get_registry_uri(), tracking_uri=mlflow.get_tracking_uri())
    return registry.get(version.name, str(version.version)).load(trust_remote_code=False)


def check_same_tokenizer(bundle: Any, tokenizer: Any, what: str) -> None:
    """For a family's ``evaluate``: the champion's tokenizer must be the data's, or its scores on
    this run's token ids would mean nothing (and perplexities over other tokens do not compare).

    Raises:
        ValueError: the vocabularies or special tokens differ (a retrained tokenizer).
    """
    from router_pipelines.model_source import tokenizer_digest

    if tokenizer_digest(bundle.tokenizer) != tokenizer_digest(tokenizer):
        raise ValueError(
            f"{what}: its tokenizer ({len(bundle.tokenizer)} tokens) is not the data's "
            f"({len(tokenizer)} tokens, data.tokenizer); scores on other token ids do not compare"
        )


def held_out_fingerprint(data_report: Mapping[str, Any] | None) -> str:
    """``<token cache fingerprint>/validation/<rows>``: the held-out split both versions must
    have been measured on (the cache fingerprint covers the data, tokenizer, seq_len, split)."""
    report = dict(data_report or {})
    return f"{report.get('fingerprint', '')}/validation/{report.get('validation_rows', '')}"


def promote(
    name: str,
    version: str,
    metrics: Mapping[str, float],
    rule: PromotionRule,
    *,
    held_out: str,
    where: str = "promotion rule",
    client: Any = None,
    rescore: Callable[[Any], Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Alias ``name`` version ``version`` challenger, and champion when it passes ``rule``.

    ``rescore(champion_model_version) -> metrics`` scores the champion on ``held_out`` when it
    was measured on other data (``None``: such a champion is not compared).

    Returns:
        ``{"promoted", "alias", "name", "version", "champion_version", "reason"}``, plus
        ``"champion_rescored": {metric: value}`` when the champion was re-scored; the alias
        is the one this version holds afterwards.

    Raises:
        ConfigError: ``metrics`` lacks the rule's metric or cost metric (naming ``where``).
    """
    import mlflow

    client = client or mlflow.MlflowClient()
    for key in (rule.metric, rule.cost_metric):
        if key is not None and not _is_number(metrics.get(key)):
            raise ConfigError(
                f"{where}: metric {key!r} is not among the registered version's metrics "
                f"{sorted(metrics)}"
            )
    client.set_model_version_tag(name, version, HELD_OUT_TAG, held_out)
    client.set_registered_model_alias(name, CHALLENGER, version)
    champion = _version_by_alias(client, name, CHAMPION)
    if champion is None or str(champion.version) == version:
        return _crown(client, name, version, None, "first version: no champion yet")
    baseline = _tag_metrics(champion.tags, rule)
    rescored: dict[str, float] | None = None
    if champion.tags.get(HELD_OUT_TAG) != held_out:
        other_data = (
            f"champion v{champion.version} was measured on other held-out data "
            f"({champion.tags.get(HELD_OUT_TAG)!r}, not {held_out!r})"
        )
        if champion.tags.get(RESCORED_PREFIX + HELD_OUT_TAG) == held_out:
            rescored = _tag_metrics(champion.tags, rule, prefix=RESCORED_PREFIX)
        elif rescore is None:
            return _keep(client, name, version, champion, f"{other_data}; not comparable")
        else:
            try:
                rescored = _rescore(client, champion, rescore, held_out)
            except RESCORE_ERRORS as error:
                return _keep(
                    client,
                    name,
                    version,
                    champion,
                    f"{other_data} and could not be re-scored on it "
                    f"({type(error).__name__}: {error})",
                )
        baseline = {
            key: rescored[key] for key in (rule.metric, rule.cost_metric) if key in rescored
        }
    missing = [key for key in (rule.metric, rule.cost_metric) if key and key not in baseline]
    if missing:
        return _keep(
            client, name, version, champion, f"champion v{champion.version} has no {missing}"
        )
    on_what = " (re-scored on this held-out data)" if rescored is not None else ""
    failure = validation_failure(metrics, baseline, rule)
    if failure is not None:
        result = _keep(client, name, version, champion, failure + on_what)
    else:
        change = metrics[rule.metric] - baseline[rule.metric]
        result = _crown(
            client,
            name,
            version,
            champion,
            f"{rule.metric} {metrics[rule.metric]:.6g} vs champion v{champion.version}'s "
            f"{baseline[rule.metric]:.6g}{on_what} ({change:+.3g})",
        )
    if rescored is not None:
        result["champion_rescored"] = rescored
    return result


def _rescore(
    client: Any, champion: Any, rescore: Callable[[Any], Mapping[str, float]], held_out: str
) -> dict[str, float]:
    """The champion's metrics on ``held_out`` from the family's function, recorded on the
    champion as ``rescored.*`` tags (its own ``held_out_data`` and metric tags stay as
    registered)."""
    logger.info(
        "%s v%s was measured on other held-out data: re-scoring it on this run's",
        champion.name,
        champion.version,
    )
    scored = {key: float(value) for key, value in dict(rescore(champion)).items()}
    for key, value in scored.items():
        client.set_model_version_tag(
            champion.name, str(champion.version), f"{RESCORED_PREFIX}{key}", repr(value)
        )
    client.set_model_version_tag(
        champion.name, str(champion.version), RESCORED_PREFIX + HELD_OUT_TAG, held_out
    )
    return scored


def thresholds(rule: PromotionRule) -> dict[str, Any]:
    """The ``MetricThreshold`` per metric that :func:`mlflow.validate_evaluation_results` checks:
    the metric better by ``min_relative_change`` (0: at least as good), the cost no worse."""
    from mlflow.models import MetricThreshold

    checks = {
        rule.metric: MetricThreshold(
            min_relative_change=rule.min_relative_change,
            greater_is_better=rule.greater_is_better,
        )
    }
    if rule.cost_metric is not None:
        checks[rule.cost_metric] = MetricThreshold(
            min_relative_change=0.0, greater_is_better=rule.cost_greater_is_better
        )
    return checks


def validation_failure(
    candidate: Mapping[str, float], baseline: Mapping[str, float], rule: PromotionRule
) -> str | None:
    """MLflow's validation of ``candidate`` against ``baseline``: ``None`` when it passes, else
    MLflow's message (which metric failed which check, with both values)."""
    import mlflow
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    checks = thresholds(rule)
    keep = set(checks)
    try:
        mlflow.validate_evaluation_results(
            checks,
            EvaluationResult({k: float(v) for k, v in candidate.items() if k in keep}, {}),
            EvaluationResult({k: float(v) for k, v in baseline.items() if k in keep}, {}),
        )
    except ModelValidationFailedException as error:
        return error.message
    return None


def _crown(client: Any, name: str, version: str, champion: Any, reason: str) -> dict[str, Any]:
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, PROMOTION_TAG, f"champion: {reason}"[:5000])
    if champion is not None:
        client.set_model_version_tag(
            name, str(champion.version), PROMOTION_TAG, f"superseded by v{version}"
        )
    logger.info("%s v%s is the champion: %s", name, version, reason)
    return {
        "promoted": True,
        "alias": CHAMPION,
        "name": name,
        "version": version,
        "champion_version": version,
        "reason": reason,
    }


def _keep(client: Any, name: str, version: str, champion: Any, reason: str) -> dict[str, Any]:
    client.set_model_version_tag(name, version, PROMOTION_TAG, f"not promoted: {reason}"[:5000])
    logger.info("%s v%s stays challenger: %s", name, version, reason)
    return {
        "promoted": False,
        "alias": CHALLENGER,
        "name": name,
        "version": version,
        "champion_version": str(champion.version),
        "reason": reason,
    }


def _version_by_alias(client: Any, name: str, alias: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _tag_metrics(
    tags: Mapping[str, str], rule: PromotionRule, prefix: str = ""
) -> dict[str, float]:
    values = {}
    for key in (rule.metric, rule.cost_metric):
        if key is None or prefix + key not in tags:
            continue
        try:
            values[key] = float(tags[prefix + key])
        except ValueError:
            continue
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
