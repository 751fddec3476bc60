# Offline stand-ins: the tiny Stable Diffusion and calibrated classifier weights.


rule tiny_model:
    """The tiny random Stable Diffusion (`lora.model: tiny`): an offline smoke model."""
    output:
        directory(L.tiny_model_dir),
    log:
        L.log("tiny_model"),
    threads: 1
    shell:
        ENV + "{PY} -m lora tiny-model {output:q}" + LOGGED


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
