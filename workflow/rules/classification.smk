# The classification study (`study.task: classification`, the default): names its rules share.
# P is a study.plan.Plan. Rules: models.smk, lora.smk, generate.smk, classify.smk, search.smk.

WEIGHTS_INPUT = [P.classifier_weights] if P.calibrated or P.classifier_weights not in ("imagenet", "none") else []
WEIGHTS_FLAG = f"--weights {quote(P.classifier_weights)}" if P.calibrated else ""
LORA_MODEL, GENERATE_MODEL = quote(P.lora_model), quote(P.generate_model)
LORA_ROOT = quote(L.lora_root)


wildcard_constraints:
    group=r"[^/]+",
    weight=r"w[^/]+",
