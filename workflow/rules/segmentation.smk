# The segmentation study (`study.task: segmentation`), in place of the classification rules:
# [tiny model] -> pairs split -> one ControlNet per fold -> synthetic pairs per fold and tree
# (`aug`, `density<X>`) -> manifest -> realism -> cross-validation and report.
# Paths, folds, trees and re-run digests come from study/segmentation.py (P is its SegPlan).
# Rule names differ from the classification rules' so the SLURM profile sizes each.

CN_ROOT = quote(P.controlnet_root)
SEG_MODEL = quote(P.model)
TREES = P.trees
SEG_REPORT_INPUTS = dict(trees=P.all_tree_dirs(), manifest=str(P.manifest), split=SPLIT, pairs=P.pair_files,
                         weights=P.unet_weights)


if P.tiny_model:

    rule tiny_model:
        """The tiny random Stable Diffusion (`controlnet.model: tiny`): an offline smoke model."""
        output:
            directory(P.model_dir),
        log:
            LOGS / "tiny_model.log",
        threads: 1
        shell:
            ENV + "{PY} -m lora tiny-model {output}" + LOGGED


if not P.split_given:

    rule pairs_split:
        """The folds over the image-mask pairs (written once; every ControlNet, tree and CV run of fold k follows it)."""
        input:
            P.pair_files,
        output:
            SPLIT,
        params:
            settings=P.digests["split"],
        log:
            LOGS / "pairs_split.log",
        threads: 1
        shell:
            ENV + "{PY} -m study.segmentation split --config {STUDY} --output {output}" + LOGGED


rule controlnet:
    """One ControlNet on fold {fold}'s training pairs only (its fingerprint lists the sha256 of each)."""
    input:
        pairs=P.pair_files,
        split=SPLIT,
        model=MODEL_INPUT,
    output:
        directory(str(P.controlnet_root) + "/fold_{fold}/controlnet"),
    params:
        settings=P.digests["controlnet"],
    log:
        str(LOGS) + "/controlnet/fold_{fold}.log",
    threads: 1
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m controlnet train --config {STUDY} --model {SEG_MODEL} --split {input.split} "
        "--fold {wildcards.fold} --output {CN_ROOT}" + LOGGED


rule pairs:
    """Synthetic image-mask pairs of fold {fold}, every tree, from that fold's ControlNet and training masks.

    One job per fold loads the pipeline once for all its trees. It writes into its own staging root
    (resumed after a kill: finished pairs are kept) and renames each finished tree into OUT/synthetic/fold_<k>/.
    """
    input:
        controlnet=lambda wc: P.controlnet_dir(wc.fold),
        pairs=P.pair_files,
        split=SPLIT,
        model=MODEL_INPUT,
    output:
        [directory(P.tree_pattern(t)) for t in TREES],
    params:
        settings=P.digests["pairs"],
        stage=lambda wc: quote(P.staging_dir(wc.fold)),
        move=lambda wc: " && ".join(
            f"mv {quote(P.staged_tree_dir(wc.fold, t))} {quote(P.tree_dir(wc.fold, t))}" for t in TREES),
    log:
        str(LOGS) + "/pairs/fold_{fold}.log",
    threads: 1
    resources:
        gpu=1,
    shell:
        # --overwrite: the staging root is this job's own; pairs left there by a killed run of other settings are remade.
        ENV + GPU + "{PY} -m controlnet generate --config {STUDY} --model {SEG_MODEL} --split {input.split} "
        "--fold {wildcards.fold} --output {CN_ROOT} --synthetic {params.stage} --overwrite --no-progress" + LOGGED + "; "
        "{params.move} && rm -r {params.stage} && "
        "{PY} -m study.segmentation set-aside --config {STUDY} --fold {wildcards.fold} >> {log} 2>&1"


rule pairs_manifest:
    """OUT/synthetic/manifest.jsonl over every tree (`controlnet generate --count 0` makes no pair, only rebuilds it)."""
    input:
        trees=P.all_tree_dirs(),
        controlnets=P.controlnet_dirs(),
        split=SPLIT,
        model=MODEL_INPUT,
    output:
        str(P.manifest),
    log:
        LOGS / "pairs_manifest.log",
    threads: 1
    shell:
        ENV + "{PY} -m controlnet generate --config {STUDY} --model {SEG_MODEL} --split {input.split} --fold all "
        "--output {CN_ROOT} --synthetic {SYNTHETIC_ROOT} --count 0 --no-progress" + LOGGED


rule seg_realism:
    """KID, the two-sample test and the mask consistency of the synthetic pairs against the real ones."""
    input:
        **SEG_REPORT_INPUTS,
    output:
        directory(P.realism_dir),
    params:
        settings=P.digests["realism"],
    log:
        LOGS / "realism.log",
    threads: 4
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m segment realism --config {STUDY} --synthetic {SYNTHETIC_ROOT} --output {output} --no-progress" + LOGGED


rule seg_cv:
    """Segmentation cross-validation over every mix and tree, tested on real pairs only, and the report."""
    input:
        **SEG_REPORT_INPUTS,
        realism=P.realism_dir,
    output:
        directory(P.report_dir),
    params:
        settings=P.digests["cv"],
    log:
        LOGS / "cv.log",
    threads: 4
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m segment cv --config {STUDY} --split {input.split} --synthetic {SYNTHETIC_ROOT} "
        "--realism {input.realism} --output {output} --no-progress" + LOGGED
