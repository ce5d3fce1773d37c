"""pyfunc wrapper of the routed LM (seed 004): each query is routed by the query router, then
answered by the chosen model (a width of the switchable model, or the ladder's model of
another size, ``ladder_lm``); the answer, the model used and its measured cost come back::

    lm = mlflow.pyfunc.load_model("models:/routed_lm/latest")
    lm.predict(["The json module"], params={"max_new_tokens": 20, "target_share": 0.3})
    #    answer  model  p_strong  seconds  bytes
    lm.predict(["The json module"], params={"lambda": 0.0})  # a ladder: the best predicted rung

Over a ladder of more than two widths (e.g. 2, 4, 8 bits) each query takes the rung with the
best predicted quality minus lambda x cost (:func:`route_questions`), and is answered by it.

``seconds`` is the wall time of the generation on the serving machine, ``bytes`` the weight
bytes read for it (the chosen width's packed weight bytes per generated token; the ladder LM's
weights at 16 bits, the same scale). The artifacts are the switchable model (``model``), the
router folder (``router``), ``routing.json`` and, when the ladder has it, ``ladder_lm``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.models import ModelSignature, infer_signature, set_model
from mlflow.pyfunc import PythonModel

from router_pipelines.families.query_router import LADDER_LM
from router_pipelines.models.bundle import load_bundle
from router_pipelines.serving.generation import (
    DEFAULT_MAX_NEW_TOKENS,
    check_max_new_tokens,
    greedy_continuations,
    prompts_from,
)
from router_pipelines.serving.query_router import load_routing, route_questions

PARAMS: dict[str, Any] = {
    "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
    "target_share": -1.0,  # two models: < 0 the calibrated threshold, else this strong share
    "lambda": -1.0,  # a ladder: < 0 the calibrated serving_lambda, else this lambda
}


def signature() -> ModelSignature:
    import pandas as pd

    example = pd.DataFrame(
        [{"answer": "text", "model": "2bit", "p_strong": 0.4, "seconds": 0.01, "bytes": 1.0}]
    )
    return infer_signature(["a query"], example, params=PARAMS)


def width_of(name: str) -> int | None:
    return None if name == "fp" else int(name.removesuffix("bit"))


class RoutedLMModel(PythonModel):
    """Route, then generate greedily with the chosen model."""

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(Path(context.artifacts["model"]))
        self.bundle.model.eval()
        self.router = load_bundle(Path(context.artifacts["router"]))
        self.router.model.eval()
        self.routing = load_routing(context.artifacts["routing"])
        self.ladder_lm = None
        if LADDER_LM in self.routing["ladder"]:
            self.ladder_lm = load_bundle(Path(context.artifacts[LADDER_LM]))
            self.ladder_lm.model.eval()

    def _answerer(self, name: str) -> tuple[Any, float]:
        """The bundle that answers for rung ``name`` (in its state) and its weight bytes."""
        from router_pipelines.families.switchable.bits import bit_report, fp_weight_bytes

        if name == LADDER_LM:
            return self.ladder_lm, float(fp_weight_bytes(self.ladder_lm.model))
        self.bundle.model.set_precision(width_of(name))
        return self.bundle, float(bit_report(self.bundle.model)["weight_bytes"])

    def predict(self, context, model_input, params=None):
        params = params or {}
        max_new_tokens = check_max_new_tokens(
            params.get("max_new_tokens", PARAMS["max_new_tokens"])
        )
        queries = prompts_from(model_input)
        routes = route_questions(
            self.router,
            self.routing,
            queries,
            params.get("target_share", PARAMS["target_share"]),
            params.get("lambda", PARAMS["lambda"]),
        )
        rows = []
        for query, name, strong in zip(queries, routes["model"], routes["p_strong"], strict=True):
            answerer, weight_bytes = self._answerer(name)
            start = time.perf_counter()
            answer = greedy_continuations(answerer, [query], max_new_tokens)[0]
            seconds = time.perf_counter() - start
            new_tokens = len(answerer.tokenizer.encode(answer, add_special_tokens=False))
            rows.append(
                {
                    "answer": answer,
                    "model": name,
                    "p_strong": float(strong),
                    "seconds": seconds,
                    "bytes": weight_bytes * max(new_tokens, 1),
                }
            )
        self.bundle.model.set_precision(None)
        import pandas as pd

        return pd.DataFrame(rows)


set_model(RoutedLMModel())
