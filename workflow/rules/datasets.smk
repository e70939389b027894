rule prepare_dataset:
    # sample photos are copied from scikit-image; archives are downloaded (resumable, sha256-checked; the
    # partial file lives in resources/downloads/, beside the declared output) and unpacked atomically.
    output:
        directory(f"{RES}/datasets/{{prepared}}"),
    params:
        args=lambda wc: ARGS.prepare(wc.prepared),
    log:
        "logs/prepare_dataset/{prepared}.log",
    localrule: True
    retries: 2
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("prepare {params.args} --dest {output}")


rule download_archive:
    # a registry archive (config/datasets.yaml): resumable, retried, sha256-checked where published, free disk
    # checked first, unpacked atomically; a localrule, so compute nodes without internet never try
    output:
        directory(f"{RES}/archives/{{archive}}"),
    params:
        args=lambda wc: ARGS.download_archive(wc.archive),
    log:
        "logs/download_archive/{archive}.log",
    localrule: True
    retries: 2
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("prepare --source archive {params.args} --dest {output}")


rule manifest:
    input:
        get_dataset_input,
    output:
        f"{R}/{{dataset}}/manifest.parquet",
    params:
        args=lambda wc: ARGS.manifest(wc.dataset),
    log:
        "logs/manifest/{dataset}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("manifest {params.args} --out {output}")


rule download_urls:
    # a urls source: img2dataset downloads the list into webdataset tars (resize_mode no, JPEGs stored as served);
    # resumable: img2dataset's incremental mode skips finished tars, which live beside the declared output (the
    # record of finished tars), so a failed or killed job keeps them; a localrule (login nodes have the internet)
    input:
        lambda wc: DATASETS[wc.urls]["urls"],
    output:
        f"{RES}/datasets/{{urls}}/downloaded.tsv",
    params:
        args=lambda wc: ARGS.download_urls(wc.urls),
    log:
        "logs/download_urls/{urls}.log",
    localrule: True
    retries: 2
    conda:
        "../../envs/img2dataset.yaml"
    shell:
        visfeat("download-urls {params.args} --record {output}")
