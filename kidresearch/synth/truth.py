"""``truth.json``: every parameter and realised quantity a recipe should recover.

The truth is assembled from the scenario (the exact models and their coefficients) and from
additive per-chunk statistics (counts and sums), so it does not depend on the chunking.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kidresearch.synth.feeds import ACSC_ACUTE_CODES, ACSC_CHRONIC_CODES, EMERGENCY_TRIM_DAYS
from kidresearch.synth.population import Calendar, Geography
from kidresearch.synth.scenario import Scenario


def _r(x: float, digits: int = 4) -> float | None:
    """Round for JSON; None for NaN/inf (strict JSON has no NaN)."""
    x = float(x)
    return float(round(x, digits)) if np.isfinite(x) else None


def build_truth(
    scn: Scenario,
    geo: Geography,
    cal: Calendar,
    counts: dict[str, Any],
    practice_acsc: np.ndarray,
    cost_histogram: np.ndarray,
    cost_55_by_quintile: np.ndarray,
) -> dict[str, Any]:
    """Assemble the truth dictionary (JSON-serialisable, deterministic key order)."""
    em = scn.emergency
    ft = scn.programmes.integrated_frailty_team
    sw = scn.programmes.safe_and_well_visit
    iso = cal.iso
    years = [
        {"model_year": k, "start": iso(cal.year_bounds[k]), "end": iso(cal.year_bounds[k + 1] - 1)}
        for k in range(cal.n_years)
    ]
    r_index = min(3, cal.n_years - 1)
    risk_reference = iso(cal.year_bounds[r_index])

    # eFI category shares among 65-95 at each model-year start.
    efi_shares = []
    for k in range(cal.n_years):
        c = np.array([counts.get(f"efi_year{k}_cat{i}", 0) for i in range(4)], dtype=float)
        total = c.sum()
        shares = c / total if total else c
        efi_shares.append(
            {
                "date": iso(cal.year_bounds[k]),
                "n_aged_65_95": int(total),
                "fit": _r(shares[0]),
                "mild": _r(shares[1]),
                "moderate": _r(shares[2]),
                "severe": _r(shares[3]),
                "moderate_or_severe": _r(shares[2] + shares[3]),
            }
        )
    ms = [e["moderate_or_severe"] for e in efi_shares]
    trend_pp = float(np.polyfit(np.arange(len(ms)), ms, 1)[0]) if len(ms) > 1 else 0.0

    # Costs at the reference date (from the additive histogram of annual costs).
    people_n, cost_sum = cost_histogram
    n_people = people_n.sum()
    total_cost = cost_sum.sum()
    top_n = max(1.0, round(0.05 * n_people))
    top_cost, taken = 0.0, 0.0
    for b in range(len(people_n) - 1, -1, -1):  # bins, not people
        if people_n[b] == 0:
            continue
        take = min(people_n[b], top_n - taken)
        top_cost += cost_sum[b] * take / people_n[b]
        taken += take
        if taken >= top_n:
            break
    top5 = top_cost / total_cost if total_cost else float("nan")
    n55, c55 = cost_55_by_quintile
    by_q = {q + 1: _r(c55[q] / n55[q], 2) for q in range(5) if n55[q] > 0}
    gradient = by_q[1] / by_q[5] if by_q.get(1) and by_q.get(5) else float("nan")

    feeds: dict[str, dict[str, int]] = {}
    for key, value in counts.items():
        if key.startswith("feed:"):
            _, feed, stat = key.split(":", 2)
            feeds.setdefault(feed, {})[stat] = int(value)
    quality = {}
    for feed, st in sorted(feeds.items()):
        rows = st.get("rows", 0)
        unlinkable = sum(
            st.get(k, 0)
            for k in (
                "nhs_missing",
                "nhs_invalid_check_digit",
                "nhs_nine_digits",
                "nhs_unknown_to_register",
            )
        )
        injected = {k[len("injected_") :]: v for k, v in st.items() if k.startswith("injected_")}
        quality[feed] = {
            "rows": rows,
            "not_yet_delivered": st.get("not_yet_delivered", 0),
            "nhs_number": {
                "missing": st.get("nhs_missing", 0),
                "invalid_check_digit": st.get("nhs_invalid_check_digit", 0),
                "nine_digits": st.get("nhs_nine_digits", 0),
                "unknown_to_register": st.get("nhs_unknown_to_register", 0),
                "formatted_with_spaces": st.get("nhs_formatted_with_spaces", 0),
                "formatted_with_dashes": st.get("nhs_formatted_with_dashes", 0),
                "unlinkable": unlinkable,
                "linkage_rate": _r(1 - unlinkable / rows, 5) if rows else 1.0,
            },
            "injected_errors": injected,
            "corrections": st.get("corrections", 0),
            "episode_updates": counts.get(f"episode_updates_{feed}", 0),
        }

    ft_n = counts.get("ft_treated", 0)
    ft_y0 = counts.get("ft_y0_sum", 0)
    ft_y1 = counts.get("ft_y1_sum", 0)
    ft_ctrl_n = counts.get("ft_control_person_years", 0)
    ft_ctrl = counts.get("ft_control_sum", 0)
    sw_n = counts.get("sw_treated", 0)
    sw_ctrl_n = counts.get("sw_control_person_years", 0)

    acsc_codes = sorted(set(ACSC_CHRONIC_CODES) | set(ACSC_ACUTE_CODES))
    flagged = [str(c) for c in geo.practice_code[geo.practice_acsc]]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = practice_acsc[:, 0] / practice_acsc[:, 1]
    return {
        "scenario": scn.name,
        "seed": scn.seed,
        "period": {
            "start": iso(cal.start_day),
            "end": iso(cal.end_day_excl - 1),
            "months": cal.n_months,
            "first_extract": cal.month_label(0),
            "last_extract": cal.month_label(cal.n_months - 1),
            "model_years": years,
        },
        "population": {
            "people": counts.get("people", 0),
            "people_in_register_extracts": counts.get("people_in_register_extracts", 0),
            "practices": geo.n_practices,
            "lsoas": geo.n_lsoas,
            "aged_65_plus_at_start": counts.get("aged_65_plus_at_start", 0),
            "born_in_period": counts.get("born", 0),
            "moved_in": counts.get("moved_in", 0),
            "moved_out": counts.get("moved_out", 0),
            "deaths": counts.get("deaths", 0),
        },
        "efi": {
            "definition": "count of 36 deficits: 35 SNOMED CT code lists in efi_deficits.csv "
            "(present when any code recorded on or before the date) + polypharmacy (>= 5 "
            "distinct BNF chemical substances, first 9 characters of bnf_code, chapters 1-15, "
            "issued in the 12 months up to the date); categories fit 0-4, mild 5-8, moderate "
            "9-12, severe 13+",
            "population": "aged 65-95 (age = (date - date_of_birth)/365.25), registered and "
            "alive on the date",
            "published_shares": {"fit": 0.50, "mild": 0.35, "moderate": 0.12, "severe": 0.03},
            "shares_by_date": efi_shares,
            "note": "polypharmacy needs 12 months of prescriptions, so shares computed from the "
            "raw feeds before the period start + 12 months are lower than the true shares",
        },
        "frailty_trend": {
            "log_odds_per_year_on_each_deficit": scn.morbidity.trend_log_odds_per_year,
            "moderate_or_severe_change_per_year": _r(trend_pp, 5),
        },
        "mortality": {
            "model": "constant yearly hazard within each model year: h = exp(a + b*(age - 80) + "
            "c*male) * HR[eFI category], features at the model-year start (or registration)",
            "log_hazard_at_80": scn.mortality.log_hazard_at_80,
            "age_slope_per_year": scn.mortality.age_slope,
            "male_log_hr": scn.mortality.male_log_hr,
            "efi_hazard_ratios": {
                "mild": scn.mortality.efi_hazard_ratios[0],
                "moderate": scn.mortality.efi_hazard_ratios[1],
                "severe": scn.mortality.efi_hazard_ratios[2],
            },
            "recoverable": "a Cox model of death within 12 months of a model-year start with "
            "eFI category, age (linear) and sex at that date recovers these hazard ratios",
        },
        "emergency_admission_model": {
            "link": "logit",
            "time_unit": "model year (12 months from each model-year start)",
            "outcome": "any emergency admission (admission_method 21-28, 2A-2D) in the 12 "
            "months from the model-year start",
            "reference_date": risk_reference,
            "coefficients": {
                "intercept": em.intercept,
                "age_per_decade": em.age_per_decade,
                "male": em.male,
                "efi_mild": em.efi_mild,
                "efi_moderate": em.efi_moderate,
                "efi_severe": em.efi_severe,
                "polypharmacy": em.polypharmacy,
                "prior_emergency_12m": em.prior_emergency,
                "deprivation_per_quintile": em.deprivation_per_quintile,
            },
            "features": {
                "age_per_decade": f"(age - {em.age_centre}) / 10, age in years at the date",
                "male": "1 if sex is M",
                "efi_*": "eFI category at the date (fit is the reference)",
                "polypharmacy": "the eFI polypharmacy deficit at the date",
                "prior_emergency_12m": "1 if any emergency admission in the 12 months before "
                "the date (before the period start this is latent)",
                "deprivation_per_quintile": "5 - IMD quintile of the LSOA (0 least ... 4 most "
                "deprived)",
                "practice_effect": f"practice random intercept ~ N(0, {em.practice_sd}^2), "
                "practice registered at the date",
            },
            "practice_effects": {
                str(c): _r(v, 5)
                for c, v in zip(geo.practice_code, geo.practice_effect, strict=True)
            },
            "recoverable": "for people registered and alive at a model-year start (e.g. the "
            "reference date) who were never enrolled in the integrated frailty team, "
            "P(any emergency admission in the next 12 months) = logistic(linear predictor) "
            "exactly, with features measured from the raw feeds (3-year lookback is enough). "
            "Fitting without practice effects attenuates coefficients slightly (non-"
            "collapsibility; practice SD is small). Age from birth year-month differs by < 1 "
            "month. People who join mid-year have probability scaled by the fraction of year.",
            "extra_spells_given_any": f"Poisson({em.extra_admissions_base} + "
            f"{em.extra_admissions_per_efi_category} * eFI category index)",
            "realised_any_by_year": {
                str(k): _r(
                    counts.get(f"emergency_any_year{k}", 0)
                    / max(1, counts.get(f"emergency_at_risk_year{k}", 0)),
                    5,
                )
                for k in range(cal.n_years)
            },
        },
        "acsc": {
            "definition": "emergency spells whose primary_diagnosis_icd10 starts with a code in "
            "kidresearch/data/acsc_icd10.csv (NHS Outcomes Framework 2.3.i chronic and 2.3.ii "
            "acute lists)",
            "codes_emitted": acsc_codes,
            "base_share_of_emergency_spells": scn.acsc.base_share,
            "rate_ratio": scn.acsc.rate_ratio,
            "practices": flagged,
            "mechanism": "at flagged practices (practice at admission) the share of emergency "
            "spells with an ACSC diagnosis is base_share * rate_ratio, so ACSC admissions per "
            "registered person are rate_ratio times those of a like practice",
            "realised_share_by_practice": {
                str(c): _r(s, 4) if np.isfinite(s) else None
                for c, s in zip(geo.practice_code, share, strict=True)
            },
        },
        "programmes": {
            "integrated_frailty_team": {
                "enrolled": ft_n,
                "assignment": "non-random, on observed covariates only, once per person: for "
                "each model year 1..n-2 a candidate date uniform in the year; people 65+ "
                "registered then are enrolled with probability logistic(intercept + "
                "age_per_year*(age-80) + efi[category] + prior_emergency_per_spell*min(emergency "
                "spells in the 365 days before, 5) + deprivation_per_quintile*(5 - quintile))",
                "assignment_coefficients": ft.model_dump(),
                "emergency_rate_ratio": ft.emergency_rate_ratio,
                "effect_window_months": ft.effect_months,
                "att_emergency_admissions_12m": _r((ft_y0 - ft_y1) / ft_n, 5) if ft_n else None,
                "treated_mean_y0_12m": _r(ft_y0 / ft_n, 5) if ft_n else None,
                "treated_mean_y1_12m": _r(ft_y1 / ft_n, 5) if ft_n else None,
                "realised_rate_ratio": _r(ft_y1 / ft_y0, 5) if ft_y0 else None,
                "att_cost_gbp_12m": _r(
                    (counts.get("ft_cost_added_gbp", 0.0) - counts.get("ft_cost_saved_gbp", 0.0))
                    / ft_n,
                    2,
                )
                if ft_n
                else None,
                "cost_effect_note": "team contacts (rapid_response community contacts, "
                "unit cost in unit_costs.csv) added minus emergency spells (with expected A&E) "
                "avoided, per enrolee, 12 months after enrolment",
                "naive": {
                    "treated_mean_12m": _r(ft_y1 / ft_n, 5) if ft_n else None,
                    "untreated_mean_12m": _r(ft_ctrl / ft_ctrl_n, 5) if ft_ctrl_n else None,
                    "rate_ratio": _r((ft_y1 / ft_n) / (ft_ctrl / ft_ctrl_n), 4)
                    if ft_n and ft_ctrl
                    else None,
                    "comparison": "enrolees' emergency spells in 12 months after enrolment vs "
                    "never-enrolled candidates' spells in 12 months after their candidate date",
                },
            },
            "safe_and_well_visit": {
                "enrolled": sw_n,
                "assignment_coefficients": sw.model_dump(),
                "assignment": "non-random, observed covariates only (age, lives alone = "
                "household of 1 at the UPRN, moderate/severe eFI, A&E attendances in the 365 "
                "days before, deprivation)",
                "ae_rate_ratio": 1.0,
                "att_ae_attendances_12m": 0.0,
                "naive": {
                    "treated_mean_12m": _r(counts.get("sw_ae_sum", 0) / sw_n, 5) if sw_n else None,
                    "untreated_mean_12m": _r(counts.get("sw_control_ae_sum", 0) / sw_ctrl_n, 5)
                    if sw_ctrl_n
                    else None,
                    "rate_ratio": _r(
                        (counts.get("sw_ae_sum", 0) / sw_n)
                        / (counts.get("sw_control_ae_sum", 0) / sw_ctrl_n),
                        4,
                    )
                    if sw_n and counts.get("sw_control_ae_sum", 0)
                    else None,
                },
            },
        },
        "costs": {
            "reference_date": risk_reference,
            "window": "12 months (365 days) from the reference date",
            "population": "registered and alive at the reference date",
            "rules": {
                "acute_emergency": f"spell + excess_bed_day * max(0, los_days - "
                f"{EMERGENCY_TRIM_DAYS}), at admission_date",
                "acute_elective": "spell, at admission_date",
                "ae": "attendance",
                "outpatient": "attended_appointment (status 5 or 6)",
                "gp": "consultation (gp_consultation_codes.csv)",
                "prescribing": "cost_gbp of the row",
                "community": "contact by service",
                "mental_health": "contact by team_type",
                "out_of_hours": "contact by contact_type",
                "social_care": "weekly_cost_gbp * days open / 7",
                "hospice": "day by setting * days open",
            },
            "people": int(n_people),
            "mean_annual_cost_gbp": _r(total_cost / n_people, 2) if n_people else None,
            "top_5_percent_share": _r(top5, 4),
            "mean_annual_cost_55_plus_by_imd_quintile": {str(k): v for k, v in by_q.items()},
            "deprivation_gradient_q1_vs_q5_55_plus": _r(gradient, 4),
            "published_gradient": 1.35,
        },
        "data_quality": {
            "reporting_lag_months": {str(k): v for k, v in scn.data_quality.lag_months.items()},
            "lag_note": "extract_month = event month + lag; history before the period arrives "
            "in the first extract; rows whose extract month would be after the last extract "
            "are not delivered (counted as not_yet_delivered)",
            "feeds": quality,
        },
    }
