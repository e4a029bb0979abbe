"""Activity and raw feed rows for one chunk of people (vectorised; no loop over people).

:func:`simulate_chunk` turns the people of a chunk into the rows of every raw feed (as Arrow
tables in the exact ``kidresearch.schema.RAW_FEEDS`` column order, each row with the extract
month it arrives in) plus the chunk's contribution to ``truth.json``.

Time unit of the models: the *model year*, 12 months from the period start (2021-11-01,
2022-11-01, ...). Features (age, eFI category, polypharmacy, prior emergency admission) are
measured at the start of the model year, or at registration for people who join mid-year.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kidresearch.data import load
from kidresearch.schema import RAW_FEEDS
from kidresearch.synth.population import (
    DAYS_PER_YEAR,
    DEFICITS,
    Calendar,
    Geography,
    People,
    _efi_subset,
    days_to_month_index,
    expit,
)
from kidresearch.synth.scenario import Scenario

FEEDS = tuple(RAW_FEEDS)
RECORD_PREFIX = {
    "registrations": "REG",
    "deaths": "DTH",
    "gp_events": "GPE",
    "prescriptions": "RX",
    "inpatient_spells": "APC",
    "ae_attendances": "AE",
    "outpatient_appointments": "OP",
    "community_contacts": "CHS",
    "mental_health_contacts": "MH",
    "out_of_hours_contacts": "OOH",
    "social_care_packages": "ASC",
    "hospice_episodes": "HOS",
    "programme_enrolments": "PRG",
}
# Feeds whose NHS numbers are never corrupted: the register itself, and the programme
# enrolments (so that the programme truth refers to linkable people).
CLEAN_NHS_FEEDS = ("registrations", "programme_enrolments")
# Acute trusts serving each district (index order of population.DISTRICTS): East Kent (RVV),
# Maidstone and Tunbridge Wells (RWF), Dartford and Gravesham (RN7), Medway (RPA).
DISTRICT_TRUST = np.array(
    ["RVV", "RVV", "RN7", "RVV", "RVV", "RN7", "RWF", "RWF", "RPA", "RVV", "RWF", "RWF"]
)
ACSC_CHRONIC_CODES = np.array(
    ["I209", "I251", "J459", "J46X", "I489", "J441", "J449", "I500", "I110", "G409", "F03X"]
    + ["F019", "G309", "E116", "E101", "E115", "I10X", "D509"]
)
ACSC_ACUTE_CODES = np.array(
    ["N390", "N10X", "N12X", "J069", "J039", "H669", "L031", "L039", "J181", "J159", "E86X"]
    + ["A099", "K528", "K529"]
)
NON_ACSC_EMERGENCY_CODES = np.array(
    ["R074", "R104", "R55X", "S720", "S060", "I639", "I214", "K922", "A419", "R296", "K359"]
    + ["K800", "C349", "R410", "E871", "N179", "I269", "K566"]
)
ELECTIVE_CODES = np.array(["H251", "M170", "M160", "K409", "N40X", "C509", "Z511", "K802"])
DEATH_CAUSES = np.array(["I219", "C349", "J449", "F03X", "I500", "J189", "I64X", "C189"])
DEATH_CAUSE_P = np.array([0.14, 0.12, 0.1, 0.14, 0.08, 0.12, 0.1, 0.2])
TREATMENT_FUNCTIONS = np.array(
    ["100", "101", "110", "120", "130", "300", "301", "320", "330", "340", "400", "410", "430"]
    + ["502", "800"]
)
EMERGENCY_METHODS_NOT_AE = np.array(["22", "23", "24", "25", "28", "2A", "2B", "2C", "2D"])
EMERGENCY_METHODS_NOT_AE_P = np.array([0.45, 0.08, 0.08, 0.07, 0.12, 0.06, 0.05, 0.05, 0.04])
COMMUNITY_SERVICES = np.array(
    [
        "district_nursing",
        "physiotherapy",
        "occupational_therapy",
        "podiatry",
        "speech_and_language",
        "rapid_response",
    ]
)
MH_TEAMS = np.array(["community_mh", "crisis", "older_adults", "iapt", "inpatient_liaison"])
OOH_TYPES = np.array(["telephone", "base_visit", "home_visit"])
EMERGENCY_TRIM_DAYS = 5
NULL_DAY = -(10**9)  # missing date (open episode)
# Annual costs are summarised in a fine log-scale histogram (bin 0 holds zero costs), so the
# truth's top-5% share needs constant memory whatever the population size.
COST_BINS = 4001
COST_BIN_WIDTH = 0.0025  # log10(£) per bin: 1p to £100m in 4,000 bins


def cost_bin(cost: np.ndarray) -> np.ndarray:
    """Histogram bin of each annual cost (0 for no cost)."""
    positive = cost > 0
    b = np.zeros(len(cost), dtype=np.int64)
    b[positive] = np.clip(
        1 + np.floor((np.log10(cost[positive]) + 2) / COST_BIN_WIDTH), 1, COST_BINS - 1
    ).astype(np.int64)
    return b


@dataclass(frozen=True)
class Reference:
    """Code lists and unit costs the generator uses (loaded once per process)."""

    deficit_codes: list[np.ndarray]  # per coded deficit (DEFICITS order): its SNOMED codes
    ltc_codes: dict[str, str]  # other conditions (ltc_codes.csv): condition -> SNOMED code
    consultation_codes: np.ndarray
    consultation_p: np.ndarray
    drug_code: np.ndarray  # per drug slot (35 deficits + background); "" when none
    drug_chapter: np.ndarray
    drug_monthly_cost: np.ndarray
    unit_cost: dict[tuple[str, str], float]

    @classmethod
    def load(cls) -> Reference:
        efi = load("efi_deficits", dtype={"snomed_code": str})
        codes = []
        for name, *_ in DEFICITS:
            rows = efi[efi.deficit == name].snomed_code.dropna()
            if rows.empty:
                raise ValueError(f"efi_deficits.csv has no SNOMED codes for deficit '{name}'")
            codes.append(rows.to_numpy(dtype=object).astype(str))
        gp = load("gp_consultation_codes", dtype={"snomed_code": str})
        drugs = load("bnf_drugs", dtype={"bnf_code": str})
        slots = [d[0] for d in DEFICITS] + ["background_statin", "background_ppi"]
        by_indication: dict[str, Any] = {}
        for row in drugs.itertuples(index=False):
            by_indication.setdefault(row.indication, []).append(row)
        bg = by_indication.get("background", [])
        bg_map = {
            "background_statin": next(r for r in bg if "statin" in r.chemical_substance),
            "background_ppi": next(r for r in bg if "prazole" in r.chemical_substance),
        }
        drug_rows = [
            bg_map[s] if s in bg_map else (by_indication.get(s) or [None])[-1] for s in slots
        ]
        costs = load("unit_costs")
        unit_cost = {
            (r.service_line, r.activity): float(r.unit_cost_gbp)
            for r in costs.itertuples(index=False)
            if r.unit_cost_gbp == r.unit_cost_gbp  # not NaN
        }
        return cls(
            deficit_codes=codes,
            ltc_codes=dict(
                load("ltc_codes", dtype={"snomed_code": str})[
                    ["condition", "snomed_code"]
                ].itertuples(index=False, name=None)
            ),
            consultation_codes=gp.snomed_code.to_numpy(dtype=str),
            consultation_p=(gp.weight / gp.weight.sum()).to_numpy(),
            drug_code=np.array([r.bnf_code if r is not None else "" for r in drug_rows]),
            drug_chapter=np.array([r.bnf_chapter if r is not None else 0 for r in drug_rows]),
            drug_monthly_cost=np.array(
                [r.monthly_cost_gbp if r is not None else 0.0 for r in drug_rows]
            ),
            unit_cost=unit_cost,
        )


# ------------------------------------------------------------------------------ NHS numbers
_NHS_PERM_MOD = 250_000_000
_NHS_PERM_MUL = 104_729  # prime, coprime with the modulus, so the map is a permutation


def nhs_check_digit(body: np.ndarray) -> np.ndarray:
    """Modulus 11 check digit of 9-digit bodies (10 means no valid check digit exists).

    >>> int(nhs_check_digit(np.array([943476591]))[0])
    9
    """
    rest = np.asarray(body, dtype=np.int64).copy()
    total = np.zeros(len(rest), dtype=np.int64)
    for weight in range(2, 11):  # nine digits, last digit has weight 2
        total += (rest % 10) * weight
        rest //= 10
    remainder = total % 11
    check = 11 - remainder
    return np.where(check == 11, 0, check)


def person_nhs_numbers(global_index: np.ndarray) -> np.ndarray:
    """Unique valid NHS numbers (int64) for people by global index (vectorised).

    Bodies are 400,000,000 + 2 * a scrambled index; when a body has no valid check digit the
    next (odd) body is used, which no other person's even body can collide with.

    >>> n = person_nhs_numbers(np.arange(5))
    >>> bool((nhs_check_digit(n // 10) == n % 10).all())
    True
    """
    body = 400_000_000 + 2 * ((global_index * _NHS_PERM_MUL + 12_345) % _NHS_PERM_MOD)
    check = nhs_check_digit(body)
    bad = check == 10
    body = np.where(bad, body + 1, body)
    check = np.where(bad, nhs_check_digit(body), check)
    return body * 10 + check


def unknown_nhs_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Valid NHS numbers in the 300,000,000-399,999,999 body range, never in the register."""
    out = np.empty(0, dtype=np.int64)
    while out.size < n:
        body = rng.integers(300_000_000, 400_000_000, size=2 * n + 8)
        check = nhs_check_digit(body)
        out = np.concatenate([out, (body * 10 + check)[check < 10]])
    return out[:n]


# ------------------------------------------------------------------------------ row building
@dataclass
class FeedRows:
    """Columns of one feed for a chunk before finishing (numpy arrays; row-aligned)."""

    columns: dict[str, np.ndarray]
    pid: np.ndarray  # local person index
    month: np.ndarray  # extract month relative to the period start
    serial: np.ndarray  # record number within the chunk (record_id = prefix + serial)


@dataclass(frozen=True)
class Cat:
    """A categorical string column: integer codes into a small array of labels.

    Building Arrow strings from codes (a dictionary array cast to string) is much faster than
    from numpy unicode arrays, which matters at Kent scale.
    """

    codes: np.ndarray
    labels: np.ndarray

    def __getitem__(self, idx: Any) -> Cat:
        return Cat(self.codes[idx], self.labels)

    def __len__(self) -> int:
        return len(self.codes)

    def copy(self) -> Cat:
        return Cat(self.codes.copy(), self.labels)

    @property
    def values(self) -> np.ndarray:
        return self.labels[self.codes]

    def code_of(self, label: str) -> int:
        hit = np.flatnonzero(self.labels == label)
        return int(hit[0]) if hit.size else -1

    def with_label(self, label: str) -> tuple[Cat, int]:
        """This column with ``label`` added to its labels (if absent) and that label's code."""
        code = self.code_of(label)
        if code >= 0:
            return self, code
        return Cat(self.codes, np.append(self.labels, label)), len(self.labels)

    def set(self, idx: np.ndarray, label: str) -> Cat:
        out, code = self.with_label(label)
        codes = out.codes.copy()
        codes[idx] = code
        return Cat(codes, out.labels)


def categorical(labels: np.ndarray | list[str], codes: np.ndarray) -> Cat:
    """A Cat column; labels must be distinct (Parquet dictionary pages are only byte-stable
    across processes when dictionary values are unique)."""
    labels = np.asarray(labels, dtype=str)
    assert len(np.unique(labels)) == len(labels), "categorical labels must be distinct"
    return Cat(np.asarray(codes, dtype=np.int32), labels)


def _concat_values(parts: list[Any]) -> Any:
    """Concatenate numpy arrays or Cat columns (labels unified when they differ)."""
    if not isinstance(parts[0], Cat):
        return np.concatenate(parts)
    labels = parts[0].labels
    for part in parts[1:]:
        for lab in part.labels:
            if lab not in labels:
                labels = np.append(labels, lab)
    codes = []
    for part in parts:
        mapping = np.array([int(np.flatnonzero(labels == lab)[0]) for lab in part.labels])
        codes.append(mapping[part.codes] if len(mapping) else part.codes)
    return Cat(np.concatenate(codes).astype(np.int32), labels)


@dataclass
class ChunkTruth:
    """Additive truth statistics of one chunk (summed over chunks by the generator)."""

    counts: dict[str, Any] = field(default_factory=dict)
    cost_histogram: np.ndarray | None = None  # (2, COST_BINS): people and cost per log bin
    cost_55_by_quintile: np.ndarray | None = None  # (2, 5): people aged 55+ and their cost
    practice_acsc: np.ndarray | None = None  # (n_practices, 2): acsc spells, all emergency


def _add(d: dict[str, Any], key: str, value: Any) -> None:
    d[key] = d.get(key, 0) + value


class ChunkSimulator:
    """Simulate all activity of one chunk of people; see :func:`simulate_chunk`."""

    def __init__(
        self,
        scn: Scenario,
        geo: Geography,
        cal: Calendar,
        ref: Reference,
        rng: np.random.Generator,
        people: People,
        chunk: int,
    ) -> None:
        self.scn, self.geo, self.cal, self.ref, self.rng, self.p = scn, geo, cal, ref, rng, people
        self.chunk = chunk
        self.truth = ChunkTruth()
        self.lag_values = np.array(list(scn.data_quality.lag_months.keys()))
        self.lag_p = np.array(list(scn.data_quality.lag_months.values()))
        self._year_features()

    # -------------------------------------------------------------------- helpers
    def extract_month(self, day: np.ndarray, pid: np.ndarray) -> np.ndarray:
        """Extract month (relative) a row about ``day`` arrives in: event month + reporting lag;
        history from before registration (or before the period) arrives with the registration
        (baseline population: the first extract, without lag)."""
        p, cal = self.p, self.cal
        when = np.maximum(day, p.reg_start[pid])
        rel = days_to_month_index(when) - cal.first_month
        lag = self.rng.choice(self.lag_values, size=len(day), p=self.lag_p)
        return np.where(rel < 0, 0, rel + lag)

    def uniform_days(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        return start + np.floor(self.rng.random(len(start)) * (end - start)).astype(np.int64)

    def _year_features(self) -> None:
        """Per model year: who is at risk, from when to when, and their features."""
        p, cal = self.p, self.cal
        self.years = []
        end_all = p.end_excl
        for k in range(cal.n_years):  # model years, not people
            y0, y1 = int(cal.year_bounds[k]), int(cal.year_bounds[k + 1])
            start = np.maximum(y0, p.reg_start)
            end = np.minimum(y1, end_all)
            idx = np.flatnonzero((end > start) & (p.dob <= start))
            s = start[idx]
            count, cat, poly = _efi_subset(p, idx, s)
            self.years.append(
                {
                    "k": k,
                    "y0": y0,
                    "y1": y1,
                    "idx": idx,
                    "start": s,
                    "end": end[idx],
                    "age": (s - p.dob[idx]) / DAYS_PER_YEAR,
                    "cat": cat,
                    "poly": poly,
                    "frac": (y1 - s) / (y1 - y0),
                    "exposure": (end[idx] - s) / DAYS_PER_YEAR,
                    "dep": p.dep[idx].astype(np.float64),
                }
            )

    def poisson_events(self, yr: dict, rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = self.rng.poisson(rate * yr["exposure"])
        sel = np.repeat(np.arange(len(yr["idx"])), counts)
        days = self.uniform_days(yr["start"][sel], yr["end"][sel])
        return yr["idx"][sel], days

    # -------------------------------------------------------------------- emergency
    def emergency(self) -> None:
        """Untreated potential outcomes (Y0) of emergency admissions, per model year."""
        scn, p, rng = self.scn, self.p, self.rng
        em = scn.emergency
        efi_coef = np.array([0.0, em.efi_mild, em.efi_moderate, em.efi_severe])
        prior = np.zeros(p.n, dtype=bool)
        pid_parts, day_parts, year_parts = [], [], []
        for yr in self.years:
            idx = yr["idx"]
            practice = self._practice_at(idx, yr)
            eta0 = (
                em.intercept
                + em.age_per_decade * (yr["age"] - em.age_centre) / 10.0
                + em.male * p.male[idx]
                + efi_coef[yr["cat"]]
                + em.polypharmacy * yr["poly"]
                + em.deprivation_per_quintile * yr["dep"]
                + self.geo.practice_effect[practice]
            )
            if yr["k"] == 0:  # the year before the period is not observed: latent prior use
                prior[idx] = rng.random(len(idx)) < expit(eta0 - em.age_per_decade / 10.0)
            eta = eta0 + em.prior_emergency * prior[idx]
            p_any = expit(eta) * yr["frac"]
            anyadm = rng.random(len(idx)) < p_any
            extra = rng.poisson(
                em.extra_admissions_base + em.extra_admissions_per_efi_category * yr["cat"]
            )
            n_adm = anyadm * (1 + extra)
            sel = np.repeat(np.arange(len(idx)), n_adm)
            pid_parts.append(idx[sel])
            day_parts.append(self.uniform_days(yr["start"][sel], yr["end"][sel]))
            year_parts.append(np.full(len(sel), yr["k"], dtype=np.int8))
            prior = np.zeros(p.n, dtype=bool)
            prior[idx] = anyadm
            _add(self.truth.counts, f"emergency_any_year{yr['k']}", int(anyadm.sum()))
            _add(self.truth.counts, f"emergency_at_risk_year{yr['k']}", int(len(idx)))
        self.em_pid = np.concatenate(pid_parts)
        self.em_day = np.concatenate(day_parts)
        order = np.lexsort((self.em_day, self.em_pid))
        self.em_pid, self.em_day = self.em_pid[order], self.em_day[order]
        self.em_keep = np.ones(len(self.em_pid), dtype=bool)
        self.em_u = rng.random(len(self.em_pid))  # thinning uniforms (treatment effect)

    def _practice_at(self, idx: np.ndarray, yr: dict) -> np.ndarray:
        p = self.p
        changed = (p.change_kind[idx] == 1) & (p.change_day[idx] >= 0)
        changed &= p.change_day[idx] <= yr["start"]
        return np.where(changed, p.new_practice[idx], p.practice[idx])

    def _window_counts(
        self,
        ev_pid: np.ndarray,
        ev_day: np.ndarray,
        who: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
    ) -> np.ndarray:
        """Per row of (who, lo, hi): number of events of person ``who`` in [lo, hi)."""
        if len(who) == 0:
            return np.zeros(0, dtype=np.int64)
        # Events are sorted by (pid, day): count via searchsorted on a combined key.
        key = ev_pid.astype(np.int64) * 100_000 + (ev_day - self.cal.start_day + 40_000)
        k_lo = who.astype(np.int64) * 100_000 + (lo - self.cal.start_day + 40_000)
        k_hi = who.astype(np.int64) * 100_000 + (hi - self.cal.start_day + 40_000)
        return np.searchsorted(key, k_hi, side="left") - np.searchsorted(key, k_lo, side="left")

    # -------------------------------------------------------------------- programmes
    def frailty_team(self) -> None:
        scn, p, rng, cal = self.scn, self.p, self.rng, self.cal
        ft = scn.programmes.integrated_frailty_team
        efi_coef = np.array([0.0, ft.efi_mild, ft.efi_moderate, ft.efi_severe])
        enrolled = np.full(p.n, -1, dtype=np.int64)
        ctrl_pid, ctrl_day = [], []
        for k in range(1, max(1, cal.n_years - 1)):  # enrol while 12 months follow-up fit
            y0, y1 = int(cal.year_bounds[k]), int(cal.year_bounds[k + 1])
            e = y0 + np.floor(rng.random(p.n) * (y1 - y0)).astype(np.int64)
            age = (e - p.dob) / DAYS_PER_YEAR
            cand = np.flatnonzero(
                (enrolled < 0) & (age >= 65) & (p.reg_start <= e) & (p.end_excl > e)
            )
            ec = e[cand]
            _, cat, _ = _efi_subset(p, cand, ec)
            prior = self._window_counts(self.em_pid, self.em_day, cand, ec - 365, ec)
            eta = (
                ft.intercept
                + ft.age_per_year * (age[cand] - 80.0)
                + efi_coef[cat]
                + ft.prior_emergency_per_spell * np.minimum(prior, 5)
                + ft.deprivation_per_quintile * p.dep[cand]
            )
            chosen = rng.random(len(cand)) < expit(eta)
            enrolled[cand[chosen]] = ec[chosen]
            ctrl_pid.append(cand[~chosen])
            ctrl_day.append(ec[~chosen])
        self.ft_day = enrolled
        treated = np.flatnonzero(enrolled >= 0)
        e = enrolled[treated]
        hi = np.minimum(e + ft.effect_months * 30 + ft.effect_months // 2, p.end_excl[treated])
        # Thinning: spells of the treated in [e, e + effect) survive with probability RR.
        adm_e = enrolled[self.em_pid]
        in_window = (adm_e >= 0) & (self.em_day >= adm_e)
        in_window &= self.em_day < np.minimum(
            adm_e + ft.effect_months * 30 + ft.effect_months // 2, p.end_excl[self.em_pid]
        )
        self.em_keep = ~(in_window & (self.em_u >= ft.emergency_rate_ratio))
        y0_count = self._window_counts(self.em_pid, self.em_day, treated, e, hi)
        kept_pid, kept_day = self.em_pid[self.em_keep], self.em_day[self.em_keep]
        y1_count = self._window_counts(kept_pid, kept_day, treated, e, hi)
        c_pid = np.concatenate(ctrl_pid) if ctrl_pid else np.zeros(0, dtype=np.int64)
        c_day = np.concatenate(ctrl_day) if ctrl_day else np.zeros(0, dtype=np.int64)
        c_hi = np.minimum(c_day + ft.effect_months * 30 + ft.effect_months // 2, p.end_excl[c_pid])
        ctrl_count = self._window_counts(kept_pid, kept_day, c_pid, c_day, c_hi)
        t = self.truth.counts
        _add(t, "ft_treated", len(treated))
        _add(t, "ft_y0_sum", int(y0_count.sum()))
        _add(t, "ft_y1_sum", int(y1_count.sum()))
        _add(t, "ft_control_person_years", len(c_pid))
        _add(t, "ft_control_sum", int(ctrl_count.sum()))
        self.ft_removed = in_window & ~self.em_keep

    def safe_and_well(self) -> None:
        scn, p, rng, cal = self.scn, self.p, self.rng, self.cal
        sw = scn.programmes.safe_and_well_visit
        visited = np.full(p.n, -1, dtype=np.int64)
        ctrl_pid, ctrl_day = [], []
        ae_order = np.lexsort((self.ae_day_all, self.ae_pid_all))
        ae_pid, ae_day = self.ae_pid_all[ae_order], self.ae_day_all[ae_order]
        for k in range(1, max(1, cal.n_years - 1)):
            y0, y1 = int(cal.year_bounds[k]), int(cal.year_bounds[k + 1])
            v = y0 + np.floor(rng.random(p.n) * (y1 - y0)).astype(np.int64)
            age = (v - p.dob) / DAYS_PER_YEAR
            cand = np.flatnonzero(
                (visited < 0) & (age >= 65) & (p.reg_start <= v) & (p.end_excl > v)
            )
            vc = v[cand]
            _, cat, _ = _efi_subset(p, cand, vc)
            prior = self._window_counts(ae_pid, ae_day, cand, vc - 365, vc)
            eta = (
                sw.intercept
                + sw.age_per_year * (age[cand] - 80.0)
                + sw.lives_alone * (p.household_size[cand] == 1)
                + sw.efi_moderate_or_severe * (cat >= 2)
                + sw.prior_ae_per_attendance * np.minimum(prior, 5)
                + sw.deprivation_per_quintile * p.dep[cand]
            )
            chosen = rng.random(len(cand)) < expit(eta)
            visited[cand[chosen]] = vc[chosen]
            ctrl_pid.append(cand[~chosen])
            ctrl_day.append(vc[~chosen])
        self.sw_day = visited
        treated = np.flatnonzero(visited >= 0)
        v = visited[treated]
        hi = np.minimum(v + 365, p.end_excl[treated])
        t_count = self._window_counts(ae_pid, ae_day, treated, v, hi)
        c_pid = np.concatenate(ctrl_pid) if ctrl_pid else np.zeros(0, dtype=np.int64)
        c_day = np.concatenate(ctrl_day) if ctrl_day else np.zeros(0, dtype=np.int64)
        c_count = self._window_counts(
            ae_pid, ae_day, c_pid, c_day, np.minimum(c_day + 365, p.end_excl[c_pid])
        )
        t = self.truth.counts
        _add(t, "sw_treated", len(treated))
        _add(t, "sw_ae_sum", int(t_count.sum()))
        _add(t, "sw_control_person_years", len(c_pid))
        _add(t, "sw_control_ae_sum", int(c_count.sum()))

    # -------------------------------------------------------------------- the feeds
    def build(self) -> tuple[dict[str, FeedRows], ChunkTruth]:
        self.emergency()
        self.frailty_team()
        rows: dict[str, FeedRows] = {}
        rows["inpatient_spells"] = self.inpatient_spells()
        rows["ae_attendances"] = self.ae_attendances()
        self.safe_and_well()
        rows["registrations"] = self.registrations()
        rows["deaths"] = self.deaths()
        rows["gp_events"] = self.gp_events()
        rows["prescriptions"] = self.prescriptions()
        rows["outpatient_appointments"] = self.outpatients()
        rows["community_contacts"] = self.community()
        rows["mental_health_contacts"] = self.mental_health()
        rows["out_of_hours_contacts"] = self.out_of_hours()
        rows["social_care_packages"] = self.social_care()
        rows["hospice_episodes"] = self.hospice()
        rows["programme_enrolments"] = self.enrolments()
        self.cost_truth()
        return {f: rows[f] for f in FEEDS}, self.truth

    def _rows(self, cols: dict[str, np.ndarray], pid: np.ndarray, day: np.ndarray) -> FeedRows:
        month = self.extract_month(day, pid)
        return FeedRows(cols, pid, month, np.arange(len(pid), dtype=np.int64))

    def _trust(self, pid: np.ndarray) -> Cat:
        # Unique labels: Parquet dictionary writes are only byte-stable with distinct values.
        trusts, index = np.unique(DISTRICT_TRUST, return_inverse=True)
        return categorical(trusts, index[self.geo.lsoa_district[self.p.lsoa[pid]]])

    def inpatient_spells(self) -> FeedRows:
        p, rng, scn = self.p, self.rng, self.scn
        keep = self.em_keep
        e_pid, e_day = self.em_pid[keep], self.em_day[keep]
        n = len(e_pid)
        age = (e_day - p.dob[e_pid]) / DAYS_PER_YEAR
        _, cat, _ = _efi_subset(p, e_pid, e_day)
        mean_los = 1.5 + 0.08 * np.maximum(age - 40, 0) + 1.2 * cat
        los = rng.negative_binomial(1.2, 1.2 / (1.2 + mean_los))
        los = np.minimum(los, np.maximum(p.end_excl[e_pid] - 1 - e_day, 0))
        via_ae = rng.random(n) < 0.7
        method_labels = np.concatenate([["21"], EMERGENCY_METHODS_NOT_AE, ["11", "12", "13"]])
        method = np.where(
            via_ae,
            0,
            1 + rng.choice(len(EMERGENCY_METHODS_NOT_AE), size=n, p=EMERGENCY_METHODS_NOT_AE_P),
        )
        practice = self._practice_on(e_pid, e_day)
        ratio = np.where(self.geo.practice_acsc[practice], scn.acsc.rate_ratio, 1.0)
        is_acsc = rng.random(n) < scn.acsc.base_share * ratio
        chronic = rng.random(n) < 0.5
        n_ch, n_ac, n_no = (
            len(ACSC_CHRONIC_CODES),
            len(ACSC_ACUTE_CODES),
            len(NON_ACSC_EMERGENCY_CODES),
        )
        diag_labels = np.concatenate(
            [ACSC_CHRONIC_CODES, ACSC_ACUTE_CODES, NON_ACSC_EMERGENCY_CODES, ELECTIVE_CODES]
        )
        diag = np.where(
            is_acsc,
            np.where(
                chronic,
                rng.integers(0, n_ch, n),
                n_ch + rng.integers(0, n_ac, n),
            ),
            n_ch + n_ac + rng.integers(0, n_no, n),
        )
        acsc = np.zeros((self.geo.n_practices, 2), dtype=np.int64)
        acsc[:, 0] = np.bincount(practice[is_acsc], minlength=self.geo.n_practices)
        acsc[:, 1] = np.bincount(practice, minlength=self.geo.n_practices)
        self.truth.practice_acsc = acsc
        self.em_via_ae_pid, self.em_via_ae_day = e_pid[via_ae], e_day[via_ae]
        self.em_los, self.em_rows_pid, self.em_rows_day = los, e_pid, e_day
        # Elective spells: Poisson per model year.
        el_pid, el_day = [], []
        act = scn.activity
        for yr in self.years:
            rate = act.elective_base + act.elective_per_year_of_age * yr["age"]
            a, b = self.poisson_events(yr, rate)
            el_pid.append(a)
            el_day.append(b)
        l_pid, l_day = np.concatenate(el_pid), np.concatenate(el_day)
        m = len(l_pid)
        l_los = np.where(rng.random(m) < 0.7, 0, 1 + rng.geometric(0.4, m))
        l_los = np.minimum(l_los, np.maximum(p.end_excl[l_pid] - 1 - l_day, 0))
        l_method = len(method_labels) - 3 + rng.choice(3, size=m, p=[0.6, 0.3, 0.1])
        pid = np.concatenate([e_pid, l_pid])
        day = np.concatenate([e_day, l_day])
        los_all = np.concatenate([los, l_los]).astype(np.int32)
        self.el_pid, self.el_day = l_pid, l_day
        cols = {
            "provider_code": self._trust(pid),
            "admission_date": day,
            "discharge_date": day + los_all,
            "admission_method": categorical(method_labels, np.concatenate([method, l_method])),
            "primary_diagnosis_icd10": categorical(
                diag_labels,
                np.concatenate(
                    [
                        diag,
                        len(diag_labels)
                        - len(ELECTIVE_CODES)
                        + rng.integers(0, len(ELECTIVE_CODES), m),
                    ]
                ),
            ),
            "los_days": los_all,
        }
        _add(self.truth.counts, "emergency_spells", n)
        _add(self.truth.counts, "emergency_acsc_spells", int(is_acsc.sum()))
        _add(self.truth.counts, "elective_spells", m)
        # SUS sends an inpatient spell after discharge: the extract month follows the discharge
        # month (plus the reporting lag), never the admission month.
        return self._rows(cols, pid, day + los_all)

    def _practice_on(self, pid: np.ndarray, day: np.ndarray) -> np.ndarray:
        p = self.p
        changed = (p.change_kind[pid] == 1) & (p.change_day[pid] >= 0)
        changed &= p.change_day[pid] <= day
        return np.where(changed, p.new_practice[pid], p.practice[pid])

    def ae_attendances(self) -> FeedRows:
        rng, act = self.rng, self.scn.activity
        parts_pid, parts_day = [self.em_via_ae_pid], [self.em_via_ae_day]
        for yr in self.years:
            age = yr["age"]
            agef = np.where((age < 25) | (age >= 75), 1.4, 1.0)
            rate = (
                act.ae_base
                * agef
                * np.exp(0.3 * yr["cat"] + act.deprivation_per_quintile * yr["dep"])
            )
            a, b = self.poisson_events(yr, rate)
            parts_pid.append(a)
            parts_day.append(b)
        pid, day = np.concatenate(parts_pid), np.concatenate(parts_day)
        n, n_adm = len(pid), len(self.em_via_ae_pid)
        dept = rng.choice(4, size=n, p=[0.6, 0.01, 0.35, 0.04])
        dept[:n_adm] = 0
        disposal = 1 + rng.choice(4, size=n, p=[0.72, 0.15, 0.08, 0.05])
        disposal[:n_adm] = 0
        self.ae_pid_all, self.ae_day_all = pid, day
        cols = {
            "provider_code": self._trust(pid),
            "arrival_date": day,
            "department_type": categorical(["1", "2", "3", "4"], dept),
            "disposal": categorical(
                ["admitted", "discharged", "referred", "left", "transferred"], disposal
            ),
        }
        return self._rows(cols, pid, day)

    def registrations(self) -> FeedRows:
        p, cal = self.p, self.cal
        n = p.n
        end_last = np.where(p.end_excl < cal.end_day_excl, p.end_excl - 1, NULL_DAY)
        has2 = p.change_kind > 0
        ep1_end = np.where(has2, p.change_day - 1, end_last)
        pid = np.concatenate([np.arange(n), np.flatnonzero(has2)])
        i2 = np.flatnonzero(has2)
        start = np.concatenate([p.reg_start, p.change_day[i2]])
        end = np.concatenate([ep1_end, end_last[i2]])
        practice = np.concatenate(
            [p.practice, np.where(p.change_kind[i2] == 1, p.new_practice[i2], p.practice[i2])]
        )
        uprn = np.concatenate(
            [p.uprn, np.where(p.change_kind[i2] == 2, p.new_uprn[i2], p.uprn[i2])]
        )
        cols = {
            "date_of_birth": p.dob[pid],
            "sex": categorical(["F", "M"], p.male[pid].astype(np.int32)),
            "postcode_lsoa": categorical(self.geo.lsoa_code, p.lsoa[pid]),
            "uprn": uprn,
            "practice_code": categorical(self.geo.practice_code, practice),
            "registration_start": start,
            "registration_end": end,
        }
        rows = self._episode_rows(cols, pid, start, end, "registration_end", "registrations")
        delivered = int((rows.month[:n] < self.cal.n_months).sum())
        _add(self.truth.counts, "people_in_register_extracts", delivered)
        return rows

    def _episode_rows(
        self,
        cols: dict[str, np.ndarray],
        pid: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        end_col: str,
        feed: str,
    ) -> FeedRows:
        """Rows of an episode feed: sent when the episode starts (end missing unless already
        known) and re-sent with the same record_id when it ends (the update wins)."""
        m_start = self.extract_month(start, pid)
        has_end = end > NULL_DAY // 2
        m_end = np.where(has_end, self.extract_month(np.maximum(end, start), pid), 10**6)
        m_end = np.maximum(m_end, m_start)
        same = has_end & (m_end == m_start)
        first = dict(cols)
        first[end_col] = np.where(same, end, NULL_DAY)
        upd = np.flatnonzero(has_end & ~same)
        serial = np.arange(len(pid), dtype=np.int64)
        all_cols = {k: _concat_values([first[k], cols[k][upd]]) for k in cols}
        _add(
            self.truth.counts,
            f"episode_updates_{feed}",
            int((m_end[upd] < self.cal.n_months).sum()),
        )
        return FeedRows(
            all_cols,
            np.concatenate([pid, pid[upd]]),
            np.concatenate([m_start, m_end[upd]]),
            np.concatenate([serial, serial[upd]]),
        )

    def deaths(self) -> FeedRows:
        p, rng = self.p, self.rng
        pid = np.flatnonzero(p.death_day >= 0)
        day = p.death_day[pid]
        cause = categorical(
            DEATH_CAUSES, rng.choice(len(DEATH_CAUSES), size=len(pid), p=DEATH_CAUSE_P)
        )
        self.death_cause = cause
        _add(self.truth.counts, "deaths", len(pid))
        cols = {"date_of_death": day, "underlying_cause_icd10": cause}
        return self._rows(cols, pid, day)

    def gp_events(self) -> FeedRows:
        p, rng, cal, act, ref = self.p, self.rng, self.cal, self.scn.activity, self.ref
        end = np.minimum(p.end_excl, cal.end_day_excl)
        # Deficit codes: first record date = onset (earlier history arrives with registration).
        on = p.deficit_onset
        pi, di = np.nonzero(on < end[:, None])
        day = on[pi, di].astype(np.int64)
        ncodes = np.array([len(c) for c in ref.deficit_codes])
        pick = np.floor(rng.random(len(di)) * ncodes[di]).astype(np.int64)
        flat = np.concatenate(ref.deficit_codes)
        offset = np.concatenate([[0], np.cumsum(ncodes)[:-1]])
        code = offset[di] + pick
        # A fifth of deficits are coded again later (another code of the same deficit).
        again = rng.random(len(di)) < 0.2
        lo = np.maximum(day[again], np.maximum(p.reg_start[pi[again]], cal.start_day))
        hi = end[pi[again]]
        ok = hi > lo + 1
        r_pid = pi[again][ok]
        r_day = self.uniform_days(lo[ok], hi[ok])
        r_di = di[again][ok]
        r_code = offset[r_di] + np.floor(rng.random(len(r_di)) * ncodes[r_di]).astype(int)
        # Consultations per model year.
        c_pid, c_day = [], []
        for yr in self.years:
            rate = (
                act.gp_consultations_base
                + act.gp_consultations_per_year_of_age * yr["age"]
                + act.gp_consultations_per_efi_category * yr["cat"]
            ) * np.exp(0.25 * act.deprivation_per_quintile * yr["dep"])
            a, b = self.poisson_events(yr, rate)
            c_pid.append(a)
            c_day.append(b)
        cp, cd = np.concatenate(c_pid), np.concatenate(c_day)
        c_code = len(flat) + rng.choice(
            len(ref.consultation_codes), size=len(cp), p=ref.consultation_p
        )
        self.gp_consult_pid, self.gp_consult_day = cp, cd
        l_pid, l_day, l_code, ltc_labels = self._other_conditions(end)
        l_code = len(flat) + len(ref.consultation_codes) + l_code
        pid = np.concatenate([pi, r_pid, cp, l_pid])
        days = np.concatenate([day, r_day, cd, l_day])
        codes = np.concatenate([code, r_code, c_code, l_code])
        practice = self._practice_on(pid, np.maximum(days, p.reg_start[pid]))
        _add(self.truth.counts, "gp_deficit_codings", int(len(pi) + len(r_pid)))
        _add(self.truth.counts, "gp_consultations", int(len(cp)))
        cols = {
            "practice_code": categorical(self.geo.practice_code, practice),
            "event_date": days,
            "snomed_code": categorical(
                np.concatenate([flat, ref.consultation_codes, ltc_labels]), codes
            ),
        }
        return self._rows(cols, pid, days)

    def _other_conditions(self, end: np.ndarray) -> tuple[np.ndarray, ...]:
        """Codes of conditions outside the eFI (ltc_codes.csv): cancer (all who die of cancer,
        plus an age-related incidence), palliative care before death, intellectual disability,
        pregnancy, cirrhosis, end-stage renal disease after CKD. First record date = onset;
        history before registration arrives with the registration like other codes."""
        p, rng, cal = self.p, self.rng, self.cal
        names = ["cancer", "palliative_care", "intellectual_disability", "pregnancy"]
        names += ["cirrhosis", "end_stage_renal_disease"]
        labels = np.array([self.ref.ltc_codes[nm] for nm in names])
        n = p.n
        age0 = (cal.start_day - p.dob) / DAYS_PER_YEAR
        out_pid, out_day, out_code = [], [], []

        def emit(who: np.ndarray, day: np.ndarray, code: int) -> None:
            keep = day < end[who]
            out_pid.append(who[keep])
            out_day.append(day[keep].astype(np.int64))
            out_code.append(np.full(int(keep.sum()), code))

        dead = np.flatnonzero(p.death_day >= 0)
        cancer_death = np.char.startswith(self.death_cause.labels, "C")[self.death_cause.codes]
        adult = p.dob + 18 * DAYS_PER_YEAR
        who = dead[cancer_death]
        emit(who, np.maximum(adult[who], p.death_day[who] - rng.integers(60, 1000, len(who))), 0)
        other = np.flatnonzero(rng.random(n) < np.clip(0.0012 * (age0 - 30), 0, 0.2))
        span = cal.end_day_excl - (cal.start_day - 5 * 365)
        onset = cal.start_day - 5 * 365 + np.floor(rng.random(len(other)) * span)
        emit(other, np.maximum(onset, adult[other]), 0)
        pall = dead[rng.random(len(dead)) < np.where(cancer_death, 0.7, 0.3)]
        emit(pall, p.death_day[pall] - rng.integers(14, 180, len(pall)), 1)
        idis = np.flatnonzero(rng.random(n) < 0.005)
        emit(idis, p.dob[idis] + 5 * 365, 2)
        women = np.flatnonzero(~p.male & (age0 >= 14) & (age0 < 42))
        preg = women[rng.random(len(women)) < 0.25]
        emit(preg, self.uniform_days(np.maximum(p.reg_start[preg], cal.start_day), end[preg]), 3)
        cirr = np.flatnonzero((age0 >= 40) & (rng.random(n) < 0.004))
        emit(cirr, cal.start_day - 5 * 365 + np.floor(rng.random(len(cirr)) * span), 4)
        ckd = DEFICITS.index(next(d for d in DEFICITS if d[0] == "chronic_kidney_disease"))
        has_ckd = np.flatnonzero(np.isfinite(p.deficit_onset[:, ckd]) & (rng.random(n) < 0.03))
        esrd = p.deficit_onset[has_ckd, ckd] + rng.integers(365, 8 * 365, len(has_ckd))
        emit(has_ckd, esrd, 5)
        pid = np.concatenate(out_pid)
        day = np.concatenate(out_day)
        code = np.concatenate(out_code)
        _add(self.truth.counts, "gp_other_condition_codings", len(pid))
        return pid, day, code, labels

    def prescriptions(self) -> FeedRows:
        p, rng, cal, ref = self.p, self.rng, self.cal, self.ref
        interval = self.scn.activity.prescription_interval_days
        end = np.minimum(p.end_excl, cal.end_day_excl)
        has_drug = ref.drug_code != ""
        ds = np.where(has_drug[None, :], p.drug_start, np.inf)
        pi, dj = np.nonzero(ds < end[:, None])
        s = ds[pi, dj].astype(np.int64)
        reg = p.reg_start[pi]
        first = np.where(
            s >= np.maximum(reg, cal.start_day),
            s,
            np.where(
                reg >= cal.start_day,
                reg,
                cal.start_day + np.floor(rng.random(len(pi)) * interval).astype(np.int64),
            ),
        )
        stop = end[pi]
        n_issue = np.maximum(0, -(-(stop - first) // interval))
        sel = np.repeat(np.arange(len(pi)), n_issue)
        k = np.arange(len(sel)) - np.repeat(np.cumsum(n_issue) - n_issue, n_issue)
        pid = pi[sel]
        slot = dj[sel]
        day = first[sel] + k * interval
        months = interval / (DAYS_PER_YEAR / 12)
        quantity = np.full(len(pid), int(round(interval / 28)) * 28, dtype=np.int32)
        cost = np.round(ref.drug_monthly_cost[slot] * months, 2)
        self.rx_pid, self.rx_day, self.rx_cost = pid, day, cost
        drug_labels, drug_index = np.unique(ref.drug_code, return_inverse=True)
        _add(self.truth.counts, "prescription_items", len(pid))
        cols = {
            "practice_code": categorical(self.geo.practice_code, self._practice_on(pid, day)),
            "issue_date": day,
            "bnf_code": categorical(drug_labels, drug_index[slot]),
            "bnf_chapter": ref.drug_chapter[slot].astype(np.int8),
            "quantity": quantity,
            "cost_gbp": cost,
        }
        return self._rows(cols, pid, day)

    def outpatients(self) -> FeedRows:
        rng, act = self.rng, self.scn.activity
        parts = []
        for yr in self.years:
            rate = (
                act.outpatient_base + act.outpatient_per_year_of_age * yr["age"] + 0.3 * yr["cat"]
            )
            parts.append(self.poisson_events(yr, rate))
        pid = np.concatenate([a for a, _ in parts])
        day = np.concatenate([b for _, b in parts])
        n = len(pid)
        status = categorical(
            ["5", "6", "3", "2", "4", "7"],
            rng.choice(6, size=n, p=[0.78, 0.04, 0.07, 0.05, 0.05, 0.01]),
        )
        self.op_pid, self.op_day, self.op_status = pid, day, status
        cols = {
            "provider_code": self._trust(pid),
            "appointment_date": day,
            "treatment_function_code": categorical(
                TREATMENT_FUNCTIONS, rng.integers(0, len(TREATMENT_FUNCTIONS), n)
            ),
            "first_attendance": rng.random(n) < 0.35,
            "attendance_status": status,
        }
        return self._rows(cols, pid, day)

    def community(self) -> FeedRows:
        p, rng, act = self.p, self.rng, self.scn.activity
        parts = []
        for yr in self.years:
            rate = (
                act.community_base
                * (1 + 2.5 * yr["cat"] + 1.5 * (yr["age"] >= 75))
                * np.exp(act.deprivation_per_quintile * yr["dep"])
            )
            parts.append(self.poisson_events(yr, rate))
        pid = np.concatenate([a for a, _ in parts])
        day = np.concatenate([b for _, b in parts])
        service = rng.choice(
            len(COMMUNITY_SERVICES), size=len(pid), p=[0.4, 0.2, 0.12, 0.18, 0.05, 0.05]
        )
        # Integrated frailty team: rapid-response contacts in the 12 months after enrolment.
        ft = self.scn.programmes.integrated_frailty_team
        treated = np.flatnonzero(self.ft_day >= 0)
        n_c = rng.poisson(ft.team_contacts, len(treated))
        sel = np.repeat(np.arange(len(treated)), n_c)
        t_pid = treated[sel]
        lo = self.ft_day[t_pid]
        hi = np.minimum(lo + 365, np.minimum(p.end_excl[t_pid], self.cal.end_day_excl))
        t_day = self.uniform_days(lo, np.maximum(hi, lo + 1))
        _add(self.truth.counts, "ft_team_contacts", len(t_pid))
        pid = np.concatenate([pid, t_pid])
        day = np.concatenate([day, t_day])
        service = categorical(COMMUNITY_SERVICES, np.concatenate([service, np.full(len(t_pid), 5)]))
        self.cm_pid, self.cm_day, self.cm_service = pid, day, service
        cols = {
            "contact_date": day,
            "service": service,
            "duration_minutes": (15 + 5 * rng.integers(0, 10, len(pid))).astype(np.int32),
        }
        return self._rows(cols, pid, day)

    def mental_health(self) -> FeedRows:
        rng, act = self.rng, self.scn.activity
        parts = []
        for yr in self.years:
            rate = act.mental_health_base * np.exp(2 * act.deprivation_per_quintile * yr["dep"])
            parts.append(self.poisson_events(yr, rate))
        pid = np.concatenate([a for a, _ in parts])
        day = np.concatenate([b for _, b in parts])
        team = categorical(
            MH_TEAMS, rng.choice(len(MH_TEAMS), size=len(pid), p=[0.4, 0.08, 0.17, 0.3, 0.05])
        )
        self.mh_pid, self.mh_day, self.mh_team = pid, day, team
        return self._rows({"contact_date": day, "team_type": team}, pid, day)

    def out_of_hours(self) -> FeedRows:
        rng, act = self.rng, self.scn.activity
        parts = []
        for yr in self.years:
            rate = (
                act.out_of_hours_base
                * (1 + 0.8 * yr["cat"])
                * np.exp(act.deprivation_per_quintile * yr["dep"])
            )
            parts.append(self.poisson_events(yr, rate))
        pid = np.concatenate([a for a, _ in parts])
        day = np.concatenate([b for _, b in parts])
        kind = categorical(OOH_TYPES, rng.choice(len(OOH_TYPES), size=len(pid), p=[0.6, 0.3, 0.1]))
        self.ooh_pid, self.ooh_day, self.ooh_type = pid, day, kind
        return self._rows({"contact_date": day, "contact_type": kind}, pid, day)

    def social_care(self) -> FeedRows:
        p, rng, cal, act = self.p, self.rng, self.cal, self.scn.activity
        pid_parts, start_parts, kind_parts = [], [], []
        for yr in self.years:
            idx, age, cat = yr["idx"], yr["age"], yr["cat"]
            old = age >= 65
            depf = np.exp(act.deprivation_per_quintile * yr["dep"])
            h_home = act.home_care_start_base * np.exp(0.9 * cat + 0.04 * (age - 80)) * depf
            h_care = act.care_home_start_base * np.exp(1.0 * cat + 0.07 * (age - 80)) * depf
            h_home = np.where(old, h_home, h_home * 0.05)
            h_care = np.where(old, h_care, 0.0)
            for hazard, kind in ((h_home, 0), (h_care, 1)):
                starts = rng.random(len(idx)) < -np.expm1(-hazard * yr["exposure"])
                sel = np.flatnonzero(starts)
                pid_parts.append(idx[sel])
                start_parts.append(self.uniform_days(yr["start"][sel], yr["end"][sel]))
                kind_parts.append(np.full(len(sel), kind))
                if yr["k"] == 0:  # packages already open at the period start (last 2 years)
                    prevalent = (yr["start"] == yr["y0"]) & (
                        rng.random(len(idx)) < -np.expm1(-hazard * 2.0)
                    )
                    sel = np.flatnonzero(prevalent)
                    back = 1 + np.floor(rng.random(len(sel)) * 2 * DAYS_PER_YEAR).astype(np.int64)
                    pid_parts.append(idx[sel])
                    start_parts.append(yr["y0"] - back)
                    kind_parts.append(np.full(len(sel), kind))
        pid = np.concatenate(pid_parts)
        start = np.concatenate(start_parts)
        kind = np.concatenate(kind_parts)
        n = len(pid)
        sc_labels = np.array(["home_care", "day_care", "direct_payment", "residential", "nursing"])
        code = np.where(
            kind == 1,
            np.where(rng.random(n) < 0.6, 3, 4),
            rng.choice(3, n, p=[0.85, 0.07, 0.08]),
        )
        service = categorical(sc_labels, code)
        mean = np.array([320.0, 160.0, 300.0, 800.0, 1000.0])[code]
        weekly = np.round(mean * rng.gamma(16.0, 1 / 16.0, n), 2)
        duration = np.where(kind == 1, 4000, np.floor(rng.exponential(540.0, n)).astype(np.int64))
        stop = start + duration
        end_obs = p.end_excl[pid] - 1
        end = np.minimum(stop, end_obs)
        end = np.where(end >= cal.end_day_excl, NULL_DAY, end)
        self.sc_pid, self.sc_start, self.sc_end, self.sc_weekly = pid, start, end, weekly
        _add(self.truth.counts, "social_care_packages", n)
        cols = {
            "start_date": start,
            "end_date": end,
            "service_type": service,
            "weekly_cost_gbp": weekly,
        }
        return self._episode_rows(cols, pid, start, end, "end_date", "social_care_packages")

    def hospice(self) -> FeedRows:
        p, rng = self.p, self.rng
        dead = np.flatnonzero(p.death_day >= 0)
        cancer = np.char.startswith(self.death_cause.labels, "C")[self.death_cause.codes]
        gets = rng.random(len(dead)) < np.where(cancer, 0.45, 0.12)
        pid = dead[gets]
        death = p.death_day[pid]
        start = np.maximum(death - rng.integers(5, 120, len(pid)), p.reg_start[pid])
        setting = categorical(
            ["inpatient", "community", "day"], rng.choice(3, len(pid), p=[0.35, 0.5, 0.15])
        )
        self.hs_pid, self.hs_start, self.hs_end, self.hs_setting = pid, start, death, setting
        cols = {"start_date": start, "end_date": death.copy(), "setting": setting}
        return self._episode_rows(cols, pid, start, death.copy(), "end_date", "hospice_episodes")

    def enrolments(self) -> FeedRows:
        ft = np.flatnonzero(self.ft_day >= 0)
        sw = np.flatnonzero(self.sw_day >= 0)
        pid = np.concatenate([ft, sw])
        day = np.concatenate([self.ft_day[ft], self.sw_day[sw]])
        cols = {
            "programme": categorical(
                ["integrated_frailty_team", "safe_and_well_visit"],
                np.concatenate([np.zeros(len(ft)), np.ones(len(sw))]),
            ),
            "enrolment_date": day,
            "provider": categorical(
                ["Kent Community Health NHS Foundation Trust", "Kent Fire and Rescue Service"],
                np.concatenate([np.zeros(len(ft)), np.ones(len(sw))]),
            ),
        }
        return self._rows(cols, pid, day)

    # -------------------------------------------------------------------- cost truth
    def cost_truth(self) -> None:
        """Annual cost per person present at the cost reference date R (12 months from R),
        with the documented unit costs, plus the frailty team's cost effect."""
        p, cal, uc = self.p, self.cal, self.ref.unit_cost
        r_index = min(3, cal.n_years - 1)
        R = int(cal.year_bounds[r_index])
        R1 = R + 365
        present = (p.reg_start <= R) & (p.end_excl > R) & (p.dob <= R)
        cost = np.zeros(p.n)

        def add(pid: np.ndarray, day: np.ndarray, value: np.ndarray | float) -> None:
            m = (day >= R) & (day < R1)
            v = np.broadcast_to(np.asarray(value, dtype=np.float64), pid.shape)
            cost[:] += np.bincount(pid[m], weights=v[m], minlength=p.n)

        add(self.gp_consult_pid, self.gp_consult_day, uc[("gp", "consultation")])
        add(self.rx_pid, self.rx_day, self.rx_cost)
        spell = uc[("acute_emergency", "spell")] + uc[("acute_emergency", "excess_bed_day")] * (
            np.maximum(self.em_los - EMERGENCY_TRIM_DAYS, 0)
        )
        add(self.em_rows_pid, self.em_rows_day, spell)
        add(self.el_pid, self.el_day, uc[("acute_elective", "spell")])
        add(self.ae_pid_all, self.ae_day_all, uc[("ae", "attendance")])
        attended = np.isin(self.op_status.values, ["5", "6"])
        add(
            self.op_pid[attended], self.op_day[attended], uc[("outpatient", "attended_appointment")]
        )
        add(self.cm_pid, self.cm_day, _lookup(uc, "community", self.cm_service))
        add(self.mh_pid, self.mh_day, _lookup(uc, "mental_health", self.mh_team))
        add(self.ooh_pid, self.ooh_day, _lookup(uc, "out_of_hours", self.ooh_type))
        sc_end = np.where(self.sc_end < NULL_DAY // 2 + 1, cal.end_day_excl - 1, self.sc_end)
        days = np.clip(np.minimum(sc_end + 1, R1) - np.maximum(self.sc_start, R), 0, None)
        cost += np.bincount(self.sc_pid, weights=self.sc_weekly * days / 7.0, minlength=p.n)
        days = np.clip(np.minimum(self.hs_end + 1, R1) - np.maximum(self.hs_start, R), 0, None)
        hospice = _lookup(uc, "hospice", self.hs_setting) * days
        cost += np.bincount(self.hs_pid, weights=hospice, minlength=p.n)
        idx = np.flatnonzero(present)
        c = cost[idx]
        self.truth.cost_histogram = np.stack(
            [
                np.bincount(cost_bin(c), minlength=COST_BINS).astype(np.float64),
                np.bincount(cost_bin(c), weights=c, minlength=COST_BINS),
            ]
        )
        older = (R - p.dob[idx]) / DAYS_PER_YEAR >= 55
        q = (5 - p.dep[idx][older]).astype(np.int64) - 1
        self.truth.cost_55_by_quintile = np.stack(
            [
                np.bincount(q, minlength=5).astype(np.float64),
                np.bincount(q, weights=c[older], minlength=5),
            ]
        )
        # Frailty team cost effect: team contacts added, removed spells (and their A&E) saved.
        removed = self.ft_removed
        r_pid, r_day = self.em_pid[removed], self.em_day[removed]
        _, r_cat, _ = _efi_subset(p, r_pid, r_day)
        r_age = (r_day - p.dob[r_pid]) / DAYS_PER_YEAR
        r_mean = 1.5 + 0.08 * np.maximum(r_age - 40, 0) + 1.2 * r_cat
        r_los = self.rng.negative_binomial(1.2, 1.2 / (1.2 + r_mean))
        saved = (
            uc[("acute_emergency", "spell")]
            + uc[("acute_emergency", "excess_bed_day")] * np.maximum(r_los - EMERGENCY_TRIM_DAYS, 0)
            + 0.7 * uc[("ae", "attendance")]
        ).sum()
        added = self.truth.counts.get("ft_team_contacts", 0) * uc[("community", "rapid_response")]
        _add(self.truth.counts, "ft_cost_saved_gbp", float(saved))
        _add(self.truth.counts, "ft_cost_added_gbp", float(added))


def _lookup(uc: dict[tuple[str, str], float], line: str, activity: Cat) -> np.ndarray:
    per_label = np.array([uc[(line, str(label))] for label in activity.labels])
    return per_label[activity.codes]


# ------------------------------------------------------------------------------ finishing
@dataclass
class FinishedFeed:
    """One feed of one chunk, ready to write: rows sorted by extract month."""

    table: pa.Table
    month: np.ndarray  # extract month (relative) of each row, ascending
    stats: dict[str, int]


def _to_arrow(name: str, values: np.ndarray, dtype: pa.DataType) -> pa.Array:
    if pa.types.is_date32(dtype):
        v = np.asarray(values, dtype=np.int64)
        null = v <= NULL_DAY // 2
        return pa.array(np.where(null, 0, v).astype(np.int32), type=pa.date32(), mask=null)
    if isinstance(values, Cat):
        # Kept dictionary-encoded: the Parquet writer stores it as a dictionary-encoded string
        # column without materialising the strings (files are written without the Arrow schema,
        # so readers see plain strings, exactly the data dictionary's schema).
        return pa.DictionaryArray.from_arrays(
            pa.array(values.codes.astype(np.int32)), pa.array(values.labels.astype(str))
        )
    if pa.types.is_string(dtype):
        return pa.array(np.asarray(values).astype(str), type=pa.string())
    if pa.types.is_int64(dtype) and name == "uprn":
        return pa.array(np.asarray(values, dtype=np.int64))
    return pa.array(np.asarray(values), type=dtype)


def _month_ends(cal: Calendar) -> np.ndarray:
    """Last day of each extract month (relative month index -> day)."""
    first_days = (
        np.arange(cal.first_month + 1, cal.first_month + cal.n_months + 1)
        .astype("datetime64[M]")
        .astype("datetime64[D]")
        .astype(np.int64)
    )
    return first_days - 1


def finish_feed(
    feed: str,
    rows: FeedRows,
    *,
    rng: np.random.Generator,
    chunk: int,
    nhs: np.ndarray,
    cal: Calendar,
    scn: Scenario,
) -> FinishedFeed:
    """Drop rows not yet delivered, add corrections, injected errors and NHS number quality
    problems, and build the Arrow table (schema order) sorted by extract month."""
    dq = scn.data_quality
    schema = RAW_FEEDS[feed].arrow_schema()
    stats: dict[str, int] = {}
    keep = rows.month < cal.n_months
    stats["not_yet_delivered"] = int((~keep).sum())
    cols = {k: v[keep] for k, v in rows.columns.items()}
    pid, month, serial = rows.pid[keep], rows.month[keep], rows.serial[keep]
    n = len(pid)
    clean = np.zeros(n, dtype=bool)  # rows whose NHS number must stay valid

    # Corrections: inpatient spells re-sent 1-3 months later with a corrected value.
    if feed == "inpatient_spells" and n:
        later = rng.integers(1, 4, n)
        cand = np.flatnonzero(month + later < cal.n_months)
        pick = cand[rng.random(len(cand)) < dq.correction_rate]
        corrected = {k: v[pick].copy() for k, v in cols.items()}
        wrong_diag = rng.random(len(pick)) < 0.5
        shift = rng.integers(1, 4, len(pick))
        # A wrong (later) discharge date must still lie before the end of the extract month the
        # first version is sent in (possible only with a 0-month lag): else the diagnosis is wrong.
        month_end = _month_ends(cal)
        wrong_diag |= cols["discharge_date"][pick] + shift > month_end[month[pick]]
        cols["primary_diagnosis_icd10"] = cols["primary_diagnosis_icd10"].set(
            pick[wrong_diag], "R69X"
        )
        wd = pick[~wrong_diag]
        cols["discharge_date"][wd] = cols["discharge_date"][wd] + shift[~wrong_diag]
        cols["los_days"][wd] = cols["los_days"][wd] + shift[~wrong_diag]
        cols = {k: _concat_values([v, corrected[k]]) for k, v in cols.items()}
        pid = np.concatenate([pid, pid[pick]])
        month = np.concatenate([month, month[pick] + later[pick]])
        serial = np.concatenate([serial, serial[pick]])
        clean = np.concatenate([clean, np.ones(len(pick), dtype=bool)])
        clean[pick] = True
        stats["corrections"] = len(pick)
        stats["corrections_primary_diagnosis"] = int(wrong_diag.sum())
        stats["corrections_discharge_date"] = int((~wrong_diag).sum())
        n = len(pid)

    # Injected errors: extra malformed rows (new record ids) a loader must quarantine.
    error_kind = {
        "prescriptions": ("negative_cost", "cost_gbp"),
        "inpatient_spells": ("discharge_before_admission", "discharge_date"),
        "gp_events": ("date_after_extract_month", "event_date"),
        "outpatient_appointments": ("unknown_attendance_status", "attendance_status"),
        "ae_attendances": ("unknown_department_type", "department_type"),
        "community_contacts": ("unknown_service", "service"),
    }.get(feed)
    if error_kind and n:
        ok_rows = np.flatnonzero(~clean)
        pick = ok_rows[rng.random(len(ok_rows)) < dq.injected_error_rate]
        bad = {k: v[pick].copy() for k, v in cols.items()}
        kind, column = error_kind
        if kind == "negative_cost":
            bad[column] = -np.abs(bad[column]) - 0.01
        elif kind == "discharge_before_admission":
            back = rng.integers(1, 6, len(pick))
            bad["discharge_date"] = bad["admission_date"] - back
            bad["los_days"] = (-back).astype(np.int32)
        elif kind == "date_after_extract_month":
            bad[column] = _month_ends(cal)[month[pick]] + 1 + rng.integers(30, 400, len(pick))
        elif kind in ("unknown_attendance_status", "unknown_department_type"):
            bad[column] = bad[column].set(np.arange(len(pick)), "9")
        else:
            bad[column] = bad[column].set(np.arange(len(pick)), "chiropody")
        cols = {k: _concat_values([v, bad[k]]) for k, v in cols.items()}
        pid = np.concatenate([pid, pid[pick]])
        month = np.concatenate([month, month[pick]])
        serial = np.concatenate([serial, 500_000_000 + np.arange(len(pick), dtype=np.int64)])
        clean = np.concatenate([clean, np.ones(len(pick), dtype=bool)])
        stats[f"injected_{kind}"] = len(pick)
        n = len(pid)

    # NHS numbers: the person's, with quality problems in a small share of rows.
    number = nhs[pid]
    # Final NHS number text = take() from [all numbers as text, reformatted subsets]; one
    # gather instead of element-wise conditionals over every row.
    text_index = np.arange(n, dtype=np.int64)
    text_null = np.zeros(n, dtype=bool)
    pieces = []
    if feed not in CLEAN_NHS_FEEDS and n:
        u = rng.random(n)
        u[clean] = 2.0  # never touched
        cuts = np.cumsum(
            [dq.nhs_missing, dq.nhs_bad_check_digit, dq.nhs_nine_digits, dq.nhs_unknown]
            + [dq.nhs_spaces, dq.nhs_dashes]
        )
        kind = np.searchsorted(cuts, u, side="right")  # 0..5 problems, 6 none
        values = number.copy()
        wrong = np.flatnonzero(kind == 1)
        values[wrong] = (
            number[wrong] // 10 * 10 + (number[wrong] % 10 + rng.integers(1, 10, len(wrong))) % 10
        )
        unknown = np.flatnonzero(kind == 3)
        values[unknown] = unknown_nhs_numbers(rng, len(unknown))
        number = values
        offset = n
        for k, how in ((2, "nine"), (4, " "), (5, "-")):
            rows_k = np.flatnonzero(kind == k)
            sub = pa.array(number[rows_k]).cast(pa.string())
            if how == "nine":
                sub = pc.utf8_slice_codeunits(sub, 0, 9)
            else:
                parts = [pc.utf8_slice_codeunits(sub, a, b) for a, b in ((0, 3), (3, 6), (6, 10))]
                sub = pc.binary_join_element_wise(*parts, how)
            pieces.append(sub)
            text_index[rows_k] = offset + np.arange(len(rows_k))
            offset += len(rows_k)
        text_null = kind == 0
        names = [
            "nhs_missing",
            "nhs_invalid_check_digit",
            "nhs_nine_digits",
            "nhs_unknown_to_register",
            "nhs_formatted_with_spaces",
            "nhs_formatted_with_dashes",
        ]
        counts = np.bincount(kind, minlength=7)
        stats |= {name: int(counts[i]) for i, name in enumerate(names)}
    stats["rows"] = n

    # Sort by extract month (stable), build the table in schema order.
    order = np.argsort(month, kind="stable")
    serial_text = pa.array(chunk * 1_000_000_000 + serial[order]).cast(pa.string())
    arrays = []
    for f in schema:
        if f.name == "record_id":
            arrays.append(pc.binary_join_element_wise(RECORD_PREFIX[feed], serial_text, ""))
        elif f.name == "nhs_number":
            combined = pa.concat_arrays([pa.array(number).cast(pa.string()), *pieces])
            arrays.append(combined.take(pa.array(text_index[order], mask=text_null[order])))
        elif f.name == "extract_month":
            labels = pa.array([cal.month_label(i) for i in range(cal.n_months)])
            arrays.append(
                pa.DictionaryArray.from_arrays(pa.array(month[order].astype(np.int32)), labels)
            )
        else:
            arrays.append(_to_arrow(f.name, cols[f.name][order], f.type))
    write_schema = pa.schema(
        [pa.field(f.name, a.type, nullable=f.nullable) for f, a in zip(schema, arrays, strict=True)]
    )
    table = pa.Table.from_arrays(arrays, schema=write_schema)
    return FinishedFeed(table, month[order], stats)


def simulate_chunk(
    scn: Scenario, geo: Geography, cal: Calendar, ref: Reference, chunk: int
) -> tuple[dict[str, FinishedFeed], ChunkTruth]:
    """Simulate chunk ``chunk`` of the scenario: people, activity, finished feed tables.

    The chunk's random numbers come from ``SeedSequence(seed, spawn_key=(chunk,))``, so a
    chunk's output depends only on the scenario (including its fixed chunk size), never on
    how many workers run or in which order.
    """
    from kidresearch.synth.population import simulate_people

    size = scn.population.chunk_size
    start = chunk * size
    stop = min(scn.population.people, start + size)
    rng = np.random.default_rng(np.random.SeedSequence(scn.seed, spawn_key=(chunk,)))
    people = simulate_people(scn, geo, cal, rng, start, stop)
    sim = ChunkSimulator(scn, geo, cal, ref, rng, people, chunk)
    rows, truth = sim.build()
    nhs = person_nhs_numbers(people.global_index)
    finished = {
        feed: finish_feed(feed, r, rng=rng, chunk=chunk, nhs=nhs, cal=cal, scn=scn)
        for feed, r in rows.items()
    }
    # Population-level truth of the chunk (eFI shares at each model-year start, etc.).
    counts = truth.counts
    for k, day in enumerate(cal.year_bounds[:-1]):
        age = people.age_at(int(day))
        ok = (age >= 65) & (age < 95) & (people.reg_start <= day) & (people.end_excl > day)
        _, cat, _ = people.efi_at(int(day))
        for c in range(4):
            _add(counts, f"efi_year{k}_cat{c}", int((ok & (cat == c)).sum()))
    _add(counts, "people", people.n)
    _add(counts, "moved_out", int(people.moved_out.sum()))
    _add(counts, "born", int((people.dob >= cal.start_day).sum()))
    _add(
        counts,
        "moved_in",
        int(((people.reg_start >= cal.start_day) & (people.dob < cal.start_day)).sum()),
    )
    _add(counts, "aged_65_plus_at_start", int((people.age_at(cal.start_day) >= 65).sum()))
    for feed, f in finished.items():
        for key, value in f.stats.items():
            _add(counts, f"feed:{feed}:{key}", value)
    return finished, truth
