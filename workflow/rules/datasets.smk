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


rule download_archive:
    # a registry archive (config/datasets.yaml): resumable, retried, sha256-checked where published, free disk
    # checked first, unpacked atomically; a localrule, so compute nodes without internet never try
    output:
        directory(f"{RES}/archives/{{archive}}"),
    params:
        args=archive_args,
        visfeat=VISFEAT,
    log:
        "logs/download_archive/{archive}.log",
    localrule: True
    retries: 2
    conda:
        "../../envs/cpu.yaml"
    shell:
        "{params.visfeat} prepare --source archive {params.args} --dest {output} > {log} 2>&1 "
        "|| (tail -n 3 {log} >&2; exit 1)"


rule manifest:
    input:
        get_dataset_input,
    output:
        f"{R}/{{dataset}}/manifest.parquet",
    params:
        args=manifest_args,
        visfeat=VISFEAT,
    log:
        "logs/manifest/{dataset}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "{params.visfeat} manifest {params.args} --out {output} > {log} 2>&1 || (tail -n 3 {log} >&2; exit 1)"
