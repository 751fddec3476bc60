# Offline stand-ins: the tiny Stable Diffusion and calibrated classifier weights.


rule tiny_model:
    """The tiny random Stable Diffusion (`lora.model: tiny`): an offline smoke model."""
    output:
        directory(P.model_dir),
    log:
        LOGS / "tiny_model.log",
    threads: 1
    shell:
        ENV + "{PY} -m lora tiny-model {output}" + LOGGED


rule calibrate_weights:
    """Offline stand-in for ImageNet weights (`classify.weights: calibrated`)."""
    input:
        P.images,
    output:
        str(P.calibrated_file),
    params:
        settings=P.digests["calibrate"],
    log:
        LOGS / "calibrate_weights.log",
    threads: 2
    shell:
        ENV + "{PY} -m classify calibrate-weights --config {STUDY} --output {output} --no-progress" + LOGGED
