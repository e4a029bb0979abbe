"""Emergency-admission risk: a combined-predictive-model style logistic regression.

Like the King's Fund combined predictive model used in Kent (and PARR before it, Billings et
al., BMJ 2006), the model predicts whether a person has at least one emergency admission in
the next 12 months from their recent use of services and their conditions:

* prior use in the ``lookback`` (default 3 years) before the index date: emergency and
  elective admissions (spells), A&E attendances, attended outpatient appointments (status 5/6);
* conditions at the index date: the eFI score and its deficit count, the number of long-term
  conditions (the eFI deficits that are chronic diseases, :data:`LONG_TERM_CONDITIONS`),
  polypharmacy;
* age (years / 10), sex, IMD quintile (1 = most deprived) of the LSOA of residence.

The population is everyone alive and registered at the index date. Validation is a time
split: the model is fitted on index date ``at - horizon`` (outcome window ending at ``at``)
and validated on index date ``at`` (outcome window ``(at, at + horizon]``), so every number in
:meth:`RiskModel.performance` is out of time, as a commissioner would use the model.

Examples
--------
>>> import numpy as np
>>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
0.75
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import ibis
import numpy as np
import pandas as pd
from scipy import stats as sps

from kidresearch.errors import RiskError
from kidresearch.frailty import (
    CHRONIC_DEFICITS,
    EFI_CATEGORIES,
    EFI_COUNT_UPPER,
    POLYPHARMACY,
    DateLike,
    KIDLike,
    as_date,
    decode_deficits,
    deficit_codelist,
    disclosure_policy,
    efi_query,
    months_after,
    months_before,
    parse_months,
    release,
)
from kidresearch.schema import ATTENDED_CODES

log = logging.getLogger(__name__)

# eFI deficits that are long-term conditions (chronic diseases, as in the QOF registers),
# counted as the "long-term conditions" feature; the remaining deficits are symptoms,
# disabilities and social circumstances.
LONG_TERM_CONDITIONS: tuple[str, ...] = CHRONIC_DEFICITS
DEFAULT_FORMULA = (
    "emergency_admission ~ age_10 + C(sex) + emergency_admissions + elective_admissions"
    " + ae_attendances + outpatient_attendances + long_term_conditions + polypharmacy"
    " + efi_score + C(imd_quintile)"
)
# The synthetic generator's emergency-admission model (kidresearch.synth, truth.json
# "emergency_admission_model"), written over the columns of :func:`features`, and the map from
# truth.json's coefficient names to this formula's terms.
GENERATOR_FORMULA = (
    "emergency_admission ~ I((age - 65) / 10) + I(sex == 'M') + C(efi_category)"
    " + polypharmacy + any_emergency_12m + deprivation"
)
GENERATOR_TERMS: dict[str, str] = {
    "intercept": "Intercept",
    "age_per_decade": "I((age - 65) / 10)",
    "male": "I(sex == 'M')[T.True]",
    "efi_mild": "C(efi_category)[T.mild]",
    "efi_moderate": "C(efi_category)[T.moderate]",
    "efi_severe": "C(efi_category)[T.severe]",
    "polypharmacy": "polypharmacy",
    "prior_emergency_12m": "any_emergency_12m",
    "deprivation_per_quintile": "deprivation",
}
TOP_SHARES: tuple[float, ...] = (0.005, 0.01, 0.05)
Outcome = Literal["emergency_admission", "acsc_admission"]


def auc(outcome: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half)."""
    y = np.asarray(outcome, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = sps.rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def calibration(outcome: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Calibration intercept (in the large, slope fixed at 1) and slope (Cox 1958)."""
    import statsmodels.api as sm

    y = np.asarray(outcome, dtype=float)
    lp = _logit(np.asarray(predicted, dtype=float))
    slope_fit = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    large = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=lp).fit()
    return {
        "calibration_intercept": float(large.params[0]),
        "calibration_slope": float(slope_fit.params[1]),
    }


def _top_flags(predicted: np.ndarray, share: float) -> np.ndarray:
    """The ``share`` of people with the highest risk (ties broken by order, stable)."""
    k = max(int(round(share * len(predicted))), 1)
    order = np.argsort(-predicted, kind="stable")
    flags = np.zeros(len(predicted), dtype=bool)
    flags[order[:k]] = True
    return flags


def performance_table(outcome: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """AUC, Brier score, calibration and top-k sensitivity/PPV of predictions.

    Examples
    --------
    >>> y = np.array([0, 0, 0, 1, 1]); p = np.array([0.1, 0.2, 0.3, 0.6, 0.9])
    >>> t = performance_table(y, p).set_index("metric")["value"]
    >>> float(t["auc"]), round(float(t["brier"]), 3)
    (1.0, 0.062)
    """
    y = np.asarray(outcome, dtype=bool)
    p = np.asarray(predicted, dtype=float)
    rows = [
        ("people", float(len(y))),
        ("observed_rate", float(y.mean())),
        ("mean_predicted", float(p.mean())),
        ("auc", auc(y, p)),
        ("brier", float(np.mean((p - y) ** 2))),
    ]
    if 0 < y.sum() < len(y):
        rows += list(calibration(y, p).items())
    for share in TOP_SHARES:
        flags = _top_flags(p, share)
        hits = int((flags & y).sum())
        label = f"top_{share * 100:g}pct"
        rows += [
            (f"{label}_flagged", float(flags.sum())),
            (f"{label}_sensitivity", hits / max(int(y.sum()), 1)),
            (f"{label}_ppv", hits / max(int(flags.sum()), 1)),
        ]
    return pd.DataFrame(rows, columns=["metric", "value"])


def features(
    kid: KIDLike,
    at: DateLike,
    *,
    lookback: str | int = "3y",
    horizon: str | int = "12m",
    outcome: Outcome = "emergency_admission",
    with_outcome: bool = True,
) -> pd.DataFrame:
    """One row per person alive and registered at ``at``: the model's features and outcome.

    Parameters
    ----------
    kid
        A KID session.
    at
        Index date. Prior use counts events in ``(at - lookback, at]``; the outcome is any
        emergency admission (or, with ``outcome="acsc_admission"``, any emergency admission
        for an ambulatory care sensitive condition) in ``(at, at + horizon]``.
    with_outcome
        Set False to score people when the outcome window is not yet observed.

    Returns
    -------
    pandas.DataFrame
        ``person_id, sex, age, age_10, practice_code, imd_quintile, deprivation`` (5 - IMD
        quintile: 0 least, 4 most deprived), ``imd_score, district, emergency_admissions,
        emergency_admissions_12m, any_emergency_12m, elective_admissions, ae_attendances,
        outpatient_attendances`` (counts over the lookback unless ``_12m``),
        ``long_term_conditions, coded_deficits, polypharmacy, drugs_12m, deficit_count,
        efi_score, efi_category`` and the outcome column.
    """
    at_date = as_date(at, "at")
    back = parse_months(lookback, "lookback")
    ahead = parse_months(horizon, "horizon")
    if outcome not in ("emergency_admission", "acsc_admission"):
        raise RiskError(
            "The 'outcome' parameter must be 'emergency_admission' or 'acsc_admission'. "
            f"Got {outcome!r} instead."
        )
    start = months_before(at_date, back)
    codes = deficit_codelist()
    base = efi_query(kid, at_date, codelist=codes)
    ltc = [d for d in LONG_TERM_CONDITIONS if d in set(codes.deficit)]
    coded = [str(d) for d in pd.unique(codes.deficit)]

    def prior(table: str, date_col: str, name: str, keep: Any = None) -> ibis.Table:
        t = kid.table(table)
        t = t.filter((t[date_col] > start) & (t[date_col] <= at_date))
        if keep is not None:
            t = t.filter(keep(t))
        return t.group_by("person_id").aggregate(**{name: t.count()})

    recent = months_before(at_date, 12)
    counts = [
        prior(
            "inpatient_spells", "admission_date", "emergency_admissions", lambda t: t.is_emergency
        ),
        prior(
            "inpatient_spells",
            "admission_date",
            "emergency_admissions_12m",
            lambda t: t.is_emergency & (t.admission_date > recent),
        ),
        prior("inpatient_spells", "admission_date", "elective_admissions", lambda t: t.is_elective),
        prior("ae_attendances", "arrival_date", "ae_attendances"),
        prior(
            "outpatient_appointments",
            "appointment_date",
            "outpatient_attendances",
            lambda t: t.attendance_status.isin(ATTENDED_CODES),
        ),
    ]
    expr = base
    for table in counts:
        expr = expr.left_join(table, "person_id").drop("person_id_right")
    if with_outcome:
        end = months_after(at_date, ahead)
        spells = kid.table("inpatient_spells")
        spells = spells.filter(
            spells.is_emergency & (spells.admission_date > at_date) & (spells.admission_date <= end)
        )
        if outcome == "acsc_admission":
            from kidresearch.variation import acsc_filter

            spells = spells.filter(acsc_filter(spells.primary_diagnosis_icd10))
        admitted = spells.group_by("person_id").aggregate(outcome_events=spells.count())
        expr = expr.left_join(admitted, "person_id").drop("person_id_right")
    frame = decode_deficits(expr.to_pandas(), [*coded, POLYPHARMACY])
    for name in (
        "emergency_admissions",
        "emergency_admissions_12m",
        "elective_admissions",
        "ae_attendances",
        "outpatient_attendances",
    ):
        frame[name] = frame[name].fillna(0).astype("int32")
    frame["long_term_conditions"] = frame[ltc].sum(axis=1).astype("int16") if ltc else 0
    frame["coded_deficits"] = frame[coded].sum(axis=1).astype("int16")
    frame["polypharmacy"] = frame[POLYPHARMACY].astype(int)
    frame["efi_score"] = frame["deficit_count"] / 36
    frame["age_10"] = frame["age"] / 10
    frame["any_emergency_12m"] = (frame["emergency_admissions_12m"] > 0).astype(int)
    frame["efi_category"] = pd.Categorical.from_codes(
        np.searchsorted(np.asarray(EFI_COUNT_UPPER), frame["deficit_count"].to_numpy()),
        categories=list(EFI_CATEGORIES),
    )
    # 0 = least deprived quintile ... 4 = most deprived (quintile 1).
    frame["deprivation"] = 5 - frame["imd_quintile"].astype(float)
    if with_outcome:
        frame[outcome] = (frame.pop("outcome_events").fillna(0) > 0).astype(int)
    frame = frame.drop(columns=coded)
    return frame.sort_values("person_id", ignore_index=True)


@dataclass(frozen=True, eq=False)
class RiskModel:
    """A fitted emergency-admission risk model with its out-of-time validation.

    Attributes
    ----------
    fitted_at, validated_at
        Index dates of the training and validation cohorts (``validated_at`` is None without
        validation).
    formula
        The patsy formula fitted with statsmodels ``Logit``.
    result_
        The statsmodels results object.
    train, validation
        Person-level frames with ``predicted`` risk.
    """

    fitted_at: dt.date
    validated_at: dt.date | None
    formula: str
    outcome: str
    lookback_months: int
    horizon_months: int
    result_: Any = field(repr=False)
    train: pd.DataFrame = field(repr=False)
    validation: pd.DataFrame | None = field(repr=False)
    policy: Any = field(default=None, repr=False)

    def _eval_frame(self) -> pd.DataFrame:
        return self.validation if self.validation is not None else self.train

    def coefficients(self) -> pd.DataFrame:
        """Terms with log-odds, standard errors, 95% limits, p-values and odds ratios."""
        r = self.result_
        ci = r.conf_int()
        out = pd.DataFrame(
            {
                "term": r.params.index,
                "coef": r.params.to_numpy(),
                "std_err": r.bse.to_numpy(),
                "lower": ci[0].to_numpy(),
                "upper": ci[1].to_numpy(),
                "p_value": r.pvalues.to_numpy(),
            }
        )
        out["odds_ratio"] = np.exp(out["coef"])
        return out

    def compare(
        self, truth: Mapping[str, float], names: Mapping[str, str] | None = None
    ) -> pd.DataFrame:
        """Fitted coefficients beside true ones (e.g. a synthetic KID's generator model).

        Parameters
        ----------
        truth
            True log-odds coefficients by name.
        names
            Map from truth names to this model's term names, where they differ.
        """
        names = dict(names or {})
        coefs = self.coefficients().set_index("term")
        rows = []
        for key, value in truth.items():
            term = names.get(key, key)
            if term not in coefs.index:
                continue
            c = coefs.loc[term]
            rows.append(
                {
                    "term": term,
                    "truth": float(value),
                    "coef": float(c["coef"]),
                    "std_err": float(c["std_err"]),
                    "z_from_truth": float((c["coef"] - value) / c["std_err"]),
                }
            )
        return pd.DataFrame(rows)

    def against_truth(self, truth: Mapping[str, Any]) -> pd.DataFrame:
        """Coefficients beside a synthetic KID's true emergency-admission model.

        ``truth`` is the generator's ``truth.json``; its
        ``emergency_admission_model.coefficients`` are matched to this model's terms through
        :data:`GENERATOR_TERMS` (fit with ``formula=GENERATOR_FORMULA`` to compare them all).
        ``z_from_truth`` is (estimate - truth) / standard error.
        """
        try:
            coefficients = truth["emergency_admission_model"]["coefficients"]
        except (KeyError, TypeError) as err:
            raise RiskError(
                "truth has no 'emergency_admission_model.coefficients' (expected the synthetic "
                "generator's truth.json)."
            ) from err
        return self.compare(coefficients, GENERATOR_TERMS)

    @cached_property
    def _performance(self) -> pd.DataFrame:
        f = self._eval_frame()
        return performance_table(f[self.outcome].to_numpy(), f["predicted"].to_numpy())

    def performance(self) -> pd.DataFrame:
        """AUC, Brier, calibration intercept/slope, sensitivity and PPV in the top 0.5/1/5%.

        On the validation cohort when there is one (out of time), else in sample.
        """
        return self._performance.copy()

    def calibration_table(self, bins: int = 10) -> pd.DataFrame:
        """Observed vs mean predicted risk by tenth (or ``bins``) of predicted risk."""
        f = self._eval_frame()
        group = pd.qcut(f["predicted"].rank(method="first"), bins, labels=False)
        out = f.groupby(group).agg(
            people=(self.outcome, "size"),
            events=(self.outcome, "sum"),
            mean_predicted=("predicted", "mean"),
        )
        out["observed"] = out["events"] / out["people"]
        return out.rename_axis("risk_group").reset_index()

    def equity(self, share: float = 0.05) -> pd.DataFrame:
        """Calibration and flag rates by IMD quintile and by sex.

        For each group: people, observed and mean predicted risk, observed/expected ratio,
        calibration slope, the share flagged in the top ``share`` of the whole population, and
        sensitivity within the group, so under- or over-prediction for a group is visible.
        """
        f = self._eval_frame().copy()
        f["flagged"] = _top_flags(f["predicted"].to_numpy(), share)
        rows = []
        for column in ("imd_quintile", "sex"):
            for value, g in f.groupby(column, observed=True, dropna=False):
                y = g[self.outcome].to_numpy()
                p = g["predicted"].to_numpy()
                cal = calibration(y, p) if 0 < y.sum() < len(y) else {}
                rows.append(
                    {
                        "dimension": column,
                        "group": str(value),
                        "people": len(g),
                        "events": int(y.sum()),
                        "observed_rate": float(y.mean()),
                        "mean_predicted": float(p.mean()),
                        "observed_to_expected": float(y.sum() / p.sum()),
                        "calibration_slope": cal.get("calibration_slope", np.nan),
                        "flag_rate": float(g["flagged"].mean()),
                        "sensitivity": float((g["flagged"] & (y == 1)).sum() / max(y.sum(), 1)),
                    }
                )
        return pd.DataFrame(rows)

    def predict(self, kid: KIDLike, at: DateLike) -> pd.DataFrame:
        """Risk of an emergency admission in the ``horizon`` after ``at`` for everyone then.

        Returns ``person_id, practice_code, sex, age, imd_quintile, predicted``.
        """
        frame = features(
            kid,
            at,
            lookback=self.lookback_months,
            horizon=self.horizon_months,
            outcome=self.outcome,  # type: ignore[arg-type]
            with_outcome=False,
        )
        frame = _complete_rows(frame, self.formula, "predict")
        frame["predicted"] = np.asarray(self.result_.predict(frame))
        return frame[["person_id", "practice_code", "sex", "age", "imd_quintile", "predicted"]]

    def summary(self) -> pd.DataFrame:
        """Coefficients and performance, released only if the model passes disclosure control.

        The model goes through :func:`kidresearch.sdc.check_model` (residual degrees of
        freedom, observations behind each categorical level); the performance counts
        (people flagged) through :func:`kidresearch.sdc.check_table`.

        Raises
        ------
        DisclosureError
            If the model fails the check; the message gives the reasons.
        """
        from kidresearch import sdc
        from kidresearch.errors import DisclosureError

        checked = sdc.check_model(self.result_, name="risk_model", policy=self.policy)
        if not checked.passed:
            raise DisclosureError(
                "The risk model fails disclosure control: " + "; ".join(checked.record.reasons)
            )
        coefs = self.coefficients().assign(section="coefficient")
        perf = self.performance().rename(columns={"metric": "term", "value": "coef"})
        flagged = perf[perf.term.str.endswith("_flagged")].copy()
        flagged["coef"] = flagged["coef"].astype(int)
        released = release(
            flagged, counts=["coef"], keys=["term"], name="risk_model_flagged", policy=self.policy
        )
        perf = perf.set_index("term")
        perf.loc[released["term"], "coef"] = released["coef"].to_numpy()
        return pd.concat(
            [coefs, perf.reset_index().assign(section="performance")], ignore_index=True
        )

    def plot(self, ax: Any = None) -> Any:
        """Calibration plot: observed vs predicted risk by tenth; returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 5))
        cal = self.calibration_table()
        top = float(max(cal["observed"].max(), cal["mean_predicted"].max()) * 1.05)
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--", label="perfect")
        ax.plot(cal["mean_predicted"], cal["observed"], "o-", label="tenths of risk")
        perf = self._performance.set_index("metric")["value"]
        ax.set_title(
            f"Calibration (AUC {perf['auc']:.3f}, slope {perf.get('calibration_slope', np.nan):.2f})"
        )
        ax.set_xlabel("mean predicted risk")
        ax.set_ylabel("observed risk")
        ax.legend(fontsize="small")
        return ax

    def _repr_html_(self) -> str:
        return (
            f"<p><b>Emergency admission risk model</b> fitted at {self.fitted_at}, validated at "
            f"{self.validated_at}</p>"
            + self.performance().to_html(index=False)
            + self.coefficients().to_html(index=False)
        )


def _complete_rows(frame: pd.DataFrame, formula: str, where: str) -> pd.DataFrame:
    """Rows with every model variable present; warns with the count of any left out."""
    import warnings

    from patsy import ModelDesc

    from kidresearch.errors import DroppedRowsWarning

    desc = ModelDesc.from_formula(formula)
    names = set()
    for term in [*desc.lhs_termlist, *desc.rhs_termlist]:
        for factor in term.factors:
            code = factor.code
            names |= {c for c in frame.columns if c in code}
    missing = frame[sorted(names)].isna().any(axis=1)
    if missing.any():
        warnings.warn(
            f"risk.{where}: {int(missing.sum())} of {len(frame)} people have a missing model "
            f"variable (e.g. imd_quintile for an LSOA not in lsoas) and are left out.",
            DroppedRowsWarning,
            stacklevel=3,
        )
    return frame[~missing].copy()


def fit(
    kid: KIDLike,
    at: DateLike,
    *,
    lookback: str | int = "3y",
    horizon: str | int = "12m",
    validate: Literal["time-split", "none"] = "time-split",
    formula: str = DEFAULT_FORMULA,
    outcome: Outcome = "emergency_admission",
) -> RiskModel:
    """Fit the emergency-admission risk model (statsmodels Logit) with time-split validation.

    Parameters
    ----------
    kid
        A KID session.
    at
        With ``validate="time-split"``: the validation index date; the model is fitted at
        ``at - horizon`` (its outcome window ends at ``at``) and validated on the people at
        ``at`` with outcomes in ``(at, at + horizon]``, which must lie inside the data. With
        ``validate="none"``: the model is fitted at ``at``.
    lookback, horizon
        Spans such as ``"3y"`` and ``"12m"``.
    formula
        A patsy formula over the columns of :func:`features`; the outcome column is
        ``emergency_admission`` (or ``acsc_admission``).

    Returns
    -------
    RiskModel

    Raises
    ------
    RiskError
        Bad ``validate``, an outcome window past the end of the data, or no outcome events.
    """
    import statsmodels.formula.api as smf

    if validate not in ("time-split", "none"):
        raise RiskError(
            f"The 'validate' parameter must be 'time-split' or 'none'. Got {validate!r} instead."
        )
    at_date = as_date(at, "at")
    back = parse_months(lookback, "lookback")
    ahead = parse_months(horizon, "horizon")
    fit_at = months_before(at_date, ahead) if validate == "time-split" else at_date
    _check_outcome_window(kid, months_after(at_date, ahead))
    train = features(kid, fit_at, lookback=back, horizon=ahead, outcome=outcome)
    train = _complete_rows(train, formula, "fit")
    if train[outcome].sum() == 0:
        raise RiskError(f"No {outcome} events after {fit_at}: the model cannot be fitted.")
    result = smf.logit(formula, data=train).fit(disp=False, maxiter=200)
    train["predicted"] = np.asarray(result.predict(train))
    validation = None
    if validate == "time-split":
        validation = features(kid, at_date, lookback=back, horizon=ahead, outcome=outcome)
        validation = _complete_rows(validation, formula, "fit (validation)")
        validation["predicted"] = np.asarray(result.predict(validation))
    return RiskModel(
        fitted_at=fit_at,
        validated_at=at_date if validate == "time-split" else None,
        formula=formula,
        outcome=outcome,
        lookback_months=back,
        horizon_months=ahead,
        result_=result,
        train=train,
        validation=validation,
        policy=disclosure_policy(kid),
    )


def _check_outcome_window(kid: KIDLike, last_day: dt.date) -> None:
    spells = kid.table("inpatient_spells")
    latest = spells.aggregate(latest=spells.admission_date.max()).to_pandas()["latest"].iloc[0]
    if (
        latest is None
        or pd.isna(latest)
        or pd.Timestamp(latest).date() < months_before(last_day, 1)
    ):
        raise RiskError(
            f"The outcome window runs to {last_day} but inpatient_spells ends at {latest}: "
            "choose an earlier 'at' so that the whole horizon is observed."
        )


__all__: Sequence[str] = (
    "DEFAULT_FORMULA",
    "GENERATOR_FORMULA",
    "GENERATOR_TERMS",
    "LONG_TERM_CONDITIONS",
    "RiskError",
    "RiskModel",
    "auc",
    "features",
    "fit",
    "performance_table",
)
