# Offline stand-in: calibrated classifier weights (the tiny Stable Diffusion is common.smk's, shared by every task),
# and the default prompt templates copied into OUT.


if not P.templates_given:

    rule default_templates:
        """The toolkit's default templates into OUT/templates.yaml, an input of every LoRA and generation job: their
        content is this rule's param, so no job's input names the toolkit's folder (moving it re-runs nothing)."""
        output:
            str(L.templates_file),
        params:
            sha256=lambda wildcards, digest=studyplan.default_templates_digest(): digest,
        log:
            L.log("default_templates"),
        localrule: True
        shell:
            ENV + "{PY} -m study.outputs default-templates {output:q}" + LOGGED


rule calibrate_weights:
    """Offline stand-in for ImageNet weights (`classify.weights: calibrated`)."""
    input:
        P.images,
    output:
        str(L.calibrated_weights),
    params:
        **P.params("calibrate"),
    log:
        L.log("calibrate_weights"),
    threads: 2
    shell:
        ENV + "{PY} -m classify calibrate-weights --config {STUDY} --output {output:q} --no-progress" + LOGGED
