"""pyfunc wrapper of the query router (family ``query_router``, seed 004): questions in, the
predicted score distribution, P(strong) and the chosen model out; nothing is sampled::

    router = mlflow.pyfunc.load_model("models:/query_router/latest")
    router.predict(["What challenges did FDR face while in office"])
    #    p_1 ... p_5  expected_score  p_strong  route   model
    router.predict([...], params={"target_share": 0.2})  # threshold for a 20% strong share
    router.predict([...], params={"lambda": 0.0})  # a ladder: quality only (no cost)

The router reads the seed's prompt (its system instruction and ``[Question]\\n...\\n\\nPrediction:``
user turn, as trained) and takes the softmax over the five label tokens at the answer position.
The threshold on P(strong) is the calibrated one stored with the model (``routing.json``:
``serving_threshold``), or the quantile of the calibration scores for ``target_share``. Over a
ladder of more than two models the rung with the best predicted quality minus lambda x cost is
chosen (``routing.json``: ``ladder_rule``).
Logged as model code like :mod:`router_pipelines.serving.causal_lm`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.models import ModelSignature, infer_signature, set_model
from mlflow.pyfunc import PythonModel

from router_pipelines.models.bundle import load_bundle
from router_pipelines.serving.generation import prompts_from

# target_share < 0: the calibrated serving threshold (two models); lambda < 0: the calibrated
# serving_lambda of the quality - lambda x cost rule (a ladder of more than two models).
PARAMS: dict[str, Any] = {"target_share": -1.0, "lambda": -1.0}
OUTPUT_COLUMNS = ("p_1", "p_2", "p_3", "p_4", "p_5", "expected_score", "p_strong", "route", "model")


def signature() -> ModelSignature:
    """Questions in; one row per question with :data:`OUTPUT_COLUMNS`; params :data:`PARAMS`."""
    import pandas as pd

    example = pd.DataFrame(
        [
            {
                **{f"p_{s}": 0.2 for s in range(1, 6)},
                "expected_score": 3.0,
                "p_strong": 0.6,
                "route": "strong",
                "model": "8bit",
            }
        ]
    )
    return infer_signature(["a question"], example, params=PARAMS)


def load_routing(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def threshold_for(routing: dict[str, Any], target_share: Any) -> float:
    """The calibrated serving threshold, or the one for ``target_share`` in [0, 1]."""
    from router_pipelines.families.query_router import calibrate_threshold

    share = float(target_share)
    if share < 0:
        return float(routing["serving_threshold"])
    return calibrate_threshold(routing["calibration_p_strong"], share)


def route_questions(
    bundle: Any,
    routing: dict[str, Any],
    questions: list[str],
    target_share: Any,
    lam: Any = -1.0,
) -> Any:
    """The router's table for ``questions`` (see the module docstring).

    Two models: ``P(strong) >= threshold`` (calibrated, or for ``target_share``) sends a
    question to the strong one. A ladder of more than two: the router scores every rung below
    the strongest and the question takes the rung with the best predicted quality minus
    ``lam`` x the rung's measured mean cost (``lam < 0``: the calibrated ``serving_lambda``);
    ``p_*`` and ``p_strong`` are then the cheapest rung's.
    """
    import numpy as np
    import pandas as pd

    from router_pipelines.families.query_router import (
        PromptConfig,
        expected_gaps,
        lambda_choice,
        router_prompt,
    )
    from router_pipelines.models.query_router import expected_score, p_strong, predict_scores

    prompt = PromptConfig(**bundle.metadata["prompt"])
    ladder = routing["ladder"]
    if len(ladder) <= 2:
        dist = predict_scores(
            bundle.model, bundle.tokenizer, [router_prompt(q, prompt) for q in questions]
        )
        threshold = threshold_for(routing, target_share)
        strong = p_strong(dist).numpy()
        chosen = np.where(strong >= threshold, len(ladder) - 1, 0)
    else:
        per_rung = [
            predict_scores(
                bundle.model, bundle.tokenizer, [router_prompt(q, prompt, name) for q in questions]
            )
            for name in ladder[:-1]
        ]
        dist = per_rung[0]
        strong = p_strong(dist).numpy()
        rule = routing["ladder_rule"]
        lam = float(lam)
        lam = float(rule["serving_lambda"]) if lam < 0 else lam
        distributions = np.stack([d.numpy() for d in per_rung], axis=1)  # (N, R-1, 5)
        predicted = expected_gaps(distributions, rule["gap_means"])
        chosen = lambda_choice(predicted, rule["rung_costs"], lam)
    table = pd.DataFrame(dist.numpy(), columns=[f"p_{s}" for s in range(1, 6)])
    table["expected_score"] = expected_score(dist).numpy()
    table["p_strong"] = strong
    names = {0: "cheap", len(ladder) - 1: "strong"}
    table["route"] = [names.get(int(index), "intermediate") for index in chosen]
    table["model"] = [ladder[int(index)] for index in chosen]
    return table


class QueryRouterModel(PythonModel):
    """P(score), P(strong) and the route of each question."""

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(Path(context.artifacts["model"]))
        self.bundle.model.eval()
        self.routing = load_routing(context.artifacts["routing"])

    def predict(self, context, model_input, params=None):
        params = params or {}
        target = params.get("target_share", PARAMS["target_share"])
        lam = params.get("lambda", PARAMS["lambda"])
        return route_questions(self.bundle, self.routing, prompts_from(model_input), target, lam)


set_model(QueryRouterModel())
