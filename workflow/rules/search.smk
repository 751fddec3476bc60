# The parameter search as Snakemake jobs (`snakemake --cores all search --configfile study.yaml`; docs/tutorials/search.md).
#
# search.workers trial workers run at once, each a job with its own core or GPU slot, all sharing
# one Optuna storage (search.storage: a journal file by default, an RDB URL on a cluster); each runs
# trials until search.trials are COMPLETE over all of them. A worker killed mid-trial leaves a
# RUNNING trial that the others mark FAIL (its process is gone); Snakemake retries the worker.
# `search_report` then writes SEARCH/search.html, SEARCH/trials.csv and SEARCH/best/study.yaml:
# the best settings as a study of its own (outputs in SEARCH/best/, the same folds), run with
# `snakemake --directory SEARCH/best --configfile SEARCH/best/study.yaml` (`make search` does),
# after which `compare` writes OUT/comparison.html and .md.
from prompts.fingerprint import settings_part  # noqa: E402
from study import search as studysearch  # noqa: E402
from study.plan import readable  # noqa: E402

_STUDY_SETTINGS = P.study  # the merged, validated study (--configfile(s) and --config overrides)
SEARCH_OUT = studysearch.workflow_search_dir(_STUDY_SETTINGS, P.out)
BEST_STUDY = str(SEARCH_OUT / studysearch.BEST_FILE)
BEST_OUT = SEARCH_OUT / studysearch.BEST_DIR
SEARCH_FLAGS = (f"--config {STUDY} --split {quote(SPLIT)} --output {quote(SEARCH_OUT)} --model {LORA_MODEL} "
                f"{WEIGHTS_FLAG} --no-progress")
# The settings a trial reads, readable (a dry run names the changed key): search, lora, generate, realism.
SEARCH_PARAMS = {name: (lambda wildcards, text=text: text) for name, text in
                 {**P.settings["lora"], **P.settings["generate"], **P.settings["realism"],
                  **readable("search", settings_part(_STUDY_SETTINGS.search))}.items()}


wildcard_constraints:
    worker=r"\d+",


localrules:
    search,
    compare,


rule search:
    """The search and its page; the best settings as a study file of its own."""
    input:
        str(SEARCH_OUT / studysearch.HTML_FILE),
        BEST_STUDY,


rule search_worker:
    """One trial worker: trials until search.trials are COMPLETE in the shared storage."""
    input:
        images=P.images,
        templates=str(P.templates),
        split=SPLIT,
        model=MODEL_INPUT,
        weights=WEIGHTS_INPUT,
    output:
        touch(str(SEARCH_OUT) + "/workers/{worker}.done"),
    params:
        **SEARCH_PARAMS,
    log:
        L.log("search", "worker_{worker}"),
    threads: 1
    resources:
        gpu=1,
    retries: 2  # a killed worker's trial is failed by the others; the retried worker finds N complete or goes on
    shell:
        ENV + GPU + "{PY} -m study search " + SEARCH_FLAGS + LOGGED


rule search_report:
    """SEARCH/search.html, trials.csv and best/study.yaml over every worker's trials (no trial is left to run)."""
    input:
        expand(str(SEARCH_OUT) + "/workers/{worker}.done", worker=range(_STUDY_SETTINGS.search.workers)),
    output:
        html=str(SEARCH_OUT / studysearch.HTML_FILE),
        best=BEST_STUDY,
    params:
        **SEARCH_PARAMS,
    log:
        L.log("search", "report"),
    threads: 1
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m study search " + SEARCH_FLAGS + LOGGED


rule compare:
    """OUT/comparison.html and .md: the default study beside the best study (run it first: `make search`)."""
    input:
        default=[L.report_dir, L.realism_dir],
        best=[str(BEST_OUT / "report"), str(BEST_OUT / "realism")],
        best_study=BEST_STUDY,
    output:
        html=str(P.out / "comparison.html"),
        md=str(P.out / "comparison.md"),
    log:
        L.log("compare"),
    threads: 1
    shell:
        ENV + "{PY} -m study compare --default {STUDY} --best {input.best_study:q} --search " + quote(SEARCH_OUT) + " "
        "--output " + quote(P.out / "comparison") + LOGGED
