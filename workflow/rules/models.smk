# Offline stand-in: calibrated classifier weights (the tiny Stable Diffusion is common.smk's, shared by every task).


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
