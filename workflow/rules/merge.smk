rule merge:
    # Streaming concatenation of the shard stores, validated: every manifest id exactly once (as a row or a
    # recorded failure), finite values, shapes as declared. Memory is bounded by the row chunk, not the dataset.
    # `merge: virtual` (a dataset option) validates the same way but writes only the per-image metadata and maps
    # the fields onto the shard stores as HDF5 virtual datasets: the shards must then stay where they are.
    input:
        shards=get_shard_stores,
        manifest=f"{R}/{{dataset}}/manifest.parquet",
    output:
        f"{R}/{{dataset}}/{{extractor}}.h5",
    params:
        # the shards as a folder and a count: listing {input.shards} would pass Linux's 128 KiB argument limit
        args=lambda wc: ARGS.merge(wc.dataset, wc.extractor),
    log:
        "logs/merge/{dataset}/{extractor}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("merge --manifest {input.manifest} --out {output} {params.args}")
