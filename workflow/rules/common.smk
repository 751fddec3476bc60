# Shared by every task's rules: the study plan (from Snakemake's merged config; its class comes from the task
# registry, study/tasks.py), the study lock, the ownership check and stale outputs (study/guard.py), the job
# environment, logs, seals, and the publishing of realism and the report. A task's own rules file holds only
# its own jobs.
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir).parent))  # the toolkit's packages, also when not installed
from prompts import layout  # noqa: E402
from study import guard  # noqa: E402
from study import plan as studyplan  # noqa: E402
from study import tasks  # noqa: E402
from study.plan import quote  # noqa: E402

if not workflow.configfiles:
    print("error: give the study file: snakemake --cores all --configfile STUDY.yaml", file=sys.stderr)
    sys.exit(2)
# The merged --configfile(s) and --config overrides; relative paths are relative to the first --configfile's folder.
P = studyplan.from_config(config, workflow.configfiles[0], workflow.config_settings.config_args)
L = P.layout
TASK = tasks.get(P.task)
for _w in P.warnings:
    print(f"warning: {_w}", file=sys.stderr)
guard.start(P, guard.run_kind(sys.argv, workflow), Path.cwd())

# The interpreter and the toolkit every job uses travel in the environment, never in a rule's command text:
# Snakemake re-runs a job whose command text changed ("Code has changed"), so a command naming
# .venv/bin/python3 (bare snakemake) rather than .venv/bin/python (python -m study.run), or the repository's
# old path after it moved, would re-run every finished job. Jobs import the toolkit this Snakefile belongs
# to (PYTHONPATH), also when another copy is installed. SLURM jobs inherit the environment (sbatch's default)
# and their own Snakemake sets it again from this file.
os.environ["CELLSYNTH_PYTHON"] = sys.executable  # the environment that runs snakemake has the toolkit
_REPO = str(Path(workflow.basedir).parent)
if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != _REPO:
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, os.environ.get("PYTHONPATH")) if p)
PY = '"$CELLSYNTH_PYTHON"'
STUDY = quote(L.study_file)  # the merged study every job reads (written by guard.start)
# Each job's OpenMP/BLAS threads (torch and TensorFlow follow OMP_NUM_THREADS) = its share of --cores.
ENV = ("export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} "
       "PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1; ")
GPU = f"{PY} -m prompts.slots -- "  # pins a GPU job to a GPU no other job holds (no GPU: runs as is)
# The command's output goes to its log; on failure its last lines (the one-line error) are shown too.
LOGGED = " > {log:q} 2>&1 || {{ status=$?; tail -n 20 {log:q} >&2; exit $status; }}"
SEAL = f"{PY} -m study.outputs seal "  # checksums of a finished folder output, beside it (a file Snakemake tracks)
PUBLISH = f"{PY} -m study.outputs publish "  # a finished staged folder over the published one, claimed, then its seal
FOLD = layout.FOLD_PREFIX + "{fold}"
MODEL_INPUT = [str(L.tiny_model_dir)] if P.tiny_model else []
SPLIT = str(P.split)
SYNTHETIC_ROOT = quote(L.synthetic_root)


def sealed(pattern):
    """A folder output and its seal file (`.NAME.sha256` beside it): deleting or editing a file re-runs the job."""
    return {"folder": directory(pattern), "seal": str(layout.seal_file(Path(pattern)))}


wildcard_constraints:
    fold=r"\d+",


if P.tiny_model:

    rule tiny_model:
        """The tiny random Stable Diffusion (`lora.model: tiny` or `controlnet.model: tiny`): an offline smoke model."""
        output:
            directory(L.tiny_model_dir),
        log:
            L.log("tiny_model"),
        threads: 1
        shell:
            ENV + "{PY} -m lora tiny-model {output:q}" + LOGGED + " && " + SEAL + "{output:q}"


# Realism and the cross-validation (each task's own rules) write into OUT/.stage/; a finished folder is then
# published into OUT/ by these two rules, the same for every task.


rule publish_realism:
    """The finished realism folder into OUT/realism/ (hard links), recorded as the toolkit's, sealed."""
    input:
        L.staged(L.realism_dir),
    output:
        folder=report(directory(L.realism_dir), patterns=["{name}.md"], category="Realism", caption="../report/realism.rst"),
        seal=str(layout.seal_file(L.realism_dir)),
    localrule: True
    shell:
        ENV + PUBLISH + "{input:q} {output.folder:q}"


rule publish_report:
    """The finished CV report into OUT/report/ (hard links), recorded, sealed: replaced only by a complete new one."""
    input:
        L.staged(L.report_dir),
    output:
        folder=report(directory(L.report_dir), htmlindex="report.html", category="Cross-validation",
                      caption="../report/cv.rst"),
        seal=str(layout.seal_file(L.report_dir)),
    localrule: True
    shell:
        ENV + PUBLISH + "{input:q} {output.folder:q}"
