# Realism and the cross-validation with its report. Each writes into OUT/.stage/ (Snakemake removes a
# failed job's outputs: only the staged folder goes); common.smk's publish_* rules then put a finished
# folder into OUT/.


rule realism:
    """KID and the real-vs-synthetic classifier test per class and LoRA weight."""
    input:
        synthetic=P.all_synthetic_seals(),
        manifest=str(L.manifest),
        images=P.images,
        weights=WEIGHTS_INPUT,
    output:
        directory(L.staged(L.realism_dir)),
    params:
        **P.params("realism"),
    log:
        L.log("realism"),
    threads: 4
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m classify realism --config {STUDY} --synthetic {SYNTHETIC_ROOT} {WEIGHTS_FLAG} "
        "--output {output:q} --no-progress" + LOGGED


rule cv:
    """Cross-validation over every training mix, and the report."""
    input:
        synthetic=P.all_synthetic_seals(),
        manifest=str(L.manifest),
        realism=str(layout.seal_file(L.realism_dir)),
        images=P.images,
        split=SPLIT,
        weights=WEIGHTS_INPUT,
        blind=P.blind_inputs,
    output:
        directory(L.staged(L.report_dir)),
    params:
        **P.params("cv"),
        realism=quote(L.realism_dir),
    log:
        L.log("cv"),
    threads: 4
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m classify cv --config {STUDY} --split {input.split:q} --synthetic {SYNTHETIC_ROOT} "
        "--realism {params.realism} {WEIGHTS_FLAG} --output {output:q} --no-progress" + LOGGED
