"""The synthetic population: geography (LSOAs, practices) and people, one chunk at a time.

Everything here is vectorised over the people of a chunk (numpy); no Python loop runs over
people. Dates are integer days since 1970-01-01.

Model summary (the exact parameters live in the scenario and are copied into ``truth.json``):

* **Geography.** LSOAs of about ``lsoa_residents`` people across Kent's 12 districts (weights
  roughly the districts' populations), each with a synthetic IMD score around its district's
  mean, the national decile read off approximate IMD 2019 cut-points, and a centroid near the
  district's. Practices sit in districts; people register with a practice in their district.
* **People.** Ages follow an English county's age structure (ONS mid-year estimate shape, about
  20% aged 65+); households of 1-5 people share an LSOA, a UPRN and a practice. Some people are
  born, move in, move out, change practice or address during the period.
* **Deficits (eFI).** For deficit d, P(present at age a, time t) =
  logistic(logit(p80_d) + shift + beta_d (a - 80)/10 + gamma (dep - 2) + lambda z + trend
  (year(t) - reference_year)), with z a person-level N(0, 1) frailty factor and dep = 5 -
  IMD quintile. Each person draws one uniform u_d per deficit and the deficit starts when that
  probability first exceeds u_d, a closed-form onset date, so deficits accumulate monotonically
  and the cross-sectional prevalence is exactly the logistic above at every age and date.
* **Drugs.** Each deficit brings one associated chronic drug with probability ``q_d`` from its
  onset; two background drugs (statin, PPI) follow the same onset model. A drug once started is
  issued every ``prescription_interval_days`` while the person is registered, so polypharmacy
  (5+ distinct chemical substances, BNF chapters 1-15, in the last 12 months) is exactly
  ``drugs started >= 5``.
* **Deaths.** Per model year (12 months from the period start), a constant yearly hazard
  exp(a + b (age - 80) + c male) x HR[eFI category], with age and category at the start of the
  model year (or at registration for later entrants).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kidresearch.schema import KENT_DISTRICTS
from kidresearch.synth.scenario import Scenario

DAYS_PER_YEAR = 365.25
EPOCH_YEAR = 1970

# (district, share of Kent's population, mean IMD 2019 score, centroid lat, centroid lon).
# Shares from ONS mid-2021 estimates (rounded); mean scores and centroids approximate
# (indicative: they only shape the synthetic geography).
DISTRICTS: tuple[tuple[str, float, float, float, float], ...] = (
    ("Ashford", 0.083, 17.0, 51.146, 0.875),
    ("Canterbury", 0.098, 18.0, 51.280, 1.080),
    ("Dartford", 0.073, 16.0, 51.440, 0.220),
    ("Dover", 0.073, 22.0, 51.130, 1.310),
    ("Folkestone and Hythe", 0.069, 22.0, 51.080, 1.170),
    ("Gravesham", 0.067, 20.0, 51.440, 0.370),
    ("Maidstone", 0.110, 16.0, 51.270, 0.520),
    ("Sevenoaks", 0.076, 11.0, 51.270, 0.190),
    ("Swale", 0.095, 25.0, 51.340, 0.730),
    ("Thanet", 0.088, 29.0, 51.360, 1.380),
    ("Tonbridge and Malling", 0.083, 12.0, 51.290, 0.360),
    ("Tunbridge Wells", 0.073, 11.0, 51.130, 0.260),
)
assert tuple(d[0] for d in DISTRICTS) == KENT_DISTRICTS

# Approximate IMD 2019 national score cut-points between deciles 1|2, 2|3, ..., 9|10
# (indicative; the English Indices of Deprivation 2019 file gives the exact ranks).
IMD_DECILE_CUTS = np.array([45.0, 34.2, 27.8, 22.9, 18.8, 15.3, 12.3, 9.7, 7.2])

# Age structure: 5-year bands 0-4 ... 95-99 (% of population), England/Kent mid-year estimate
# shape with about 20% aged 65+.
AGE_BAND_PERCENT = np.array(
    [5.3, 5.8, 6.0, 5.7, 5.4, 5.9, 6.3, 6.3, 6.0, 6.2, 6.9, 6.9, 6.1, 5.3, 5.4, 4.2, 2.9, 1.8]
    + [0.8, 0.2]
)
HOUSEHOLD_SIZE_P = np.array([0.30, 0.35, 0.15, 0.13, 0.07])  # sizes 1..5

# The 35 coded eFI deficits in efi_deficits.csv order (deficit_id 1-36 without 26,
# polypharmacy): (name, prevalence at 80 for an average person, log-odds slope per decade of
# age, probability of an associated chronic drug). Prevalences are shaped on UK primary-care
# figures and then shifted as a block (Morbidity.shift_log_odds) to the published eFI category
# shares; they are calibration parameters, not estimates.
DEFICITS: tuple[tuple[str, float, float, float], ...] = (
    ("activity_limitation", 0.10, 0.7, 0.0),
    ("anaemia_and_haematinic_deficiency", 0.22, 0.6, 0.5),
    ("arthritis", 0.50, 0.6, 0.7),
    ("atrial_fibrillation", 0.14, 0.9, 0.85),
    ("cerebrovascular_disease", 0.11, 0.8, 0.8),
    ("chronic_kidney_disease", 0.28, 1.0, 0.6),
    ("diabetes", 0.19, 0.5, 0.85),
    ("dizziness", 0.22, 0.5, 0.3),
    ("dyspnoea", 0.22, 0.6, 0.5),
    ("falls", 0.18, 1.0, 0.4),
    ("foot_problems", 0.14, 0.8, 0.0),
    ("fragility_fracture", 0.11, 0.8, 0.6),
    ("hearing_impairment", 0.28, 1.0, 0.0),
    ("heart_failure", 0.08, 1.0, 0.9),
    ("heart_valve_disease", 0.07, 0.9, 0.4),
    ("housebound", 0.06, 1.2, 0.0),
    ("hypertension", 0.58, 0.8, 0.9),
    ("hypotension_syncope", 0.11, 0.7, 0.2),
    ("ischaemic_heart_disease", 0.19, 0.7, 0.85),
    ("memory_and_cognitive_problems", 0.10, 1.3, 0.5),
    ("mobility_and_transfer_problems", 0.10, 1.1, 0.4),
    ("osteoporosis", 0.13, 0.9, 0.7),
    ("parkinsonism_and_tremor", 0.04, 0.9, 0.8),
    ("peptic_ulcer", 0.09, 0.4, 0.8),
    ("peripheral_vascular_disease", 0.05, 0.8, 0.7),
    ("requirement_for_care", 0.07, 1.2, 0.0),
    ("respiratory_disease", 0.26, 0.4, 0.8),
    ("skin_ulcer", 0.07, 0.9, 0.5),
    ("sleep_disturbance", 0.14, 0.3, 0.4),
    ("social_vulnerability", 0.19, 0.6, 0.3),
    ("thyroid_disease", 0.12, 0.5, 0.9),
    ("urinary_incontinence", 0.13, 0.8, 0.5),
    ("urinary_system_disease", 0.17, 0.7, 0.5),
    ("visual_impairment", 0.33, 1.0, 0.3),
    ("weight_loss_and_anorexia", 0.08, 0.9, 0.0),
)
N_DEFICITS = len(DEFICITS)
# Background chronic drugs without a deficit: (indication label, p80, slope per decade).
BACKGROUND_DRUGS: tuple[tuple[str, float, float], ...] = (
    ("statin", 0.40, 1.2),
    ("ppi", 0.22, 0.6),
)
MIN_ONSET_AGE_YEARS = 16.0


def logit(p: np.ndarray | float) -> np.ndarray | float:
    return np.log(p) - np.log1p(-p)


def expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def month_start_days(year: int, month: int) -> int:
    """Days since 1970-01-01 of the first day of a month."""
    return int(np.datetime64(f"{year:04d}-{month:02d}-01", "D").astype(np.int64))


def days_to_month_index(days: np.ndarray) -> np.ndarray:
    """Months since 1970-01 of each day number (vectorised)."""
    return days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)


@dataclass(frozen=True)
class Calendar:
    """The period's month grid and model-year boundaries (all in days since 1970-01-01)."""

    start_day: int
    end_day_excl: int
    first_month: int  # months since 1970-01 of the first period month
    n_months: int
    year_bounds: np.ndarray  # model-year boundaries: start, +12 months, ..., end (exclusive)

    @classmethod
    def from_scenario(cls, scn: Scenario) -> Calendar:
        sy, sm = (int(x) for x in scn.period.start.split("-"))
        first_month = (sy - EPOCH_YEAR) * 12 + sm - 1
        n_months = scn.period.months
        month_days = (
            np.arange(first_month, first_month + n_months + 1)
            .astype("datetime64[M]")
            .astype("datetime64[D]")
            .astype(np.int64)
        )
        bounds = month_days[::12]
        if bounds[-1] != month_days[-1]:
            bounds = np.append(bounds, month_days[-1])
        return cls(
            start_day=int(month_days[0]),
            end_day_excl=int(month_days[-1]),
            first_month=first_month,
            n_months=n_months,
            year_bounds=bounds,
        )

    @property
    def n_years(self) -> int:
        return len(self.year_bounds) - 1

    def month_label(self, index: int) -> str:
        m = self.first_month + index
        return f"{EPOCH_YEAR + m // 12:04d}-{m % 12 + 1:02d}"

    def iso(self, day: int) -> str:
        return str(np.datetime64(int(day), "D"))


