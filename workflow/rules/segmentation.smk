# The segmentation study (`study.task: segmentation`): its own jobs only (common.smk has the tiny model and
# the publishing of realism and the report):
# pairs split -> one ControlNet per fold -> synthetic pairs per fold and tree (`aug`, `density<X>`)
# -> manifest -> realism -> cross-validation and report.
# P is a study.segmentation.SegPlan: folds, trees and readable params (`P.params(rule)`); every path comes
# from its StudyLayout (L). ControlNets and pair trees are sealed folder outputs; realism and the report are
# written into OUT/.stage/ and published whole. Rule names differ from the classification rules' so the SLURM
# profile sizes each.

CN_ROOT = quote(L.controlnet_root)
SEG_MODEL = quote(P.model)
TREES = P.trees
SEG_REPORT_INPUTS = dict(trees=P.all_tree_seals(), manifest=str(L.manifest), split=SPLIT, pairs=P.pair_files,
                         weights=P.unet_weights)


if not P.split_given:

    rule pairs_split:
        """The folds over the image-mask pairs (written once; every ControlNet, tree and CV run of fold k follows it)."""
        input:
            P.pair_files,
        output:
            SPLIT,
        params:
            **P.params("split"),
        log:
            L.log("pairs_split"),
        threads: 1
        shell:
            ENV + "{PY} -m study.segmentation split --config {STUDY} --output {output:q}" + LOGGED


rule controlnet:
    """One ControlNet on fold {fold}'s training pairs only (its fingerprint lists the sha256 of each)."""
    input:
        pairs=P.pair_files,
        split=SPLIT,
        model=MODEL_INPUT,
    output:
        **sealed(L.controlnet_pattern()),
    params:
        **P.params("controlnet"),
    log:
        L.log("controlnet", FOLD),
    threads: 1
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m controlnet train --config {STUDY} --model {SEG_MODEL} --split {input.split:q} "
        "--fold {wildcards.fold} --output {CN_ROOT}" + LOGGED + " && " + SEAL + "{output.folder:q}"


rule pairs:
    """Synthetic image-mask pairs of fold {fold}, every tree, from that fold's ControlNet and training masks.

    One job per fold loads the pipeline once for all its trees. It writes into its own staging root
    (resumed after a kill: finished pairs are kept) and renames each finished tree into OUT/synthetic/fold_<k>/,
    then seals it. Trees of earlier settings were moved to OUT/dropped/ before any job (study/guard.py).
    """
    input:
        controlnet=lambda wc: P.controlnet_seal(wc.fold),
        pairs=P.pair_files,
        split=SPLIT,
        model=MODEL_INPUT,
    output:
        trees=[directory(L.pairs_tree_pattern(t)) for t in TREES],
        seals=[str(layout.seal_file(L.pairs_tree_pattern(t))) for t in TREES],
    params:
        **P.params("pairs"),
        stage=lambda wc: quote(L.pairs_staging(wc.fold)),
        move=lambda wc: " && ".join(
            f"mv {quote(L.staged_pairs_tree(wc.fold, t))} {quote(L.pairs_tree(wc.fold, t))}" for t in TREES),
        seal=lambda wc: " && ".join(SEAL + quote(L.pairs_tree(wc.fold, t)) for t in TREES),
    log:
        L.log("pairs", FOLD),
    threads: 1
    resources:
        gpu=1,
    shell:
        # --overwrite: the staging root is this job's own; pairs left there by a killed run of other settings are remade.
        ENV + GPU + "{PY} -m controlnet generate --config {STUDY} --model {SEG_MODEL} --split {input.split:q} "
        "--fold {wildcards.fold} --output {CN_ROOT} --synthetic {params.stage} --overwrite --no-progress" + LOGGED + "; "
        "{params.move} && rm -r {params.stage} && {params.seal}"


rule pairs_manifest:
    """OUT/synthetic/manifest.jsonl over every tree (`controlnet generate --count 0` makes no pair, only rebuilds it)."""
    input:
        trees=P.all_tree_seals(),
        controlnets=[P.controlnet_seal(k) for k in P.folds],
        split=SPLIT,
        model=MODEL_INPUT,
    output:
        str(L.manifest),
    log:
        L.log("pairs_manifest"),
    threads: 1
    shell:
        ENV + "{PY} -m controlnet generate --config {STUDY} --model {SEG_MODEL} --split {input.split:q} --fold all "
        "--output {CN_ROOT} --synthetic {SYNTHETIC_ROOT} --count 0 --no-progress" + LOGGED


rule seg_realism:
    """KID, the two-sample test and the mask consistency of the synthetic pairs against the real ones."""
    input:
        **SEG_REPORT_INPUTS,
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
        ENV + GPU + "{PY} -m segment realism --config {STUDY} --synthetic {SYNTHETIC_ROOT} --output {output:q} --no-progress" + LOGGED


rule seg_cv:
    """Segmentation cross-validation over every mix and tree, tested on real pairs only, and the report."""
    input:
        **SEG_REPORT_INPUTS,
        realism=str(layout.seal_file(L.realism_dir)),
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
        ENV + GPU + "{PY} -m segment cv --config {STUDY} --split {input.split:q} --synthetic {SYNTHETIC_ROOT} "
        "--realism {params.realism} --output {output:q} --no-progress" + LOGGED
