# The phenotyping study (`study.task: phenotyping`): its own jobs only (common.smk has the publishing of the
# report). Every job is `python -m phenotype cv` on OUT/study.yaml:
# the baseline regime alone (it fills the feature cache) -> every other regime alone (reading that cache)
# -> every regime together, compared: the report, written into OUT/.stage/ and published whole.
# P is a study.phenotyping.PhenoPlan: regimes, each regime's own flags and readable params (`P.params(rule)`);
# every path comes from its StudyLayout (L). Rule names differ from the other tasks' so the SLURM profile
# sizes each.

import re

PHENO_CACHE = quote(P.feature_cache)
BASELINE_SEAL = P.regime_seal(P.baseline)


wildcard_constraints:
    regime="|".join(re.escape(r) for r in P.regimes),


rule pheno_regime:
    """One regime alone (`phenotype cv --regimes ...`): its one-regime report, results and overlays.

    The baseline's job cuts every cell and computes every cell's features into the study's feature cache
    (inside its own folder); every other regime's job waits for it and only fits classifiers on those features.
    """
    input:
        data=P.data_files,
        cache=lambda wc: [] if wc.regime == P.baseline else [BASELINE_SEAL],
    output:
        **sealed(L.regime_pattern()),
    params:
        **P.params("regime"),
        flags=lambda wc: P.regime_flags(wc.regime),
    log:
        L.log("pheno_regime", "{regime}"),
    threads: 2
    shell:
        ENV + "{PY} -m phenotype cv --config {STUDY} {params.flags} --output {output.folder:q} --no-progress" + LOGGED
        + " && " + SEAL + "{output.folder:q}"


rule pheno_cv:
    """Every regime together in the same folds, on the cached features: the compared report (opens with the answer)."""
    input:
        data=P.data_files,
        regimes=[P.regime_seal(r) for r in P.regimes],
    output:
        directory(L.staged(L.report_dir)),
    params:
        **P.params("report"),
    log:
        L.log("pheno_cv"),
    threads: 2
    shell:
        ENV + "{PY} -m phenotype cv --config {STUDY} --cache-dir {PHENO_CACHE} --output {output:q} --no-progress" + LOGGED
