rule merge:
    # Streaming concatenation of the shard stores, validated: every manifest id exactly once (as a row or a
    # recorded failure; shard store k against the manifest's shard k, or for a tar source's manifest, which lists
    # tars, every id once by 64-bit hashes), finite values, shapes as declared. Memory is one shard's and a row
    # chunk, not the dataset's (store/merge.py).
    # `merge: virtual` (a dataset option) validates the same way but writes only the per-image metadata and maps
    # the fields onto the shard stores as HDF5 virtual datasets: the shards must then stay where they are.
    input:
        shards=get_shard_stores,
        manifest=f"{R}/{{dataset}}/manifest.parquet",
    output:
        f"{R}/{{dataset}}/{{extractor}}.h5",
    params:
        # the shards as a folder and a count: listing {input.shards} would pass Linux's 128 KiB argument limit
        args=lambda wc, input: ARGS.merge(wc.dataset, wc.extractor, input.shards),
        # Snakemake's params rerun trigger skips params derived from the input (as `args` is): the mode again as
        # a plain param, so switching `merge: copy` <-> `virtual` reruns the merge
        mode=lambda wc: ARGS.merge_mode(wc.dataset),
    log:
        "logs/merge/{dataset}/{extractor}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("merge --manifest {input.manifest} --out {output} {params.args}")
