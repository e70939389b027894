from visfeat.engine.cores import job_threads


rule extract:
    # One GPU job per shard; it reads its slice of the manifest itself (sources/manifest.py read_shard), so a dataset of N
    # shards plans N extraction jobs and no job per shard list. Resume state lives in {output}.parts/ beside the
    # declared output, so a killed or preempted job continues from its last flushed batch when rerun; the .h5
    # appears only when complete. update(): Snakemake keeps the previous store while the job runs (and puts it
    # back if the job fails), so a rerun after the dataset changed reuses its rows of unchanged images and
    # extracts only the rest (engine/run.py); a shard with nothing new does not even load the model.
    input:
        unpack(get_extract_input),
    output:
        update(f"{R}/{{dataset}}/{{extractor}}/shards/{{i}}.h5"),
    params:
        # one input function and few params functions: Snakemake's cost per planned job grows with their number
        args=lambda wc, input: ARGS.extract_job(
            wc.dataset, wc.extractor, input.weights, input.boxes, int(wc.i), input.tars
        ),
        # Snakemake's params rerun trigger skips input-derived params (as `args` is): the instance's config again,
        # as a plain param, so a changed option reruns the job
        instance=lambda wc: ARGS.extract_instance(wc.extractor),
    log:
        # the job's output, and its counts and timings as data for the report (`throughput`), kept out of the
        # store so that its bytes stay reproducible
        log="logs/extract/{dataset}/{extractor}/{i}.log",
        stats="logs/extract/{dataset}/{extractor}/{i}.stats.json",
    # the decoding workers + the main process; `workers: auto`: the cores engine/cores.py job_threads says
    threads: lambda wc: job_threads(EXTRACTORS[wc.extractor]["workers"])
    resources:
        gpu=1,
    conda:
        get_extract_env
    shell:
        visfeat(
            "extract {params.args} --manifest {input.manifest} --shard {wildcards.i} --out {output} "
            "--stats {log.stats}",
            log="{log.log}",
            progress=True,
        )
