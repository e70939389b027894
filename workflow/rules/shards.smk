rule shard:
    # shard i = the i-th contiguous block of the manifest sorted by image_id: deterministic, stable when rerun
    input:
        f"{R}/{{dataset}}/manifest.parquet",
    output:
        f"{R}/{{dataset}}/shards/{{i}}.txt",
    params:
        n=lambda wc: DATASETS[wc.dataset]["shards"],
    log:
        "logs/shard/{dataset}/{i}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("shard --manifest {input} --n {params.n} --index {wildcards.i} --out {output}")
