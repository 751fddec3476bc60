# Synthetic images per (fold, LoRA weight) and their manifest.


rule generate:
    """Synthetic images of fold {fold} at one LoRA weight, from that fold's LoRAs.

    Each job writes into its own staging root and renames its finished tree into OUT/synthetic/:
    jobs running side by side never write into the same folder.
    """
    input:
        loras=lambda wc: P.lora_seals(wc.fold),
        images=P.images,
        templates=str(P.templates),
        split=SPLIT,
        model=MODEL_INPUT,
    output:
        **sealed(L.synthetic_pattern()),
    params:
        **P.params("generate"),
        weight=lambda wc: P.weight_of(wc.weight),
        stage=lambda wc: quote(L.generate_staging(wc.fold, wc.weight)),
    log:
        L.log("generate", FOLD, "{weight}"),
    threads: 1
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m generate --config {STUDY} --model {GENERATE_MODEL} --lora {LORA_ROOT} "
        "--split {input.split:q} --fold {wildcards.fold} --lora-weights {params.weight} "
        "--output {params.stage} --no-progress" + LOGGED + "; "
        "mv {params.stage}/" + layout.FOLD_PREFIX + "{wildcards.fold}/{wildcards.weight} {output.folder:q} && rm -r {params.stage} && "
        + SEAL + "{output.folder:q}"


rule synthetic_manifest:
    """OUT/synthetic/manifest.jsonl over every tree: `generate` finds every image made and only rewrites the manifest."""
    input:
        synthetic=P.all_synthetic_seals(),
        split=SPLIT,
        model=MODEL_INPUT,
    output:
        str(L.manifest),
    log:
        L.log("synthetic_manifest"),
    threads: 1
    shell:
        ENV + "{PY} -m generate --config {STUDY} --model {GENERATE_MODEL} --lora {LORA_ROOT} --split {input.split:q} "
        "--fold all --output {SYNTHETIC_ROOT} --no-progress" + LOGGED
