import io
import math

import pandas as pd
import pytest
from matplotlib.figure import Figure

from router_pipelines.evaluation.pareto import pareto_front, plot_fronts, plot_pareto


@pytest.fixture
def results() -> pd.DataFrame:
    # Hand-made: d is dominated by b on both pairs; f ties c exactly; g has no effective_bits;
    # h equals a on bits but has worse perplexity; e has the fewest bits but is slow.
    return pd.DataFrame(
        {
            "name": ["a", "b", "c", "d", "e", "f", "g", "h"],
            "perplexity": [10.0, 12.0, 15.0, 13.0, 30.0, 15.0, 5.0, 11.0],
            "effective_bits": [16.0, 8.0, 4.5, 8.5, 2.5, 4.5, math.nan, 16.0],
            "tokens_per_s": [100.0, 300.0, 500.0, 250.0, 400.0, 500.0, 50.0, 90.0],
        },
        index=[10, 11, 12, 13, 14, 15, 16, 17],  # non-default index must be kept
    )


def front_names(df: pd.DataFrame, mask: pd.Series) -> set[str]:
    return set(df.loc[mask, "name"])


def test_front_perplexity_vs_bits(results):
    mask = pareto_front(results, {"perplexity": "min", "effective_bits": "min"})
    assert mask.dtype == bool
    assert list(mask.index) == list(results.index)
    # c and f tie exactly: both stay; g has NaN bits: never on the front.
    assert front_names(results, mask) == {"a", "b", "c", "e", "f"}


def test_front_perplexity_vs_speed(results):
    mask = pareto_front(results, {"perplexity": "min", "tokens_per_s": "max"})
    # g is complete on these two columns, so its NaN bits do not matter here.
    assert front_names(results, mask) == {"g", "a", "b", "c", "f"}


def test_single_objective_keeps_all_ties():
    df = pd.DataFrame({"perplexity": [3.0, 2.0, 2.0, math.nan]})
    mask = pareto_front(df, {"perplexity": "min"})
    assert mask.tolist() == [False, True, True, False]


def test_nan_row_does_not_dominate():
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [math.nan, 1.0]})
    assert pareto_front(df, {"x": "min", "y": "min"}).tolist() == [False, True]


@pytest.mark.parametrize(
    ("objectives", "message"),
    [
        ({}, "objectives"),
        ({"latency": "min"}, "latency"),
        ({"perplexity": "lowest"}, "perplexity"),
    ],
)
def test_bad_objectives_raise(results, objectives, message):
    with pytest.raises(ValueError, match=message):
        pareto_front(results, objectives)


def test_plot_connects_and_labels_the_front(results):
    mask = pareto_front(results, {"perplexity": "min", "effective_bits": "min"})
    figure = plot_pareto(results, "effective_bits", "perplexity", mask, "ppl vs bits")
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    assert axes.get_title() == "ppl vs bits"
    assert axes.get_xlabel() == "effective bits per weight", "a label with its unit"
    (front_line,) = axes.get_lines()
    assert list(front_line.get_xdata()) == [2.5, 4.5, 4.5, 8.0, 16.0]  # sorted by x
    labels = sorted(text.get_text() for text in axes.texts)
    assert labels == ["a", "b", "c", "e", "f"]
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue()[:4] == b"\x89PNG"


def test_plot_rejects_missing_column(results):
    mask = pd.Series(True, index=results.index)
    with pytest.raises(ValueError, match="latency"):
        plot_pareto(results, "latency", "perplexity", mask, "t")


FRONTS = {
    "pareto_bits": {"perplexity": "min", "effective_bits": "min"},
    "pareto_speed": {"perplexity": "min", "tokens_per_s": "max"},
}


def test_plot_fronts_draws_one_panel_per_front(results):
    table = results.copy()
    table["pareto_bits"] = pareto_front(table, FRONTS["pareto_bits"])  # a given mask is used
    figure = plot_fronts(table, FRONTS)
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    bits_axes, speed_axes = figure.axes
    assert (bits_axes.get_xlabel(), bits_axes.get_ylabel()) == (
        "effective bits per weight (lower is better)",
        "validation perplexity (lower is better)",
    )
    assert speed_axes.get_title() == "validation perplexity vs decode speed, tokens/s at batch 1"
    assert sorted(t.get_text() for t in bits_axes.texts) == ["a", "b", "c", "e", "f"]
    # pareto_speed is not a column: computed from the objectives
    assert sorted(t.get_text() for t in speed_axes.texts) == ["a", "b", "c", "f", "g"]


def test_front_labels_do_not_overlap_each_other():
    """Five front points bunched in a corner: every label still gets a box of its own."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    table = pd.DataFrame(
        {
            "name": [f"configuration_{i}" for i in range(5)],
            "effective_bits": [2.0, 2.1, 2.2, 2.3, 16.0],
            "perplexity": [20.0, 19.9, 19.8, 19.7, 5.0],
        }
    )
    mask = pareto_front(table, {"perplexity": "min", "effective_bits": "min"})
    figure = plot_pareto(table, "effective_bits", "perplexity", mask, "crowded")
    renderer = FigureCanvasAgg(figure).get_renderer()
    notes = figure.axes[0].texts
    for note in notes:
        note.update_positions(renderer)
    boxes = [Text.get_window_extent(note, renderer) for note in notes]  # text, not its leader
    assert len(boxes) == 5
    for i, box in enumerate(boxes):
        for other in boxes[i + 1 :]:
            assert not box.overlaps(other), (box, other)


def test_plot_fronts_needs_two_objectives_per_front(results):
    with pytest.raises(ValueError, match="fronts.one: a plotted front needs exactly two"):
        plot_fronts(results, {"one": {"perplexity": "min"}})
    with pytest.raises(ValueError, match="fronts: give at least one"):
        plot_fronts(results, {})
