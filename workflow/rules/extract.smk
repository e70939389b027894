rule extract:
    # One GPU job per shard. Resume state lives in {output}.parts/ beside the declared output, so a killed or
    # preempted job continues from its last flushed batch when rerun; the .h5 appears only when complete.
    input:
        shard=f"{R}/{{dataset}}/shards/{{i}}.txt",
        weights=get_weights,
        boxes=get_boxes,
    output:
        f"{R}/{{dataset}}/{{extractor}}/shards/{{i}}.h5",
    params:
        args=lambda wc, input: ARGS.extract(wc.extractor, input.weights, input.boxes),
        root=lambda wc: ARGS.dataset_root(wc.dataset),
    log:
        "logs/extract/{dataset}/{extractor}/{i}.log",
    threads: lambda wc: EXTRACTORS[wc.extractor]["workers"] + 1
    resources:
        gpu=1,
    conda:
        get_extract_env
    shell:
        visfeat("extract {params.args} --list {input.shard} --root {params.root:q} --out {output}")
