"""Tests for anatomy.experiments.capacity_plots: chapter 3's figures draw what their captions say."""

import matplotlib
import pytest

from anatomy.data import MarkovSource
from anatomy.experiments import capacity, capacity_plots, scaling_laws

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fit():
    sources = [MarkovSource(3, 1, seed=0), capacity.teacher_source(3, 1, width=2)]
    return capacity.fit_population(sources, [1, 4], steps=3, record_every=1, train_fraction=[1.0, 0.5])


def test_plot_capacity_draws_one_curve_per_source(fit):
    fig = capacity_plots.plot_capacity(fit, ["a", "b"], capacity.table_params(3, 1))
    ax = fig.axes[0]
    curves = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert [list(c.get_xdata()) for c in curves] == [fit.params[:2], fit.params[2:]]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    plt.close(fig)


def test_plot_generalization_has_one_panel_per_source_and_two_bars_per_width(fit):
    fig = capacity_plots.plot_generalization(fit, ["b held out"], sources=[1], baselines=[0.5])
    assert len(fig.axes) == 1
    assert len(fig.axes[0].patches) == 2 * 2  # seen and held-out, two widths
    plt.close(fig)


def test_plot_scaling_marks_the_fitted_exponent():
    results = [
        {"params": n, "d_model": d, "tokens": [100, 200], "val_loss": [3.0 * n**-0.1 + 0.1, 3.0 * n**-0.1]}
        for n, d in ((1000, 8), (4000, 16), (16000, 32))
    ]
    fig = capacity_plots.plot_scaling(results)
    alpha = scaling_laws.fit_power_law([1000, 4000, 16000], [r["val_loss"][-1] for r in results]).alpha
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(f"{alpha:.3f}" in label for label in labels)
    assert len(fig.axes[1].get_lines()) == 3 + 1  # one curve per model and the checkpoint line
    plt.close(fig)


def test_plot_isoflop_puts_each_minimum_on_its_line():
    fig = capacity_plots.plot_isoflop([1e20, 1e22], marks={"x": (1e9, 2e10)})
    ax = fig.axes[0]
    points = [line for line in ax.get_lines() if line.get_marker() == "o" and len(line.get_xdata()) == 1]
    for line, flops in zip(points, (1e20, 1e22)):
        assert line.get_xdata()[0] == pytest.approx(scaling_laws.compute_optimal(flops)[0])
    assert len(points) == 2
    plt.close(fig)
