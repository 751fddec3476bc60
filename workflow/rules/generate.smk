# Synthetic images per (fold, LoRA weight) and their manifest.


rule generate:
    """Synthetic images of fold {fold} at one LoRA weight, from that fold's LoRAs.

    Each job writes into its own staging root and renames its finished tree into OUT/synthetic/:
    jobs running side by side never write into the same folder.
    """
    input:
        loras=lambda wc: P.lora_dirs(wc.fold),
        images=P.images,
        templates=str(P.templates),
        split=SPLIT,
        model=MODEL_INPUT,
    output:
        directory(str(P.synthetic_root) + "/fold_{fold}/{weight}"),
    params:
        settings=P.digests["generate"],
        weight=lambda wc: P.weight_of(wc.weight),
        stage=lambda wc: quote(P.staging_dir(wc.fold, wc.weight)),
    log:
        str(LOGS) + "/generate/fold_{fold}/{weight}.log",
    threads: 1
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m generate --config {STUDY} --model {GENERATE_MODEL} --lora {LORA_ROOT} "
        "--split {input.split} --fold {wildcards.fold} --lora-weights {params.weight} "
        "--output {params.stage} --no-progress" + LOGGED + "; "
        "mv {params.stage}/fold_{wildcards.fold}/{wildcards.weight} {output} && rm -r {params.stage}"


rule synthetic_manifest:
    """OUT/synthetic/manifest.jsonl over every tree: `generate` finds every image made and only rewrites the manifest."""
    input:
        synthetic=P.all_synthetic_dirs(),
        split=SPLIT,
        model=MODEL_INPUT,
    output:
        str(P.synthetic_root / "manifest.jsonl"),
    log:
        LOGS / "synthetic_manifest.log",
    threads: 1
    shell:
        ENV + "{PY} -m generate --config {STUDY} --model {GENERATE_MODEL} --lora {LORA_ROOT} --split {input.split} "
        "--fold all --output {SYNTHETIC_ROOT} --no-progress" + LOGGED
