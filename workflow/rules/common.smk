# Shared by every task's rules: the study plan (from Snakemake's merged config: a study.plan.Plan, or a
# study.segmentation.SegPlan for `study.task: segmentation`), the study lock and stale outputs (study/guard.py),
# the job environment, logs, seals. Task-specific names live in classification.smk and segmentation.smk.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir).parent))  # the toolkit's packages, also when not installed
from prompts import layout  # noqa: E402
from study import guard  # noqa: E402
from study import plan as studyplan  # noqa: E402
from study.plan import quote  # noqa: E402

if not workflow.configfiles:
    print("error: give the study file: snakemake --cores all --configfile STUDY.yaml", file=sys.stderr)
    sys.exit(2)
# The merged --configfile(s) and --config overrides; relative paths are relative to the first --configfile's folder.
P = studyplan.from_config(config, workflow.configfiles[0], workflow.config_settings.config_args)
L = P.layout
for _w in P.warnings:
    print(f"warning: {_w}", file=sys.stderr)
guard.start(P, guard.run_kind(sys.argv, workflow), Path.cwd())

PY = quote(sys.executable)  # the environment that runs snakemake has the toolkit
STUDY = quote(L.study_file)  # the merged study every job reads (written by guard.start)
# Each job's OpenMP/BLAS threads (torch and TensorFlow follow OMP_NUM_THREADS) = its share of --cores.
# Jobs import the toolkit this Snakefile belongs to (PYTHONPATH), also when another copy is installed.
ENV = ("export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} "
       "PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1 "
       f"PYTHONPATH={quote(Path(workflow.basedir).parent)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")
GPU = f"{PY} -m prompts.slots -- "  # pins a GPU job to a GPU no other job holds (no GPU: runs as is)
# The command's output goes to its log; on failure its last lines (the one-line error) are shown too.
LOGGED = " > {log:q} 2>&1 || {{ status=$?; tail -n 20 {log:q} >&2; exit $status; }}"
SEAL = f"{PY} -m study.outputs seal "  # checksums of a finished folder output, beside it (a file Snakemake tracks)
PUBLISH = f"{PY} -m study.outputs publish "  # a finished staged folder over the published one, then its seal
FOLD = layout.FOLD_PREFIX + "{fold}"
MODEL_INPUT = [str(L.tiny_model_dir)] if P.tiny_model else []
SPLIT = str(P.split)
SYNTHETIC_ROOT = quote(L.synthetic_root)


def sealed(pattern):
    """A folder output and its seal file (`.NAME.sha256` beside it): deleting or editing a file re-runs the job."""
    return {"folder": directory(pattern), "seal": str(layout.seal_file(Path(pattern)))}


wildcard_constraints:
    fold=r"\d+",