@dataclass(frozen=True)
class Geography:
    """LSOAs and practices (shared by all chunks; drawn from the scenario seed)."""

    lsoa_code: np.ndarray
    lsoa_district: np.ndarray  # index into DISTRICTS
    lsoa_imd_score: np.ndarray
    lsoa_imd_decile: np.ndarray
    lsoa_imd_quintile: np.ndarray
    lsoa_lat: np.ndarray
    lsoa_lon: np.ndarray
    practice_code: np.ndarray
    practice_district: np.ndarray
    practice_lsoa: np.ndarray
    practice_lat: np.ndarray
    practice_lon: np.ndarray
    practice_weight: np.ndarray  # relative list size
    practice_effect: np.ndarray  # emergency-admission random effect (log-odds)
    practice_acsc: np.ndarray  # bool: excess ACSC admissions

    @property
    def n_lsoas(self) -> int:
        return len(self.lsoa_code)

    @property
    def n_practices(self) -> int:
        return len(self.practice_code)


def make_geography(scn: Scenario) -> Geography:
    """Draw LSOAs and practices from the scenario seed (independent of the chunking)."""
    rng = np.random.default_rng(np.random.SeedSequence(scn.seed, spawn_key=(10**6,)))
    pop = scn.population
    n_lsoa = max(12, round(pop.people / pop.lsoa_residents))
    shares = np.array([d[1] for d in DISTRICTS])
    shares = shares / shares.sum()
    # Every district gets at least one LSOA; the rest follow the population shares.
    counts = 1 + np.floor(shares * (n_lsoa - 12)).astype(int)
    counts[np.argsort(-(shares * (n_lsoa - 12)) % 1)[: n_lsoa - counts.sum()]] += 1
    lsoa_district = np.repeat(np.arange(12), counts)
    mean_score = np.array([d[2] for d in DISTRICTS])[lsoa_district]
    score = np.round(mean_score * np.exp(rng.normal(-0.08, 0.45, n_lsoa)), 3)
    decile = (1 + (score < IMD_DECILE_CUTS[:, None]).sum(axis=0)).astype(np.int8)
    quintile = ((decile + 1) // 2).astype(np.int8)
    lat0 = np.array([d[3] for d in DISTRICTS])[lsoa_district]
    lon0 = np.array([d[4] for d in DISTRICTS])[lsoa_district]
    lat = np.clip(np.round(lat0 + rng.normal(0, 0.035, n_lsoa), 5), 50.9, 51.5)
    lon = np.clip(np.round(lon0 + rng.normal(0, 0.05, n_lsoa), 5), 0.0, 1.45)
    lsoa_code = np.array([f"E01{24000 + i:06d}" for i in range(n_lsoa)])

    n_prac = pop.practices
    district_of_practice = np.sort(
        rng.choice(12, size=n_prac, p=shares) if n_prac >= 12 else rng.choice(12, n_prac, False)
    )
    if n_prac >= 12:
        district_of_practice[:12] = np.arange(12)  # every district has a practice
        district_of_practice = np.sort(district_of_practice)
    prac_lsoa = np.empty(n_prac, dtype=np.int64)
    for d in range(12):  # 12 districts, not people
        idx = np.flatnonzero(district_of_practice == d)
        pool = np.flatnonzero(lsoa_district == d)
        prac_lsoa[idx] = rng.choice(pool, size=len(idx))
    weight = np.exp(rng.normal(0, 0.45, n_prac))
    effect = rng.normal(0, scn.emergency.practice_sd, n_prac)
    n_acsc = round(scn.acsc.practice_share * n_prac)
    if scn.acsc.practice_share > 0:
        n_acsc = max(1, n_acsc)
    acsc = np.zeros(n_prac, dtype=bool)
    acsc[rng.choice(n_prac, size=n_acsc, replace=False)] = True
    return Geography(
        lsoa_code=lsoa_code,
        lsoa_district=lsoa_district,
        lsoa_imd_score=score,
        lsoa_imd_decile=decile,
        lsoa_imd_quintile=quintile,
        lsoa_lat=lat,
        lsoa_lon=lon,
        practice_code=np.array([f"G8{1000 + 7 * i:04d}" for i in range(n_prac)]),
        practice_district=district_of_practice,
        practice_lsoa=prac_lsoa,
        practice_lat=np.round(lat[prac_lsoa] + rng.normal(0, 0.004, n_prac), 5),
        practice_lon=np.round(lon[prac_lsoa] + rng.normal(0, 0.004, n_prac), 5),
        practice_weight=weight,
        practice_effect=effect,
        practice_acsc=acsc,
    )


@dataclass
class People:
    """The people of one chunk: demographics, registration, deficits, drugs, death."""

    global_index: np.ndarray
    dob: np.ndarray
    male: np.ndarray
    lsoa: np.ndarray
    dep: np.ndarray  # 5 - IMD quintile: 0 least deprived quintile ... 4 most deprived
    uprn: np.ndarray
    household_size: np.ndarray
    practice: np.ndarray  # practice at registration start
    reg_start: np.ndarray
    exit_excl: np.ndarray  # first day not registered because of a move out (or period end)
    change_day: np.ndarray  # day of practice/address change (or -1)
    change_kind: np.ndarray  # 0 none, 1 practice, 2 address
    new_practice: np.ndarray
    new_uprn: np.ndarray
    frailty_z: np.ndarray
    deficit_onset: np.ndarray  # (n, 35) day of onset (float; may be beyond the period)
    drug_start: np.ndarray  # (n, 35 + background) day the drug starts, inf if never
    death_day: np.ndarray  # day of death or -1
    moved_out: np.ndarray  # bool: left Kent during the period

    @property
    def n(self) -> int:
        return len(self.dob)

    @property
    def end_excl(self) -> np.ndarray:
        """First day not observed: the day after death, the move-out, or the period end."""
        return np.where(self.death_day >= 0, self.death_day + 1, self.exit_excl)

    def age_at(self, day: np.ndarray | int) -> np.ndarray:
        return (np.asarray(day) - self.dob) / DAYS_PER_YEAR

    def practice_at(self, day: np.ndarray | int) -> np.ndarray:
        changed = (self.change_kind == 1) & (self.change_day >= 0) & (self.change_day <= day)
        return np.where(changed, self.new_practice, self.practice)

    def deficit_count_at(self, day: np.ndarray | int) -> np.ndarray:
        day = np.asarray(day)
        d = day[:, None] if day.ndim else day
        return (self.deficit_onset <= np.asarray(d, dtype=np.float32)).sum(axis=1)

    def drug_count_at(self, day: np.ndarray | int) -> np.ndarray:
        day = np.asarray(day)
        d = day[:, None] if day.ndim else day
        return (self.drug_start <= np.asarray(d, dtype=np.float32)).sum(axis=1)

    def efi_at(self, day: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(eFI count incl. polypharmacy, category 0-3, polypharmacy bool) at a day."""
        poly = self.drug_count_at(day) >= 5
        count = self.deficit_count_at(day) + poly
        category = np.searchsorted(np.array([4, 8, 12]), count, side="left")
        return count, category.astype(np.int8), poly


def deficit_onsets(
    scn: Scenario,
    rng: np.random.Generator,
    dob: np.ndarray,
    dep: np.ndarray,
    z: np.ndarray,
    table: tuple[tuple[str, float, float], ...] | np.ndarray,
) -> np.ndarray:
    """Closed-form onset days for each person x condition of the onset-age logistic model."""
    p80 = np.array([t[1] for t in table])
    slope = np.array([t[2] for t in table]) / 10.0  # per year of age
    mor = scn.morbidity
    trend = mor.trend_log_odds_per_year
    n = len(dob)
    dob_years = dob / DAYS_PER_YEAR  # years since 1970
    # L(t) = logit(p80) + shift + slope (t - dob - 80) + gamma (dep - 2) + lambda z
    #        + trend (t - (reference_year - 1970)),   t in years since 1970.
    base = (
        logit(p80)[None, :]
        + mor.shift_log_odds
        + mor.deprivation_log_odds * (dep[:, None] - 2.0)
        + mor.frailty_sd * z[:, None]
        - slope[None, :] * (dob_years[:, None] + 80.0)
        - trend * (mor.reference_year - EPOCH_YEAR)
    )
    # float32 halves memory traffic; onset days (< 2**24) stay exact integers after floor.
    u = np.clip(rng.random((n, len(p80)), dtype=np.float32), 1e-7, 1 - 1e-7)
    lu = np.log(u) - np.log1p(-u)
    onset_years = (lu - base.astype(np.float32)) / (slope[None, :] + trend).astype(np.float32)
    onset = onset_years * np.float32(DAYS_PER_YEAR)
    earliest = (dob[:, None] + MIN_ONSET_AGE_YEARS * DAYS_PER_YEAR).astype(np.float32)
    return np.floor(np.maximum(onset, earliest))


def simulate_people(
    scn: Scenario, geo: Geography, cal: Calendar, rng: np.random.Generator, start: int, stop: int
) -> People:
    """Simulate people ``start``..``stop-1`` (global indices) of the scenario."""
    pop = scn.population
    n = stop - start
    # Households: draw sizes until n people, truncate the last one.
    sizes = rng.choice(5, size=n, p=HOUSEHOLD_SIZE_P) + 1
    cum = np.cumsum(sizes)
    n_hh = int(np.searchsorted(cum, n) + 1)
    sizes = sizes[:n_hh]
    sizes[-1] -= cum[n_hh - 1] - n
    hh_of_person = np.repeat(np.arange(n_hh), sizes)
    lsoa_w = np.ones(geo.n_lsoas) / geo.n_lsoas
    hh_lsoa = rng.choice(geo.n_lsoas, size=n_hh, p=lsoa_w)
    # Practice: one in the household's district, weighted by list size.
    hh_district = geo.lsoa_district[hh_lsoa]
    order = np.argsort(geo.practice_district, kind="stable")
    pd_sorted = geo.practice_district[order]
    w_sorted = geo.practice_weight[order]
    lo = np.searchsorted(pd_sorted, hh_district, side="left")
    hi = np.searchsorted(pd_sorted, hh_district, side="right")
    cw = np.cumsum(w_sorted)
    cw0 = np.concatenate([[0.0], cw])
    target = cw0[lo] + rng.random(n_hh) * (cw0[hi] - cw0[lo])
    hh_practice = order[np.clip(np.searchsorted(cw, target, side="right"), lo, hi - 1)]
    hh_uprn = 100_000_000_000 + (start // max(1, pop.chunk_size)) * 10_000_000 + np.arange(n_hh)

    lsoa = hh_lsoa[hh_of_person]
    practice = hh_practice[hh_of_person]
    uprn = hh_uprn[hh_of_person]
    household_size = sizes[hh_of_person]

    # Ages at the period start; a share of people is born or moves in during the period.
    years = cal.n_months / 12.0
    p_birth = min(0.3, pop.births_per_1000_per_year / 1000.0 * years)
    kind = rng.choice(3, size=n, p=[1 - p_birth - pop.move_in_share, p_birth, pop.move_in_share])
    band = rng.choice(len(AGE_BAND_PERCENT), size=n, p=AGE_BAND_PERCENT / AGE_BAND_PERCENT.sum())
    age0 = band * 5 + rng.random(n) * 5
    female_p = np.interp(age0, [0, 50, 80, 90, 100], [0.49, 0.50, 0.55, 0.65, 0.75])
    male = rng.random(n) >= female_p
    span = cal.end_day_excl - cal.start_day
    dob = np.floor(cal.start_day - age0 * DAYS_PER_YEAR).astype(np.int64)
    born = kind == 1
    dob[born] = cal.start_day + np.floor(rng.random(born.sum()) * (span - 60)).astype(np.int64)
    reg_start = np.maximum(
        dob, cal.start_day - 1 - np.floor(rng.random(n) * 20 * DAYS_PER_YEAR).astype(np.int64)
    )
    reg_start[born] = dob[born] + rng.integers(7, 43, born.sum())
    mover_in = kind == 2
    reg_start[mover_in] = cal.start_day + np.floor(rng.random(mover_in.sum()) * span).astype(
        np.int64
    )
    reg_start = np.minimum(reg_start, cal.end_day_excl - 1)
    # Moves out of Kent (first day no longer registered).
    moved_out = (rng.random(n) < pop.move_out_share) & ~born
    exit_excl = np.full(n, cal.end_day_excl, dtype=np.int64)
    lo_day = np.maximum(reg_start + 1, cal.start_day)
    exit_excl[moved_out] = lo_day[moved_out] + np.floor(
        rng.random(moved_out.sum()) * (cal.end_day_excl - lo_day[moved_out])
    ).astype(np.int64)
    moved_out &= exit_excl < cal.end_day_excl

    # Practice or address change (one per person at most).
    u = rng.random(n)
    change_kind = np.where(
        u < pop.practice_change_share,
        1,
        np.where(u < pop.practice_change_share + pop.address_change_share, 2, 0),
    ).astype(np.int8)
    change_day = lo_day + np.floor(rng.random(n) * (exit_excl - lo_day)).astype(np.int64)
    # No change on or before the registration start, nor on or after the move-out (a person
    # who leaves on their first possible change day has no room for a second episode).
    change_kind[(change_day <= reg_start) | (change_day >= exit_excl)] = 0
    change_day[change_kind == 0] = -1
    # New practice: a random other practice of the same district.
    p_dist = geo.practice_district[practice]
    lo_p = np.searchsorted(pd_sorted, p_dist, side="left")
    hi_p = np.searchsorted(pd_sorted, p_dist, side="right")
    new_practice = order[lo_p + np.floor(rng.random(n) * (hi_p - lo_p)).astype(np.int64)]
    new_uprn = 200_000_000_000 + start + np.arange(n)

    dep = (5 - geo.lsoa_imd_quintile[lsoa]).astype(np.int8)
    z = rng.standard_normal(n)
    onset = deficit_onsets(scn, rng, dob, dep, z, [(d[0], d[1], d[2]) for d in DEFICITS])
    # Drugs: deficit-associated (with probability q_d, from the onset) and background.
    q = np.array([d[3] for d in DEFICITS])
    takes = rng.random(onset.shape, dtype=np.float32) < q[None, :]
    assoc = np.where(takes, onset, np.float32(np.inf))
    background = deficit_onsets(scn, rng, dob, dep, z * 0.5, BACKGROUND_DRUGS)
    drug_start = np.concatenate([assoc, background], axis=1)

    people = People(
        global_index=np.arange(start, stop),
        dob=dob,
        male=male,
        lsoa=lsoa,
        dep=dep,
        uprn=uprn,
        household_size=household_size,
        practice=practice,
        reg_start=reg_start,
        exit_excl=exit_excl,
        change_day=change_day,
        change_kind=change_kind,
        new_practice=new_practice,
        new_uprn=new_uprn,
        frailty_z=z,
        deficit_onset=onset,
        drug_start=drug_start,
        death_day=np.full(n, -1, dtype=np.int64),
        moved_out=moved_out,
    )
    simulate_deaths(scn, cal, rng, people)
    # A practice or address change planned after death does not happen.
    void = (people.death_day >= 0) & (people.change_day >= people.death_day)
    people.change_kind[void] = 0
    people.change_day[void] = -1
    return people


def death_log_hazard(scn: Scenario, age: np.ndarray, male: np.ndarray, category: np.ndarray):
    m = scn.mortality
    log_hr = np.log(np.array((1.0, *m.efi_hazard_ratios)))
    return m.log_hazard_at_80 + m.age_slope * (age - 80.0) + m.male_log_hr * male + log_hr[category]


def simulate_deaths(scn: Scenario, cal: Calendar, rng: np.random.Generator, p: People) -> None:
    """Yearly piecewise-constant death hazard with features at the start of each model year."""
    for k in range(cal.n_years):  # a handful of model years, vectorised over people
        y0, y1 = int(cal.year_bounds[k]), int(cal.year_bounds[k + 1])
        alive = p.death_day < 0
        start = np.maximum(y0, p.reg_start)
        end = np.minimum(y1, p.exit_excl)
        at_risk = alive & (end > start) & (p.dob <= start)
        idx = np.flatnonzero(at_risk)
        if idx.size == 0:
            continue
        _, cat, _ = _efi_subset(p, idx, start[idx])
        age = (start[idx] - p.dob[idx]) / DAYS_PER_YEAR
        h = np.exp(death_log_hazard(scn, age, p.male[idx], cat))
        t = rng.exponential(1.0, idx.size) / h * DAYS_PER_YEAR
        day = start[idx] + np.floor(t).astype(np.int64)
        dies = day < end[idx]
        p.death_day[idx[dies]] = day[dies]


def _efi_subset(p: People, idx: np.ndarray, day: np.ndarray):
    d = day[:, None].astype(np.float32)
    poly = (p.drug_start[idx] <= d).sum(axis=1) >= 5
    count = (p.deficit_onset[idx] <= d).sum(axis=1) + poly
    category = np.searchsorted(np.array([4, 8, 12]), count, side="left").astype(np.int8)
    return count, category, poly
