"""Safe tables: primary rules on hand-computed cells, rounding, hierarchies, bad input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from kidresearch.errors import DisclosureError
from kidresearch.sdc import (
    DisclosurePolicy,
    check_survival,
    check_table,
    crosstab,
    pivot_table,
)


def _records(counts: dict[tuple[str, str], int]) -> pd.DataFrame:
    rows = [(r, c) for (r, c), n in counts.items() for _ in range(n)]
    return pd.DataFrame(rows, columns=["sex", "band"])


def test_counts_below_threshold_and_zeros_are_suppressed() -> None:
    data = _records({("F", "young"): 25, ("F", "old"): 9, ("M", "young"): 30, ("M", "old"): 12})
    data = pd.concat([data, pd.DataFrame({"sex": ["X"] * 14, "band": ["young"] * 14})])
    t = crosstab(data, "sex", "band", margins=False)
    status = t.status
    assert status.loc["F", "old"] == "primary:threshold"  # 9 < 10
    assert status.loc["X", "old"] == "primary:zero"  # empty cell, zeros disclosive
    assert status.loc["M", "old"] == "ok"  # 12 >= 10
    assert status.loc["F", "young"] == "ok"
    assert t.released.loc["M", "young"] == 30
    assert np.isnan(t.released.loc["F", "old"])
    assert t.reasons.loc[("F", "old")] == "count 9 is below the threshold of 10"


def test_exactly_threshold_passes_and_zero_can_be_allowed() -> None:
    data = _records({("F", "young"): 10, ("F", "old"): 0, ("M", "young"): 11, ("M", "old"): 10})
    t = crosstab(data.astype("category"), "sex", "band", margins=False)
    assert t.status.loc["F", "young"] == "ok"
    lenient = crosstab(
        data, "sex", "band", margins=False, policy=DisclosurePolicy(zeros_are_disclosive=False)
    )
    assert lenient.released.loc["F", "old"] == 0


def _magnitude_data() -> pd.DataFrame:
    # Cell A: one dominant contributor 9000, 500, then ten of 20: total 9700.
    #   top-2 share (9000 + 500) / 9700 = 97.9% >= 90%  -> dominance
    #   p-ratio (9700 - 9000 - 500) / 9000 = 0.022 < 0.1 -> p% too
    # Cell B: 1000, 50, then twelve of 50: total 1650.
    #   top-2 share 1050 / 1650 = 63.6%; p-ratio (1650 - 1050) / 1000 = 0.6 -> ok
    # Cell C: twelve contributors of 0 -> all-zero cell: p% fails (ACRO semantics)
    a = [9000.0, 500.0] + [20.0] * 10
    b = [1000.0, 50.0] + [50.0] * 12
    c = [0.0] * 12
    return pd.DataFrame(
        {
            "district": ["A"] * len(a) + ["B"] * len(b) + ["C"] * len(c),
            "cost_gbp": a + b + c,
        }
    )


def test_dominance_and_p_percent_rules_on_hand_computed_cells() -> None:
    t = pivot_table(
        _magnitude_data(), values="cost_gbp", index="district", aggfunc="sum", margins=False
    )
    cells = t.to_frame().set_index("district")
    assert cells.loc["A", "status"] == "primary:dominance"
    assert cells.loc["A", "rules"] == "dominance;p_ratio"
    assert "98% of the total" in cells.loc["A", "reason"]
    assert cells.loc["B", "status"] == "ok"
    assert cells.loc["B", "released"] == pytest.approx(1650.0)
    assert cells.loc["C", "rules"] == "p_ratio"
    assert "all contributions are zero" in cells.loc["C", "reason"]


def test_mean_tables_use_the_same_magnitude_rules() -> None:
    t = pivot_table(
        _magnitude_data(), values="cost_gbp", index="district", aggfunc="mean", margins=False
    )
    cells = t.to_frame().set_index("district")
    assert cells.loc["B", "released"] == pytest.approx(1650.0 / 14)
    assert cells.loc["A", "status"] == "primary:dominance"


def test_negative_contributions_send_the_table_to_review() -> None:
    data = pd.DataFrame({"g": ["a"] * 12, "v": [100.0] * 11 + [-5.0]})
    t = pivot_table(data, values="v", index="g", aggfunc="sum", margins=False)
    assert t.to_frame()["status"].tolist() == ["primary:negative"]
    assert not t.passed
    assert t.record.status == "review"


def test_percentiles_need_records_on_both_sides() -> None:
    # 25 records: floor(0.5 * 25) = 12 below and 12 above the median -> ok with 10 required.
    # 15 records: 7 on each side -> suppressed. p90 of 25: floor(0.1 * 25) = 2 above -> suppressed.
    data = pd.DataFrame({"g": ["big"] * 25 + ["small"] * 15, "los_days": np.arange(40.0)})
    med = pivot_table(data, values="los_days", index="g", aggfunc="median", margins=False)
    cells = med.to_frame().set_index("g")
    assert cells.loc["big", "status"] == "ok"
    assert cells.loc["big", "released"] == pytest.approx(np.median(np.arange(25.0)))
    assert cells.loc["small", "status"] == "primary:percentile"
    p90 = pivot_table(data, values="los_days", index="g", aggfunc="p90", margins=False)
    assert p90.to_frame().set_index("g").loc["big", "status"] == "primary:percentile"


def test_min_and_max_are_never_released_by_default() -> None:
    data = pd.DataFrame({"g": ["a"] * 50, "age": np.arange(50.0)})
    for agg in ("min", "max"):
        t = pivot_table(data, values="age", index="g", aggfunc=agg, margins=False)
        assert t.to_frame()["status"].tolist() == ["primary:min_max"]
    allowed = pivot_table(
        data,
        values="age",
        index="g",
        aggfunc="max",
        margins=False,
        policy=DisclosurePolicy(allow_min_max=True),
    )
    assert allowed.released.tolist() == [49.0]


def test_rounding_recomputes_totals_from_released_rounded_cells() -> None:
    # OpenSAFELY preset: 3 <= 7 redacted; 12 -> 10, 26 -> 25, 40 -> 40, 8 -> 10, 17 -> 15.
    wide = pd.DataFrame(
        {"yes": [3, 26, 8], "no": [12, 40, 17]}, index=pd.Index(["a", "b", "c"], name="grp")
    )
    t = check_table(wide, policy=DisclosurePolicy.opensafely())
    r = t.released
    assert np.isnan(r.loc["a", "yes"])
    assert r.loc["a", "no"] == 10 and r.loc["b", "yes"] == 25 and r.loc["b", "no"] == 40
    # Totals: sums of the released interior cells (suppressed cells count as 0).
    assert r.loc["a", "Total"] == 10  # 0 + 10
    assert r.loc["b", "Total"] == 65  # 25 + 40
    assert r.loc["c", "Total"] == 25  # 10 + 15
    assert r.loc["Total", "yes"] == 35  # 0 + 25 + 10
    assert r.loc["Total", "Total"] == 100
    assert (t.cells["status"] == "secondary").sum() == 0
    assert any("recomputed" in n or "sums of the released" in n for n in t.notes)


def test_hierarchy_adds_subtotals_that_add_up() -> None:
    rng = np.random.default_rng(3)
    data = pd.DataFrame(
        {
            "practice": rng.choice(["P1", "P2", "P3", "P4"], 2000),
            "efi_category": rng.choice(["fit", "frail"], 2000),
        }
    )
    data["district"] = data["practice"].map(
        {"P1": "Dover", "P2": "Dover", "P3": "Thanet", "P4": "Thanet"}
    )
    t = crosstab(data, "practice", "efi_category", hierarchy={"practice": "district"})
    r = t.released
    assert list(r.index.names) == ["district", "practice"]
    assert (
        r.loc[("Dover", "Total"), "fit"]
        == r.loc[("Dover", "P1"), "fit"] + r.loc[("Dover", "P2"), "fit"]
    )
    assert r.loc[("Total", "Total"), "Total"] == 2000
    assert r.loc[("Thanet", "Total"), "Total"] == (data["district"] == "Thanet").sum()


def test_hierarchy_with_a_leaf_under_two_groups_is_refused() -> None:
    data = pd.DataFrame(
        {"practice": ["P1", "P1"], "district": ["Dover", "Thanet"], "x": ["a", "b"]}
    )
    with pytest.raises(DisclosureError, match="practice 'P1' appears under 2 district"):
        crosstab(data, "practice", "x", hierarchy={"practice": "district"})


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (pd.DataFrame({"g": ["a", "b"], "n": [12, -3]}), r"'n' must be non-negative; row 1 has -3"),
        (
            pd.DataFrame({"g": ["a", "b"], "n": [12, 2.5]}),
            r"'n' must hold whole numbers; row 1 has 2.5",
        ),
        (pd.DataFrame({"g": ["a", "b"], "n": [12, None]}), r"'n' has a missing value at row 1"),
        (pd.DataFrame({"g": ["a", None], "n": [12, 14]}), r"column 'g' has 1 missing value"),
        (pd.DataFrame({"g": ["a", "a"], "n": [12, 14]}), r"row 1 repeats"),
    ],
)
def test_bad_counts_are_refused_naming_the_field_and_row(frame: pd.DataFrame, match: str) -> None:
    with pytest.raises(DisclosureError, match=match):
        check_table(frame, counts="n", keys=["g"])


def test_bad_microdata_is_refused_naming_the_field() -> None:
    data = pd.DataFrame({"g": ["a", "b", None], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(DisclosureError, match="column 'g' has 1 missing"):
        crosstab(data, "g")
    data = pd.DataFrame({"g": ["a", "b", "c"], "v": [1.0, np.nan, 3.0]})
    with pytest.raises(DisclosureError, match="values column 'v' has 1 missing"):
        crosstab(data, "g", values="v", aggfunc="sum")
    with pytest.raises(DisclosureError, match=r"column\(s\) \['nope'\] not found"):
        crosstab(data, "nope")
    with pytest.raises(DisclosureError, match="'aggfunc'"):
        crosstab(data, "g", values="v", aggfunc="mode")
    with pytest.raises(DisclosureError, match="'v' must be numeric"):
        crosstab(pd.DataFrame({"g": ["a"], "v": ["x"]}), "g", values="v", aggfunc="sum")


def test_check_table_with_top_contributions_matches_the_microdata() -> None:
    micro = _magnitude_data()
    # Per-cell n, sum and the two largest contributions, computed with pandas.
    grouped = micro.groupby("district")["cost_gbp"]
    table = pd.DataFrame(
        {
            "n": grouped.size(),
            "cost_gbp": grouped.sum(),
            "top1": grouped.apply(lambda s: s.nlargest(1).iloc[0]),
            "top2": grouped.apply(lambda s: s.nlargest(2).iloc[-1]),
        }
    ).reset_index()
    from_tops = check_table(
        table,
        counts="n",
        values="cost_gbp",
        contributions=["top1", "top2"],
        keys=["district"],
        margins=False,
    )
    from_micro = check_table(
        table[["district", "n", "cost_gbp"]],
        counts="n",
        values="cost_gbp",
        contributions=micro,
        keys=["district"],
        margins=False,
    )
    assert from_tops.to_frame()["rules"].tolist() == ["dominance;p_ratio", "", "p_ratio"]
    assert from_micro.to_frame()["rules"].tolist() == from_tops.to_frame()["rules"].tolist()
    without = check_table(
        table[["district", "n", "cost_gbp"]],
        counts="n",
        values="cost_gbp",
        keys=["district"],
        margins=False,
    )
    assert without.record.status == "review"
    assert "dominance could not be checked" in without.record.reasons[0]


def test_check_table_accepts_an_ibis_result() -> None:
    ibis = pytest.importorskip("ibis")
    frame = pd.DataFrame({"district": ["Dover", "Thanet", "Swale"], "n": [40, 4, 22]})
    t = check_table(ibis.memtable(frame), counts="n", keys=["district"], margins=False)
    assert t.to_frame()["status"].tolist() == ["ok", "ok", "primary:threshold"]  # sorted labels


def test_survival_rows_below_threshold_and_after_are_suppressed() -> None:
    km = pd.DataFrame(
        {"day": [0, 30, 60, 90, 120], "n_at_risk": [50, 31, 9, 12, 4], "n_events": [3, 4, 2, 1, 1]}
    )
    t = check_survival(km)
    assert t.to_frame()["status"].tolist() == [
        "ok",
        "ok",
        "primary:survival",
        "primary:survival",
        "primary:survival",
    ]
    assert t.record.status == "pass"


def test_result_object_views() -> None:
    data = _records({("F", "young"): 25, ("F", "old"): 3, ("M", "young"): 30, ("M", "old"): 22})
    t = crosstab(data, "sex", "band", name="sex_by_band")
    tidy = t.to_frame()
    assert {"sex", "band", "n", "value", "released", "status", "rule", "rules", "reason"} <= set(
        tidy.columns
    )
    assert len(tidy) == 9
    assert t.summary()["cells"].sum() == 9
    rec = t.record.to_dict()
    assert rec["name"] == "sex_by_band" and rec["status"] == "pass"
    assert any(r["rule"] == "threshold" and r["result"] == "fail" for r in rec["rules"])
    assert "sex_by_band" in t._repr_html_()
    ax = t.plot()
    assert ax.get_title().startswith("sex_by_band")
    assert (
        t.request_exception("needed for the funnel plot").exception["justification"]
        == "needed for the funnel plot"
    )
    # Every suppressed cell has a reason.
    hidden = tidy[tidy["status"] != "ok"]
    assert (hidden["reason"] != "").all()


def test_tables_that_already_have_margins_are_refused() -> None:
    wide = pd.crosstab(
        pd.Series(["a", "b"] * 10, name="g"), pd.Series(["x"] * 20, name="h"), margins=True
    )
    with pytest.raises(DisclosureError, match="already has pandas margins"):
        check_table(wide)
    long = pd.DataFrame({"g": ["a", "Total"], "n": [12, 12]})
    with pytest.raises(DisclosureError, match="column 'g' already holds the margins label 'Total'"):
        check_table(long, counts="n", keys=["g"])
