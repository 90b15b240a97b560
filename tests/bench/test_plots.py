"""Score axes do not magnify noise: a spread of one example stays small on the report's plots."""

from __future__ import annotations

import pytest

from peftlab.bench import plots
from peftlab.bench.aggregate import build_tables
from peftlab.bench.plots import MIN_SCORE_SPAN, score_axis_limits

from bench.test_models_and_report import record


def test_a_tiny_spread_gets_the_minimum_span_centred_on_it():
    bottom, top = score_axis_limits([85.0, 85.1])
    assert top - bottom == pytest.approx(MIN_SCORE_SPAN) and (bottom + top) / 2 == pytest.approx(85.05)


def test_the_window_stays_within_0_to_100_where_the_scores_do():
    assert score_axis_limits([99.5, 100.0]) == pytest.approx((100 - MIN_SCORE_SPAN, 100))
    assert score_axis_limits([0.0, 1.0]) == pytest.approx((0, MIN_SCORE_SPAN))
    assert score_axis_limits([-3.0, -2.0]) == pytest.approx((-7.5, 2.5))  # a negative correlation: not moved


def test_a_wide_spread_and_losses_keep_their_own_scale():
    assert score_axis_limits([60.0, 85.0]) is None  # matplotlib's limits
    bottom, top = score_axis_limits([2.30, 2.31], greater_is_better=False)
    assert top - bottom == pytest.approx(0.231)  # a tenth of the largest loss
    assert score_axis_limits([0.0, 0.0], greater_is_better=False) is None


@pytest.mark.parametrize("draw", [plots.score_vs_trainable, plots.score_vs_memory,
                                  lambda table: plots.score_vs_knob(table, "rank")])
def test_the_score_plots_hold_their_axis(draw, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_png", lambda figure: figures.append(figure) or b"png")
    records = [record("lora[rank=1]", {"rank": 1}, 85.0), record("lora[rank=4]", {"rank": 4}, 85.1)]
    assert draw(build_tables(records)[0]) == b"png"
    bottom, top = figures[0].axes[0].get_ylim()
    plots.plt.close(figures[0])
    assert top - bottom >= MIN_SCORE_SPAN - 1e-9 and bottom <= 85.0 and top >= 85.1
