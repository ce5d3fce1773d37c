import mlflow

from router_pipelines.tracking import loss_curve_figure, metric_logger, metric_namespace


def test_metric_logger_logs_history_only_inside_a_run(mlflow_store):
    log = metric_logger(prefix="train/")
    log({"loss": 2.0}, 0)  # no run: silently nothing
    with mlflow.start_run() as run:
        log({"loss": 2.0}, 1)
        log({"loss": 1.0}, 2)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]


def test_loss_curve_figure_plots_train_and_eval():
    figure = loss_curve_figure(
        {
            "train_loss": [(0, 3.0), (10, 2.0)],
            "eval_loss": [(10, 2.5)],
            "lr": [(0, 1e-3), (10, 5e-4)],
        },
        "t",
    )
    loss_axes, lr_axes = figure.axes
    labels = [line.get_label() for line in loss_axes.get_lines()]
    assert labels == ["train loss", "eval loss"]
    legend = [text.get_text() for text in loss_axes.get_legend().get_texts()]
    assert legend == labels, "every curve of the panel is in its legend"
    assert loss_axes.get_ylabel() == "loss (nats per token)"
    assert (lr_axes.get_ylabel(), lr_axes.get_xlabel()) == ("learning rate", "optimizer step")


def test_a_summed_train_loss_is_drawn_as_its_per_width_mean():
    """The joint switchable loss sums one loss per width (~3x an eval loss): the figure draws
    the logged mean, so train and eval share a scale."""
    figure = loss_curve_figure(
        {
            "train_loss": [(0, 16.9), (10, 16.5)],
            "train_loss_per_width": [(0, 5.63), (10, 5.5)],
            "eval_loss": [(10, 5.7)],
            "eval_bits": [(10, 2.0)],
        },
        "switchable",
    )
    (axes,) = figure.axes
    drawn = {line.get_label(): list(line.get_ydata()) for line in axes.get_lines()}
    assert drawn == {
        "train loss (mean over widths)": [5.63, 5.5],
        "eval loss (at 2 bits)": [5.7],
    }


def test_metrics_are_logged_under_the_namespace_of_the_node(mlflow_store):
    """Two trainings in one run keep one history each (issue 7: histories collided)."""
    with mlflow.start_run() as run:
        with metric_namespace("pretrain"):
            pretrain_log = metric_logger()
        with metric_namespace("switchable"):
            metric_logger()({"train_loss": 3.0}, 1)
        pretrain_log({"train_loss": 2.0}, 1)  # made inside the node, called later
        metric_logger()({"train_loss": 9.0}, 1)  # outside any node: no prefix
    client = mlflow.MlflowClient()
    history = {
        name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        for name in ("pretrain/train_loss", "switchable/train_loss", "train_loss")
    }
    assert history == {
        "pretrain/train_loss": [(1, 2.0)],
        "switchable/train_loss": [(1, 3.0)],
        "train_loss": [(1, 9.0)],
    }


def test_loss_curve_figure_is_not_left_open_in_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    loss_curve_figure({"train_loss": [(0, 1.0)]}, "t")
    assert plt.get_fignums() == before


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_a_metric_is_not_linked_to_a_model_logged_at_the_same_step(mlflow_store):
    """MLflow 3 links a fluent metric to every model the run logged at that step; a later
    family's training metric must not land on an earlier family's registered model."""
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(
            name="base", python_model=_Echo(), step=30, pip_requirements=[]
        )
        with metric_namespace("query_router"):
            metric_logger()({"train_loss": 3.0}, 30)
    client = mlflow.MlflowClient()
    assert {m.key for m in client.get_logged_model(info.model_id).metrics or []} == set()
    history = client.get_metric_history(run.info.run_id, "query_router/train_loss")
    assert [(m.step, m.value) for m in history] == [(30, 3.0)]
