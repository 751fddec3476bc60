# The folds and one LoRA per (fold, group).


if not P.split_given:

    rule split:
        """The folds (written once; every LoRA, image tree and CV run of fold k follows it)."""
        input:
            P.images,
        output:
            SPLIT,
        params:
            **P.params("split"),
        log:
            L.log("split"),
        threads: 1
        shell:
            ENV + "{PY} -m classify split --config {STUDY} --output {output:q} --no-progress" + LOGGED


rule lora:
    """One LoRA: fold {fold}'s training images of one group; resumes from its checkpoint after a kill."""
    input:
        images=P.images,
        templates=str(P.templates),
        split=SPLIT,
        model=MODEL_INPUT,
    output:
        **sealed(L.lora_pattern()),
    params:
        **P.params("lora"),
        select=lambda wc: P.lora_flags(wc.group),
    log:
        L.log("lora", FOLD, "{group}"),
    threads: 1
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m lora train --config {STUDY} --model {LORA_MODEL} --split {input.split:q} "
        "--fold {wildcards.fold} {params.select} --output {LORA_ROOT} --resume auto" + LOGGED + " && "
        + SEAL + "{output.folder:q}"
