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


if len(P.lora_chunks()) == len(P.groups):

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

else:
    # lora.together: one job per chunk of a fold's groups trains them in one pass (lora/together.py); each group's
    # folder is still its own sealed output, as one job per group leaves it.
    for _index, _chunk in enumerate(P.lora_chunks()):

        rule:
            name:
                f"lora_together_{_index}"
            input:
                images=P.images,
                templates=str(P.templates),
                split=SPLIT,
                model=MODEL_INPUT,
            output:
                **{f"{kind}_{i}": path for i, g in enumerate(_chunk)
                   for kind, path in sealed(L.lora_pattern().replace("{group}", g)).items()},
            params:
                **P.params("lora"),
                select=P.lora_chunk_flags(_chunk),
            log:
                L.log("lora", FOLD, f"together_{_index}"),
            threads: 1
            resources:
                gpu=1,
            shell:
                ENV + GPU + "{PY} -m lora train --config {STUDY} --model {LORA_MODEL} --split {input.split:q} "
                "--fold {wildcards.fold} {params.select} --output {LORA_ROOT} --resume auto" + LOGGED
                + "".join(f" && {SEAL}{{output.folder_{i}:q}}" for i in range(len(_chunk)))
