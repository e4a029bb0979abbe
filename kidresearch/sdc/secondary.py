"""Secondary suppression for additive tables with margins and hierarchies.

A table with margins is a set of cells tied by linear equations: every total (or subtotal) equals
the sum of its children, along every dimension. Once the primary cells are suppressed, an attacker
who knows the released cells can solve those equations for a suppressed cell, or at least bound it.
For each suppressed cell the *feasible range* is ``[min x, max x]`` over all non-negative
solutions of the equations with the released cells fixed (a linear program). A suppression
pattern protects the table when every suppressed cell's feasible range is at least as wide as its
required protection (the policy's ``protection_level``, by default the threshold, for counts;
``protection_ratio`` times the value for magnitudes).

Algorithm (deterministic; documented in ``docs/disclosure_control.md``):

1. **Singletons.** Any equation with exactly one suppressed member lets that member be solved
   exactly, so one more member is suppressed: the released member with the smallest value
   (ties by position), which loses least information. Repeat until no equation has exactly one
   suppressed member (vectorised over all equations at once).
2. **LP audit.** The released cells are constants, so the audit LP has one variable per
   suppressed cell and one row per equation that touches one. A few LPs with objectives of
   random (seeded) signs over the still-uncertified cells give feasible points; a cell is
   certified as soon as two known feasible points (the true table is one) differ in it by at
   least its protection. This proves protection for most cells with a handful of LPs. Each
   remaining cell gets the exact answer: two LPs (min and max) on its connected component.
3. **Repair.** A cell whose exact range is too narrow gets one more released cell from its own
   equations suppressed (smallest positive value first), and steps 1-3 repeat. Adding
   suppressions only widens feasible ranges, so certified cells stay certified.

The LPs are solved with HiGHS through :func:`scipy.optimize.linprog`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog
from scipy.sparse.csgraph import connected_components

from kidresearch.errors import DisclosureError

logger = logging.getLogger(__name__)

_TOL = 1e-6


@dataclass(frozen=True)
class TableStructure:
    """The shape of a table with margins: per dimension, each node's parent (``-1``: none).

    Parameters
    ----------
    parents : tuple of numpy arrays
        ``parents[d][i]`` is the index of node ``i``'s parent along dimension ``d`` (a total or
        subtotal), or ``-1`` for the top node (or for every node of a dimension without margins).

    Examples
    --------
    A 2 x 2 table with row and column totals (node 2 is the total on both axes):

    >>> import numpy as np
    >>> s = TableStructure((np.array([2, 2, -1]), np.array([2, 2, -1])))
    >>> s.shape, s.equations().shape
    ((3, 3), (6, 9))
    """

    parents: tuple[np.ndarray, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(p) for p in self.parents)

    @property
    def n_cells(self) -> int:
        return int(np.prod(self.shape))

    def equations(self) -> sp.csr_matrix:
        """Sparse matrix ``A`` (equations x cells) with ``A @ x == 0`` for a consistent table.

        Each row reads ``parent - sum(children) = 0`` for one parent cell along one dimension.
        """
        shape = self.shape
        n = self.n_cells
        coords = np.indices(shape).reshape(len(shape), -1)
        flat = np.arange(n)
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        for d, par in enumerate(self.parents):
            par = np.asarray(par)
            node_par = par[coords[d]]
            is_child = node_par >= 0
            parent_coords = coords[:, is_child].copy()
            parent_coords[d] = node_par[is_child]
            parent_flat = np.ravel_multi_index(tuple(parent_coords), shape)
            is_parent_node = np.zeros(len(par), dtype=bool)
            is_parent_node[par[par >= 0]] = True
            is_parent = is_parent_node[coords[d]]
            rows += [d * n + parent_flat, d * n + flat[is_parent]]
            cols += [flat[is_child], flat[is_parent]]
            vals += [-np.ones(is_child.sum()), np.ones(is_parent.sum())]
        if not rows:
            return sp.csr_matrix((0, n))
        row_keys = np.concatenate(rows)
        uniq, row_ids = np.unique(row_keys, return_inverse=True)
        return sp.csr_matrix(
            (np.concatenate(vals), (row_ids, np.concatenate(cols))), shape=(len(uniq), n)
        )


@dataclass(frozen=True)
class SecondaryResult:
    """Outcome of :func:`protect`: which cells are suppressed and how the audit went."""

    suppressed: np.ndarray
    secondary: np.ndarray
    width: np.ndarray
    n_lp: int
    rounds: int


def _lp_ranges(
    a_eq: sp.csr_matrix, b_eq: np.ndarray, lower: float, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact min and max of each target variable subject to ``a_eq y = b_eq, y >= lower``."""
    n = a_eq.shape[1]
    lo = np.empty(len(targets))
    hi = np.empty(len(targets))
    n_lp = 0
    bounds = (None if not np.isfinite(lower) else lower, None)
    for k, t in enumerate(targets):
        c = np.zeros(n)
        c[t] = 1.0
        res_min = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
        res_max = linprog(-c, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
        n_lp += 2
        if res_min.status not in (0, 3) or res_max.status not in (0, 3):
            raise DisclosureError(
                "secondary suppression audit: the table's margins are inconsistent with its "
                f"cells (LP status {res_min.status}/{res_max.status}); check that totals equal "
                "the sum of their cells"
            )
        lo[k] = -np.inf if res_min.status == 3 else res_min.x[t]
        hi[k] = np.inf if res_max.status == 3 else res_max.x[t]
    return lo, hi, n_lp


def feasible_ranges(
    values: np.ndarray,
    suppressed: np.ndarray,
    equations: sp.csr_matrix,
    *,
    lower: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact feasible range of every suppressed cell given the released cells (two LPs each).

    Parameters
    ----------
    values : numpy array
        True cell values (flat, same order as the columns of ``equations``).
    suppressed : numpy array of bool
        Which cells are withheld.
    equations : sparse matrix
        ``A`` with ``A @ values == 0`` (see :meth:`TableStructure.equations`).
    lower : float
        Lower bound on every cell (0 for counts and non-negative magnitudes).

    Returns
    -------
    (lo, hi) : numpy arrays
        Bounds for the suppressed cells, in the order of ``np.flatnonzero(suppressed)``.

    Examples
    --------
    A 2 x 2 table with totals where only one interior cell is hidden: it is recovered exactly.

    >>> import numpy as np
    >>> s = TableStructure((np.array([2, 2, -1]), np.array([2, 2, -1])))
    >>> x = np.array([3, 12, 15, 20, 30, 50, 23, 42, 65], dtype=float)
    >>> hidden = np.zeros(9, dtype=bool); hidden[0] = True
    >>> feasible_ranges(x, hidden, s.equations())
    (array([3.]), array([3.]))
    """
    values = np.asarray(values, dtype=float)
    suppressed = np.asarray(suppressed, dtype=bool)
    cells = np.flatnonzero(suppressed)
    if len(cells) == 0:
        return np.empty(0), np.empty(0)
    a = equations.tocsc()
    a_s = a[:, cells].tocsr()
    touched = np.flatnonzero(np.diff(a_s.indptr) > 0)
    a_s = a_s[touched]
    rhs = -(a[:, ~suppressed] @ values[~suppressed])[touched]
    lo, hi, _ = _lp_ranges(a_s, rhs, lower, np.arange(len(cells)))
    return lo, hi


def _choose_per_row(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """For each distinct row, the column with the smallest cost (ties: smallest column)."""
    if len(rows) == 0:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((cols, cost, rows))
    rows_o = rows[order]
    first = np.ones(len(rows_o), dtype=bool)
    first[1:] = rows_o[1:] != rows_o[:-1]
    return np.unique(cols[order][first])


def _close_singletons(a_abs: sp.csr_matrix, suppressed: np.ndarray, cost: np.ndarray) -> None:
    """Suppress one more member of every equation that has exactly one suppressed member."""
    while True:
        count = a_abs @ suppressed.astype(np.int64)
        single = np.flatnonzero(count == 1)
        if len(single) == 0:
            return
        sub = a_abs[single].tocoo()
        keep = ~suppressed[sub.col]
        pick = _choose_per_row(sub.row[keep], sub.col[keep], cost[sub.col[keep]])
        suppressed[pick] = True


class _Hypercubes:
    """Generalised hypercube search, batched: one certified perturbation per primary cell.

    Along each dimension a 1-D vector ``u_d`` satisfies that dimension's hierarchy equations: a
    node (with a chain down to a leaf if it is a total) against a sibling (and its chain) with
    the opposite sign, or the node moving together with all its ancestors (the "up" vector,
    costly but always wide). The tensor product ``v = u_1 x ... x u_k`` satisfies every
    equation of the table, so moving the cells of its support by ``t * v`` leaves the released
    cells and totals unchanged. With cells bounded below by ``lower``, ``t`` ranges over
    ``[-min(x[v > 0] - lower), min(x[v < 0] - lower)]``; the length of that interval is a
    proven lower bound on the feasible-range width of every cell in the support. Partners are
    chosen along the primary cell's own lines: already hidden cells first, then the smallest
    values wide enough to protect it; the cheapest certified combination (sum of newly hidden
    values) wins.
    """

    def __init__(
        self,
        structure: TableStructure,
        values: np.ndarray,
        suppressed: np.ndarray,
        required: np.ndarray,
        lower: float,
        n_siblings: int = 4,
    ) -> None:
        self.shape = structure.shape
        self.k = len(self.shape)
        self.parents = [np.asarray(p, dtype=np.int64) for p in structure.parents]
        self.kids: list[np.ndarray] = []
        self.sibs: list[np.ndarray] = []
        self.depth: list[int] = []
        for par in self.parents:
            n_nodes = len(par)
            kids: list[list[int]] = [[] for _ in range(n_nodes)]
            for node, pa in enumerate(par):
                if pa >= 0:
                    kids[pa].append(node)
            width = max([len(x) for x in kids] + [0])
            kid_arr = np.full((n_nodes, width), -1, dtype=np.int64)
            for node, x in enumerate(kids):
                kid_arr[node, : len(x)] = x
            self.kids.append(kid_arr)
            sib_arr = np.full((n_nodes, max(width - 1, 0)), -1, dtype=np.int64)
            for node, pa in enumerate(par):
                if pa >= 0:
                    others = [x for x in kids[pa] if x != node]
                    sib_arr[node, : len(others)] = others
            self.sibs.append(sib_arr)
            depth = np.zeros(n_nodes, dtype=np.int64)
            for _ in range(n_nodes):
                nxt = np.where(par >= 0, depth[np.maximum(par, 0)] + 1, 0)
                if np.array_equal(nxt, depth):
                    break
                depth = nxt
            self.depth.append(int(depth.max(initial=0)))
        self.strides = np.array(
            [int(np.prod(self.shape[d + 1 :])) for d in range(self.k)], dtype=np.int64
        )
        self.values = values
        self.suppressed = suppressed
        self.required = required
        self.lower = lower if np.isfinite(lower) else 0.0
        self.bounded = bool(np.isfinite(lower))
        self.big = float(np.abs(values).max(initial=0.0)) * 4.0 + 1.0
        self.n_siblings = n_siblings

    def _score(self, flat: np.ndarray, req: np.ndarray, absent: np.ndarray) -> np.ndarray:
        x = self.values[flat]
        score = np.where(
            self.suppressed[flat], 0.0, np.where(x - self.lower >= req, x, x + self.big)
        )
        return np.where(absent, np.inf, score)

    def _down(self, base: np.ndarray, d: int, start: np.ndarray, req: np.ndarray) -> np.ndarray:
        """Chain from each start node down to a leaf along the primary's line (-1 padded)."""
        m = len(start)
        out = np.full((m, self.depth[d]), -1, dtype=np.int64)
        cur = start.copy()
        if self.kids[d].shape[1] == 0:
            return out
        for h in range(self.depth[d]):
            kids = np.where((cur >= 0)[:, None], self.kids[d][np.maximum(cur, 0)], -1)
            flat = base[:, None] + np.maximum(kids, 0) * self.strides[d]
            score = self._score(flat, req[:, None], kids < 0)
            j = np.argmin(score, axis=1)
            child = kids[np.arange(m), j]
            child = np.where(np.isfinite(score[np.arange(m), j]), child, -1)
            out[:, h] = child
            cur = child
        return out

    def _vectors(
        self, base: np.ndarray, d: int, c: np.ndarray, req: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = len(c)
        h = self.depth[d]
        dn_c = self._down(base, d, c, req)
        up = np.full((m, h), -1, dtype=np.int64)
        a = self.parents[d][c]
        for i in range(h):
            up[:, i] = a
            a = np.where(a >= 0, self.parents[d][np.maximum(a, 0)], -1)
        sib_all = self.sibs[d][c]
        n_s = min(self.n_siblings, sib_all.shape[1])
        if n_s:
            flat = base[:, None] + np.maximum(sib_all, 0) * self.strides[d]
            score = self._score(flat, req[:, None], sib_all < 0)
            order = np.argsort(score, axis=1, kind="stable")[:, :n_s]
            sib = np.take_along_axis(sib_all, order, axis=1)
        else:
            sib = np.empty((m, 0), dtype=np.int64)
        length = 2 + 2 * h
        nodes = np.full((m, 1 + n_s, length), -1, dtype=np.int64)
        signs = np.zeros((m, 1 + n_s, length))
        head = np.column_stack([c, dn_c])
        nodes[:, 0, : 1 + h] = head
        nodes[:, 0, 1 + h : 1 + 2 * h] = up
        signs[:, 0, : 1 + 2 * h] = 1.0
        valid = np.ones((m, 1 + n_s), dtype=bool)
        for j in range(n_s):
            s_j = sib[:, j]
            dn_s = self._down(base, d, s_j, req)
            nodes[:, 1 + j, : 1 + h] = head
            nodes[:, 1 + j, 1 + h] = s_j
            nodes[:, 1 + j, 2 + h : 2 + 2 * h] = dn_s
            signs[:, 1 + j, : 1 + h] = 1.0
            signs[:, 1 + j, 1 + h : 2 + 2 * h] = -1.0
            valid[:, 1 + j] = s_j >= 0
        signs = np.where(nodes >= 0, signs, 0.0)
        # Pack each vector's nodes to the left and drop padding columns nobody uses.
        order = np.argsort(nodes < 0, axis=2, kind="stable")
        nodes = np.take_along_axis(nodes, order, axis=2)
        signs = np.take_along_axis(signs, order, axis=2)
        used = int((nodes >= 0).sum(axis=2).max(initial=1))
        nodes, signs = nodes[:, :, :used], signs[:, :, :used]
        # A root without parent or children (dimension without margins) moves alone.
        return nodes, signs, valid

    def cover(self, cells: np.ndarray, width: np.ndarray) -> np.ndarray:
        """Suppress the cheapest certified hypercube through each cell; returns which succeeded."""
        k = self.k
        m = len(cells)
        coords = np.array(np.unravel_index(cells, self.shape), dtype=np.int64)
        req = self.required[cells]
        flat = np.zeros((m,) + (1,) * (2 * k), dtype=np.int64)
        sign = np.ones((m,) + (1,) * (2 * k))
        valid = np.ones((m,) + (1,) * k, dtype=bool)
        for d in range(k):
            base = cells - coords[d] * self.strides[d]
            nodes, signs, ok_d = self._vectors(base, d, coords[d], req)
            shape = [m] + [1] * (2 * k)
            shape[1 + d] = nodes.shape[1]
            shape[1 + k + d] = nodes.shape[2]
            flat = flat + np.maximum(nodes, 0).reshape(shape) * self.strides[d]
            sign = sign * signs.reshape(shape)
            vshape = [m] + [1] * k
            vshape[1 + d] = nodes.shape[1]
            valid = valid & ok_d.reshape(vshape)
        full = np.broadcast_shapes(flat.shape, sign.shape)
        flat = np.broadcast_to(flat, full).reshape(m, -1, int(np.prod(full[1 + k :])))
        sign = np.broadcast_to(sign, full).reshape(m, -1, int(np.prod(full[1 + k :])))
        valid = np.broadcast_to(valid, full[: 1 + k]).reshape(m, -1)
        in_support = sign != 0
        x = self.values[flat] - self.lower
        t_plus = np.where(sign < 0, x, np.inf).min(axis=2)
        t_minus = np.where(sign > 0, x, np.inf).min(axis=2)
        widths = t_plus + t_minus if self.bounded else np.full(t_plus.shape, np.inf)
        need = np.where(in_support, self.required[flat], 0.0).max(axis=2)
        new = in_support & ~self.suppressed[flat]
        cost = np.where(new, np.abs(self.values[flat]), 0.0).sum(axis=2)
        ok = valid & (widths >= need - _TOL)
        # Per primary: the cheapest certified combination (ties: the first); else the widest.
        best_ok = np.argmin(np.where(ok, cost, np.inf), axis=1)
        widest = np.argmax(np.where(valid, widths, -np.inf), axis=1)
        any_ok = ok.any(axis=1)
        best = np.where(any_ok, best_ok, widest)
        rows = np.arange(m)
        members = flat[rows, best]
        member_in = in_support[rows, best]
        chosen = members[member_in]
        self.suppressed[chosen] = True
        w = np.repeat(widths[rows, best], member_in.sum(axis=1))
        np.maximum.at(width, chosen, w)
        return any_ok


def protect(
    values: np.ndarray,
    primary: np.ndarray,
    structure: TableStructure,
    required: np.ndarray,
    *,
    lower: float = 0.0,
    seed: int = 0,
    random_rounds: int = 3,
    batch_size: int = 256,
    method: str = "hypercube",
) -> SecondaryResult:
    """Choose secondary suppressions so that every suppressed cell keeps a wide feasible range.

    Parameters
    ----------
    values : numpy array
        True values of all cells (flat, C order over ``structure.shape``), margins included.
    primary : numpy array of bool
        Cells suppressed by the primary rules.
    structure : TableStructure
        Parents of every node along every dimension.
    required : numpy array
        Minimum feasible-range width for each cell should it be suppressed.
    lower : float
        Lower bound of every cell (0 for counts and non-negative magnitudes; ``-inf`` otherwise).
    seed : int
        Seed for the objective signs of the certifying LPs (the result is deterministic).
    random_rounds : int
        Number of batched certifying rounds before exact per-cell LPs.
    batch_size : int
        Primary cells covered per vectorised hypercube batch.
    method : str
        "hypercube" (default: hypercubes, then the LP audit as a safety net) or "lp" (singleton
        closing and LP audit/repair only; slower, used to cross-check).

    Returns
    -------
    SecondaryResult

    Examples
    --------
    One small cell in a 2 x 2 table with totals: its row, column and diagonal partner go too.

    >>> import numpy as np
    >>> s = TableStructure((np.array([2, 2, -1]), np.array([2, 2, -1])))
    >>> x = np.array([3, 12, 15, 20, 30, 50, 23, 42, 65], dtype=float)
    >>> primary = x < 10
    >>> r = protect(x, primary, s, np.full(9, 10.0))
    >>> np.flatnonzero(r.suppressed).tolist()
    [0, 1, 3, 4]
    """
    values = np.asarray(values, dtype=float)
    suppressed = np.asarray(primary, dtype=bool).copy()
    required = np.asarray(required, dtype=float)
    n = len(values)
    a_abs: sp.csr_matrix | None = None
    a_csc: sp.csc_matrix | None = None
    # Cheapest partners first: small positive values; zeros (which cannot absorb a decrease)
    # and then margins only when nothing else is left.
    big = float(np.nanmax(np.abs(values))) + 1.0 if n else 1.0
    cost = np.where(values > 0, values, big * 4.0)

    # 1. Hypercubes: one certified perturbation per primary cell, cheapest first.
    proven = np.zeros(n)
    cubes = _Hypercubes(structure, values, suppressed, required, lower)
    # Totals first: their hypercubes reach down to leaves and often cover leaf primaries too.
    coords = np.unravel_index(np.arange(n), structure.shape)
    levels = sum(
        (kids[:, 0] >= 0 if kids.shape[1] else np.zeros(len(kids), dtype=bool))[c].astype(int)
        for kids, c in zip(cubes.kids, coords, strict=True)
    )
    prim = np.flatnonzero(suppressed)
    prim = prim[np.lexsort((prim, -levels[prim]))]
    if method not in ("hypercube", "lp"):
        raise DisclosureError(f"protect: method must be 'hypercube' or 'lp'; got {method!r}")
    if method == "lp":
        prim = prim[:0]
    for start in range(0, len(prim), batch_size):
        batch = prim[start : start + batch_size]
        batch = batch[proven[batch] < required[batch] - _TOL]
        if len(batch):
            cubes.cover(batch, proven)
    certified = ~suppressed | (proven >= required - _TOL)
    lo_seen = values.copy()
    hi_seen = values.copy()
    rng = np.random.default_rng(seed)
    n_lp = 0
    rounds = 0
    box = big * 4.0 + float(np.max(required, initial=0.0)) * 4.0
    while True:
        rounds += 1
        if certified[suppressed].all():
            break
        if a_abs is None or a_csc is None:
            # The equations are only needed when the hypercubes left a cell uncertified.
            a = structure.equations()
            a_abs = abs(a).astype(np.int64).tocsr()
            a_csc = a.tocsc()
        _close_singletons(a_abs, suppressed, cost)
        certified |= ~suppressed
        certified[suppressed] |= required[suppressed] <= 0
        cells = np.flatnonzero(suppressed)
        if len(cells) == 0 or certified[cells].all():
            break
        bad, k = _certify(
            a_csc,
            values,
            suppressed,
            ~certified,
            required,
            lower,
            rng,
            lo_seen,
            hi_seen,
            random_rounds,
            box,
        )
        n_lp += k
        certified[cells] = True
        certified[bad] = False
        if len(bad) == 0:
            break
        # Repair: suppress the cheapest released member of the failing cells' own equations.
        sub = a_abs[:, bad].tocoo()
        eqs = np.unique(sub.row)
        members = a_abs[eqs].tocoo()
        keep = ~suppressed[members.col]
        if keep.any():
            cand = members.col[keep]
            pick = cand[np.lexsort((cand, cost[cand]))][: max(1, len(bad))]
            suppressed[np.unique(pick)] = True
        else:
            # Everything in their equations is already hidden: widen from the whole component.
            comp_rows = np.flatnonzero((a_abs @ suppressed.astype(np.int64)) > 0)
            members = a_abs[comp_rows].tocoo()
            cand = members.col[~suppressed[members.col]]
            if len(cand) == 0:
                raise DisclosureError(
                    "secondary suppression could not protect every cell even with all "
                    "released cells considered; this should not happen for consistent tables"
                )
            suppressed[cand[np.lexsort((cand, cost[cand]))][0]] = True
    width = np.where(suppressed, np.maximum(hi_seen - lo_seen, proven), np.nan)
    secondary = suppressed & ~np.asarray(primary, dtype=bool)
    logger.info(
        "secondary suppression: %d primary, %d secondary, %d LPs, %d rounds",
        int(np.sum(primary)),
        int(secondary.sum()),
        n_lp,
        rounds,
    )
    return SecondaryResult(suppressed, secondary, width, n_lp, rounds)


def _certify(
    a_csc: sp.csc_matrix,
    values: np.ndarray,
    suppressed: np.ndarray,
    check: np.ndarray,
    required: np.ndarray,
    lower: float,
    rng: np.random.Generator,
    lo_seen: np.ndarray,
    hi_seen: np.ndarray,
    random_rounds: int,
    box: float,
) -> tuple[np.ndarray, int]:
    """Cells (flat ids) among ``check & suppressed`` whose feasible range is narrower than required.

    ``lo_seen``/``hi_seen`` hold the extremes of known feasible points (updated in place); the
    values of suppressed cells may be unknown (NaN), as when auditing a released file.
    """
    cells = np.flatnonzero(suppressed)
    a_s = a_csc[:, cells].tocsr()
    touched = np.flatnonzero(np.diff(a_s.indptr) > 0)
    a_s = a_s[touched]
    rhs = -(a_csc[:, ~suppressed] @ values[~suppressed])[touched]
    need = check[cells].copy()
    need &= ~(hi_seen[cells] - lo_seen[cells] >= required[cells] - _TOL)
    base = np.where(np.isfinite(values[cells]), np.maximum(values[cells], 0), 0.0)
    ub = base + box
    lb = np.full(len(cells), lower if np.isfinite(lower) else -box)
    bounds = np.column_stack([lb, ub])
    n_lp = 0
    for _ in range(random_rounds):
        if not need.any():
            break
        c = np.zeros(len(cells))
        c[need] = rng.choice([-1.0, 1.0], size=int(need.sum()))
        for sign in (1.0, -1.0):
            res = linprog(-sign * c, A_eq=a_s, b_eq=rhs, bounds=bounds, method="highs")
            n_lp += 1
            if res.status != 0:
                raise DisclosureError(
                    "secondary suppression: the table's margins are inconsistent with its "
                    f"cells (LP status {res.status}); totals must equal the sum of their cells"
                )
            lo_seen[cells] = np.minimum(lo_seen[cells], res.x)
            hi_seen[cells] = np.maximum(hi_seen[cells], res.x)
        width = hi_seen[cells] - lo_seen[cells]
        need &= ~(width >= required[cells] - _TOL)
    if not need.any():
        return np.empty(0, dtype=np.int64), n_lp
    bad, k = _exact_failures(a_s, rhs, cells, need, required, lower, lo_seen, hi_seen)
    return bad, n_lp + k


def certify_released(
    values: np.ndarray,
    suppressed: np.ndarray,
    structure: TableStructure,
    required: float | np.ndarray,
    *,
    lower: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Audit a released table: suppressed cells (values unknown) whose range is too narrow.

    Parameters
    ----------
    values : numpy array
        Released values, NaN where suppressed (flat, C order over ``structure.shape``).
    suppressed : numpy array of bool
        Which cells are withheld.
    structure : TableStructure
        Parents of every node.
    required : float or numpy array
        Minimum feasible-range width.

    Returns
    -------
    numpy array
        Flat ids of suppressed cells that can be pinned down to less than ``required``.

    Examples
    --------
    >>> import numpy as np
    >>> s = TableStructure((np.array([2, 2, -1]), np.array([2, 2, -1])))
    >>> x = np.array([np.nan, 12, 15, 20, 30, 50, 23, 42, 65])
    >>> certify_released(x, np.isnan(x), s, 10.0).tolist()
    [0]
    """
    values = np.asarray(values, dtype=float)
    suppressed = np.asarray(suppressed, dtype=bool)
    req = np.broadcast_to(np.asarray(required, dtype=float), values.shape).copy()
    lo_seen = np.where(suppressed, np.inf, values)
    hi_seen = np.where(suppressed, -np.inf, values)
    known = values[~suppressed]
    box = 4.0 * (float(np.max(np.abs(known), initial=0.0)) + float(req.max(initial=0.0))) + 1.0
    a_csc = structure.equations().tocsc()
    bad, _ = _certify(
        a_csc,
        np.where(suppressed, 0.0, values),
        suppressed,
        suppressed.copy(),
        req,
        lower,
        np.random.default_rng(seed),
        lo_seen,
        hi_seen,
        3,
        box,
    )
    return bad


def _exact_failures(
    a_s: sp.csr_matrix,
    rhs: np.ndarray,
    cells: np.ndarray,
    need: np.ndarray,
    required: np.ndarray,
    lower: float,
    lo_seen: np.ndarray,
    hi_seen: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Exact LP ranges for the uncertified cells; returns the cells still too narrow."""
    n_var = len(cells)
    n_eq = a_s.shape[0]
    # Bipartite graph variables <-> equations, to split the LP into independent components.
    bip = sp.bmat([[None, a_s.T.tocsr() != 0], [a_s != 0, None]]).tocsr()
    _, labels = connected_components(bip, directed=False)
    var_label = labels[:n_var]
    eq_label = labels[n_var : n_var + n_eq]
    bad: list[int] = []
    n_lp = 0
    for comp in np.unique(var_label[need]):
        vars_c = np.flatnonzero(var_label == comp)
        eqs_c = np.flatnonzero(eq_label == comp)
        sub = a_s[eqs_c][:, vars_c]
        targets_global = np.flatnonzero(need & (var_label == comp))
        local = np.searchsorted(vars_c, targets_global)
        lo, hi, k = _lp_ranges(sub.tocsr(), rhs[eqs_c], lower, local)
        n_lp += k
        idx = cells[targets_global]
        lo_seen[idx] = np.minimum(lo_seen[idx], lo)
        hi_seen[idx] = np.maximum(hi_seen[idx], hi)
        too_narrow = (hi - lo) < required[idx] - _TOL
        bad.extend(idx[too_narrow].tolist())
    return np.array(sorted(bad), dtype=np.int64), n_lp
