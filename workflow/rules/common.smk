# Shared by every rule: the study plan (from the study file), job environment, logs, inputs.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir).parent))  # the toolkit's packages, also when not installed
from study import plan as studyplan  # noqa: E402
from study.plan import quote  # noqa: E402

if not workflow.configfiles:
    sys.exit("error: give the study file: snakemake --cores all --configfile STUDY.yaml")
P = studyplan.load(workflow.configfiles[-1])
for _w in P.warnings:
    print(f"warning: {_w}", file=sys.stderr)

PY = quote(sys.executable)  # the environment that runs snakemake has the toolkit
STUDY = quote(P.study_file)
# Each job's OpenMP/BLAS threads (torch and TensorFlow follow OMP_NUM_THREADS) = its share of --cores.
ENV = ("export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} "
       "PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1; ")
GPU = f"{PY} -m prompts.slots -- "  # pins a GPU job to a GPU no other job holds (no GPU: runs as is)
# The command's output goes to its log; on failure its last lines (the one-line error) are shown too.
LOGGED = " > {log} 2>&1 || {{ status=$?; tail -n 20 {log} >&2; exit $status; }}"
LOGS = P.out / "logs"
WEIGHTS_INPUT = [P.classifier_weights] if P.calibrated or P.classifier_weights not in ("imagenet", "none") else []
WEIGHTS_FLAG = f"--weights {quote(P.classifier_weights)}" if P.calibrated else ""
MODEL_INPUT = [str(P.model_dir)] if P.tiny_model else []
SPLIT = str(P.split)
LORA_MODEL, GENERATE_MODEL = quote(P.lora_model), quote(P.generate_model)
LORA_ROOT, SYNTHETIC_ROOT = quote(P.lora_root), quote(P.synthetic_root)


wildcard_constraints:
    fold=r"\d+",
    group=r"[^/]+",
    weight=r"w[^/]+",
