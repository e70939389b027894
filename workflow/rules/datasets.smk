rule prepare_dataset:
    # sample photos are copied from scikit-image; archives are downloaded (resumable, sha256-checked; the
    # partial file lives in resources/downloads/, beside the declared output) and unpacked atomically.
    output:
        directory(f"{RES}/datasets/{{prepared}}"),
    params:
        args=prepare_args,
        visfeat=VISFEAT,
    log:
        "logs/prepare_dataset/{prepared}.log",
    localrule: True
    retries: 2
    conda:
        "../../envs/cpu.yaml"
    shell:
        "{params.visfeat} prepare {params.args} --dest {output} > {log} 2>&1 || (tail -n 3 {log} >&2; exit 1)"


rule manifest:
    input:
        get_dataset_input,
    output:
        f"{R}/{{dataset}}/manifest.parquet",
    params:
        root=lambda wc: dataset_root(wc.dataset),
        source=lambda wc: DATASETS[wc.dataset]["source"],
        extra=lambda wc: (
            f"--list {shlex.quote(DATASETS[wc.dataset]['list'])}"
            if DATASETS[wc.dataset]["source"] == "list"
            else ""
        ),
        id_style=lambda wc: DATASETS[wc.dataset]["id_style"],
        visfeat=VISFEAT,
    log:
        "logs/manifest/{dataset}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "{params.visfeat} manifest --source {params.source} --root {params.root:q} {params.extra} "
        "--id-style {params.id_style} --out {output} > {log} 2>&1"
