"""Model and figure checks: residual dof, observations behind categorical levels, figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

from kidresearch.errors import DisclosureError
from kidresearch.sdc import DisclosurePolicy, check_figure, check_model, crosstab


def _data(levels: dict[str, int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.concatenate([[k] * n for k, n in levels.items()])
    return pd.DataFrame({"y": rng.normal(size=len(g)), "g": g, "x": rng.normal(size=len(g))})


def test_ols_with_enough_observations_per_level_passes() -> None:
    df = _data({"a": 20, "b": 15, "c": 12})
    checked = check_model(smf.ols("y ~ g + x", df).fit(), name="ols")
    assert checked.passed
    levels = checked.summary().query("check == 'level_count'").set_index("level")["value"]
    # hand: dummies g[T.b] = 15, g[T.c] = 12, reference a = 47 - 27 = 20
    assert levels.to_dict() == {"b": 15, "c": 12, "(reference)": 20}
    dof = checked.summary().query("check == 'residual_dof'")["value"].iloc[0]
    assert dof == 47 - 4


def test_small_level_and_small_reference_fail() -> None:
    checked = check_model(smf.ols("y ~ g", _data({"a": 4, "b": 30, "c": 30})).fit())
    assert checked.record.status == "fail"
    assert (
        "term 'g' level '(reference)' rests on 4 observations (threshold 10)"
        in checked.record.reasons
    )


def test_residual_dof_below_minimum_fails() -> None:
    df = _data({"a": 12}).assign(x2=lambda d: d["x"] ** 2)
    checked = check_model(smf.ols("y ~ x + x2", df).fit())  # 12 - 3 = 9 < 10
    assert checked.record.reasons[0] == "residual degrees of freedom 9 < 10"
    ok = check_model(smf.ols("y ~ x + x2", df).fit(), policy=DisclosurePolicy(min_dof=9))
    assert ok.passed


def test_logit_with_few_events_fails_on_the_outcome() -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": rng.normal(size=80), "died": [1] * 6 + [0] * 74})
    res = smf.logit("died ~ x", df).fit(disp=0)
    checked = check_model(res)
    assert "binary outcome class 1 has 6 observations (threshold 10)" in checked.record.reasons


def test_glm_with_array_design_is_checked() -> None:
    rng = np.random.default_rng(2)
    x = np.column_stack([np.ones(100), rng.integers(0, 2, 100), rng.normal(size=100)])
    y = rng.poisson(2.0, 100)
    checked = check_model(sm.GLM(y, x, family=sm.families.Poisson()).fit())
    assert checked.passed
    assert (checked.summary()["check"] == "level_count").sum() == 2  # x1 = 1 and x1 = 0


def test_phreg_counts_events() -> None:
    from statsmodels.duration.hazard_regression import PHReg

    rng = np.random.default_rng(3)
    df = pd.DataFrame(
        {"t": rng.exponential(5, 60), "e": [1] * 8 + [0] * 52, "x": rng.normal(size=60)}
    )
    checked = check_model(PHReg.from_formula("t ~ x", df, status="e").fit())
    assert "8 events (survival threshold 10)" in checked.record.reasons


def test_linearmodels_results_are_checked() -> None:
    from linearmodels.iv import IV2SLS

    df = _data({"a": 30, "b": 5}).assign(const=1.0, is_b=lambda d: (d["g"] == "b").astype(float))
    res = IV2SLS(df["y"], df[["const", "is_b"]], None, None).fit()
    checked = check_model(res, name="iv")
    assert checked.record.status == "fail"
    assert any("'is_b'" in r and "5 observations" in r for r in checked.record.reasons)


def test_figure_released_only_with_a_passing_table() -> None:
    ok_data = pd.DataFrame({"band": ["<65"] * 30 + ["65+"] * 14})
    fig, ax = plt.subplots()
    good = check_figure(ax, crosstab(ok_data, "band", margins=False), name="bars")
    assert good.passed and good.record.notes == ("released together with table 'table'",)
    bad = check_figure(
        fig, crosstab(pd.DataFrame({"band": ["<65"] * 30 + ["65+"] * 4}), "band", margins=False)
    )
    assert bad.record.status == "fail"
    with pytest.raises(DisclosureError, match="'table' parameter of check_figure"):
        check_figure(fig, ok_data)
    plt.close(fig)


def test_figure_save_writes_image_and_sidecar(tmp_path) -> None:
    fig, ax = plt.subplots()
    ax.bar(["a", "b"], [30, 14])
    checked = check_figure(
        fig, crosstab(pd.DataFrame({"band": ["a"] * 30 + ["b"] * 14}), "band", margins=False)
    )
    sidecar = checked.save(tmp_path / "bars.png")
    assert (tmp_path / "bars.png").exists()
    assert json.loads(sidecar.read_text())["record"]["status"] == "pass"
    plt.close(fig)
