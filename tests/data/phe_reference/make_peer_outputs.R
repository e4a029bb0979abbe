# Regenerate peer_*.csv: PHEindicatormethods' calculation code run in R on peer_*_inputs.csv.
#
# Usage: Rscript tests/data/phe_reference/make_peer_outputs.R PHE_FUNCTIONS.R
#
# PHE_FUNCTIONS.R must hold the package's calculation code (GPL-3, not kept in this repository):
# byars_lower/upper, wilson_lower/upper, na.zero (R/utils.R), phe_proportion (R/Proportions.R),
# phe_rate (R/Rates.R), phe_dsr with stdpoptype "field" (R/DSR.R), calculate_ISRatio and
# calculate_ISRate with refpoptype "field" (R/ISRatio.R, R/ISRate.R), at the commits in README.md,
# with the functions named phe_dsr_field, calculate_ISRatio_field and calculate_ISRate_field and
# confidence = c(0.95, 0.998). See README.md for the one change made (grouping test).
args <- commandArgs(trailingOnly = TRUE)
suppressMessages(source(args[[1]]))
ref <- "tests/data/phe_reference/"
w <- function(df, name) {
  df <- as.data.frame(dplyr::ungroup(df))
  num <- vapply(df, is.numeric, logical(1))
  df[num] <- lapply(df[num], function(v) ifelse(is.na(v), NA, sprintf("%.15g", v)))
  write.csv(df, paste0(ref, name), row.names = FALSE, quote = TRUE, na = "")
}

crude <- read.csv(paste0(ref, "peer_crude_inputs.csv"), stringsAsFactors = FALSE)
w(phe_proportion(crude, x, n, multiplier = 100), "peer_proportion_rows.csv")
w(phe_proportion(dplyr::group_by(crude, area), x, n), "peer_proportion_by_area.csv")
w(phe_rate(crude, x, n), "peer_rate_rows.csv")
w(phe_rate(dplyr::group_by(crude, area), x, n, multiplier = 1000), "peer_rate_by_area.csv")

std <- read.csv(paste0(ref, "peer_standardised_inputs.csv"), stringsAsFactors = FALSE)
w(phe_dsr_field(dplyr::group_by(std, area, sex), obs, pop, esp2013), "peer_dsr_by_area_sex.csv")
w(phe_dsr_field(dplyr::group_by(std, area), obs, pop, esp2013), "peer_dsr_by_area.csv")
w(calculate_ISRatio_field(dplyr::group_by(std, area, sex), obs, pop, refcount, refpop,
                          refvalue = 100), "peer_isratio_by_area_sex.csv")
w(calculate_ISRate_field(dplyr::group_by(std, area), obs, pop, refcount, refpop),
  "peer_israte_by_area.csv")
cat(R.version.string, "dplyr", as.character(packageVersion("dplyr")), "\n")
