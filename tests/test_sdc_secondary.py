"""Secondary suppression: property tests against an independent LP written here.

The audit LP in this file is built from the released table's labels alone (totals equal the sum
of their cells; cells are non-negative), not from kidresearch's equation builder, and solved
with scipy's HiGHS one cell at a time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from kidresearch.sdc import DisclosurePolicy, check_table
from kidresearch.sdc.secondary import TableStructure, feasible_ranges, protect

TOTAL = "Total"


def independent_ranges(released: pd.DataFrame) -> dict[tuple, tuple[float, float]]:
    """Feasible range of every NaN cell of a 2-D released table with a Total row and column.

    Rows may carry a two-level index (group, leaf) with (group, Total) subtotals and
    (Total, Total) grand total.
    """
    cells = [(r, c) for r in released.index for c in released.columns]
    pos = {cell: i for i, cell in enumerate(cells)}
    eqs: list[dict[int, float]] = []

    def add(total: tuple, parts: list[tuple]) -> None:
        eq = {pos[total]: 1.0}
        for p in parts:
            eq[pos[p]] = eq.get(pos[p], 0.0) - 1.0
        eqs.append(eq)

    rows = list(released.index)
    cols = [c for c in released.columns if c != TOTAL]
    hierarchical = isinstance(rows[0], tuple)
    if hierarchical:
        leaves = [r for r in rows if r[1] != TOTAL]
        groups = sorted({r[0] for r in leaves})
        row_totals = {(g, TOTAL): [r for r in leaves if r[0] == g] for g in groups}
        row_totals[(TOTAL, TOTAL)] = [(g, TOTAL) for g in groups]
    else:
        leaves = [r for r in rows if r != TOTAL]
        row_totals = {TOTAL: leaves}
    for r in rows:  # every row (leaf or total) adds up across columns
        add((r, TOTAL), [(r, c) for c in cols])
    for total_row, parts in row_totals.items():  # every column adds up down the rows
        for c in [*cols, TOTAL]:
            add((total_row, c), [(p, c) for p in parts])
    a_eq = np.zeros((len(eqs), len(cells)))
    for i, eq in enumerate(eqs):
        for j, v in eq.items():
            a_eq[i, j] = v
    values = np.array([released.loc[r, c] for r, c in cells], dtype=float)
    bounds = [(0, None) if np.isnan(v) else (v, v) for v in values]
    out = {}
    for j, cell in enumerate(cells):
        if not np.isnan(values[j]):
            continue
        objective = np.zeros(len(cells))
        objective[j] = 1.0
        lo = linprog(objective, A_eq=a_eq, b_eq=np.zeros(len(eqs)), bounds=bounds, method="highs")
        hi = linprog(-objective, A_eq=a_eq, b_eq=np.zeros(len(eqs)), bounds=bounds, method="highs")
        assert lo.status == 0, lo.message
        out[cell] = (lo.fun, np.inf if hi.status == 3 else -hi.fun)
    return out


def _wide(counts: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        counts,
        index=pd.Index([f"r{i}" for i in range(counts.shape[0])], name="row"),
        columns=pd.Index([f"c{j}" for j in range(counts.shape[1])], name="column"),
    )


small_or_large = st.one_of(st.integers(0, 12), st.integers(10, 60))
tables = st.integers(2, 5).flatmap(
    lambda r: st.integers(2, 5).flatmap(
        lambda c: st.lists(small_or_large, min_size=r * c, max_size=r * c).map(
            lambda xs: np.array(xs).reshape(r, c)
        )
    )
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=tables)
def test_released_counts_respect_the_threshold(counts: np.ndarray) -> None:
    t = check_table(_wide(counts))
    shown = t.released.to_numpy(dtype=float)
    shown = shown[~np.isnan(shown)]
    assert not ((shown > 0) & (shown < 10)).any()
    assert not (shown == 0).any()  # zeros are disclosive by default


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=tables)
def test_no_suppressed_cell_can_be_recovered(counts: np.ndarray) -> None:
    t = check_table(_wide(counts))
    ranges = independent_ranges(t.released)
    assert len(ranges) == t.n_suppressed
    for cell, (lo, hi) in ranges.items():
        assert hi - lo >= 10 - 1e-6, (cell, lo, hi, t.released)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=tables)
def test_suppression_is_deterministic(counts: np.ndarray) -> None:
    first = check_table(_wide(counts)).to_frame()
    second = check_table(_wide(counts.copy())).to_frame()
    pd.testing.assert_frame_equal(first, second)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=tables)
def test_rounded_totals_are_sums_of_released_rounded_cells(counts: np.ndarray) -> None:
    t = check_table(_wide(counts), policy=DisclosurePolicy.opensafely())
    r = t.released
    inner = r.drop(index=TOTAL, columns=TOTAL)
    shown = r.to_numpy(dtype=float)
    assert np.all(np.isnan(shown) | (shown % 5 == 0))
    assert not ((shown > 0) & (shown <= 7)).any()
    for row in inner.index:
        if not np.isnan(r.loc[row, TOTAL]):
            assert r.loc[row, TOTAL] == inner.loc[row].fillna(0).sum()
    for col in inner.columns:
        if not np.isnan(r.loc[TOTAL, col]):
            assert r.loc[TOTAL, col] == inner[col].fillna(0).sum()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.lists(small_or_large, min_size=5 * 3, max_size=5 * 3).map(
        lambda xs: np.array(xs).reshape(5, 3)
    )
)
def test_hierarchical_table_is_protected(counts: np.ndarray) -> None:
    frame = pd.DataFrame(
        {
            "district": np.repeat(["Dover", "Dover", "Dover", "Thanet", "Thanet"], 3),
            "practice": np.repeat(["P1", "P2", "P3", "P4", "P5"], 3),
            "efi_category": np.tile(["fit", "mild", "severe"], 5),
            "n": counts.ravel(),
        }
    )
    t = check_table(
        frame,
        counts="n",
        keys=["practice", "efi_category"],
        hierarchy={"practice": "district"},
        index=["practice"],
    )
    ranges = independent_ranges(t.released)
    assert len(ranges) == t.n_suppressed
    for cell, (lo, hi) in ranges.items():
        assert hi - lo >= 10 - 1e-6, (cell, lo, hi)


def test_certified_widths_never_exceed_the_exact_ranges() -> None:
    """The hypercube certificate is a lower bound on the exact LP range (3-D table)."""
    rng = np.random.default_rng(11)
    shape = (4, 5, 3)
    inner = rng.poisson(rng.choice([3.0, 25.0], size=shape))
    full = np.zeros((5, 6, 4))
    full[:4, :5, :3] = inner
    full[4, :, :] = full[:4, :, :].sum(axis=0)
    full[:, 5, :] = full[:, :5, :].sum(axis=1)
    full[:, :, 3] = full[:, :, :3].sum(axis=2)
    structure = TableStructure(
        (np.array([4, 4, 4, 4, -1]), np.array([5, 5, 5, 5, 5, -1]), np.array([3, 3, 3, -1]))
    )
    values = full.ravel()
    primary = (values > 0) & (values < 10)
    result = protect(values, primary, structure, np.full(values.size, 10.0))
    lo, hi = feasible_ranges(values, result.suppressed, structure.equations())
    exact = hi - lo
    proven = result.width[result.suppressed]
    assert (proven <= exact + 1e-6).all()
    assert (exact >= 10 - 1e-6).all()
    assert primary.sum() > 5


def test_one_small_cell_costs_three_partners() -> None:
    # 2 x 2 with totals: hiding 3 needs its row, column and diagonal partners; totals stay.
    wide = _wide(np.array([[3, 12], [20, 30]]))
    t = check_table(wide)
    assert t.released.loc[TOTAL].tolist() == [23, 42, 65]
    assert t.released[TOTAL].tolist() == [15, 50, 65]
    assert t.n_suppressed == 4
    (lo, hi) = independent_ranges(t.released)[("r0", "c0")]
    # hand: the 3 can rise by min(12, 20) = 12 and fall by min(3, 30) = 3 -> [0, 15]
    assert (lo, hi) == (0.0, 15.0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=tables)
def test_lp_repair_path_alone_also_protects(counts: np.ndarray) -> None:
    """The LP audit-and-repair safety net, run without hypercubes, protects on its own."""
    full = np.zeros((counts.shape[0] + 1, counts.shape[1] + 1))
    full[:-1, :-1] = counts
    full[-1, :-1] = counts.sum(axis=0)
    full[:, -1] = full[:, :-1].sum(axis=1)
    r, c = counts.shape
    structure = TableStructure((np.array([r] * r + [-1]), np.array([c] * c + [-1])))
    values = full.ravel()
    primary = values < 10
    result = protect(values, primary, structure, np.full(values.size, 10.0), method="lp")
    released = np.where(result.suppressed, np.nan, values).reshape(full.shape)
    frame = pd.DataFrame(
        released,
        index=[f"r{i}" for i in range(r)] + [TOTAL],
        columns=[f"c{j}" for j in range(c)] + [TOTAL],
    )
    for cell, (lo, hi) in independent_ranges(frame).items():
        assert hi - lo >= 10 - 1e-6, (cell, lo, hi)


def test_magnitude_table_with_margins_is_protected() -> None:
    """Cost sums: dominated cells are hidden and cannot be recovered to within 10% of their value."""
    rng = np.random.default_rng(8)
    rows = []
    for district in ["Ashford", "Dover", "Swale", "Thanet"]:
        for setting in ["acute", "community", "social_care"]:
            n = int(rng.integers(12, 30))
            cost = rng.exponential(400.0, n)
            if rng.random() < 0.4:
                cost[0] = 50_000.0  # one dominant person
            rows += [(district, setting, c) for c in cost]
    micro = pd.DataFrame(rows, columns=["district", "setting", "cost_gbp"])
    from kidresearch.sdc import pivot_table

    t = pivot_table(micro, values="cost_gbp", index="district", columns="setting", aggfunc="sum")
    cells = t.to_frame().set_index(["district", "setting"])
    assert (cells["rule"] == "dominance").sum() >= 2
    ranges = independent_ranges(t.released)
    assert len(ranges) == t.n_suppressed
    for cell, (lo, hi) in ranges.items():
        assert hi - lo >= 0.1 * cells.loc[cell, "value"] - 1e-6, (cell, lo, hi)
