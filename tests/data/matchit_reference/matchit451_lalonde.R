# Regenerates matchit451_lalonde_*.csv with Debian's r-cran-matchit 4.5.1:
#   apt-get install -y r-cran-matchit && Rscript matchit451_lalonde.R
suppressMessages(library(MatchIt))
data(lalonde)
save_md <- function(m, name) {
  write.csv(data.frame(id = rownames(lalonde),
                       distance = if (is.null(m$distance)) NA else m$distance,
                       weights = m$weights,
                       subclass = if (is.null(m$subclass)) NA else as.character(m$subclass)),
            name, row.names = FALSE)
}
f <- treat ~ age + educ + race + married + nodegree + re74 + re75
save_md(matchit(f, data = lalonde, method = "nearest", distance = "glm", ratio = 2),
        "matchit451_lalonde_nn2.csv")
save_md(matchit(treat ~ age + educ + race + married + nodegree, data = lalonde, method = "cem"),
        "matchit451_lalonde_cem.csv")
save_md(matchit(treat ~ race + married + nodegree + educ, data = lalonde, method = "exact"),
        "matchit451_lalonde_exact.csv")
save_md(matchit(treat ~ age + educ + re74 + re75, data = lalonde, method = "nearest",
                distance = "mahalanobis"),
        "matchit451_lalonde_mahal.csv")
