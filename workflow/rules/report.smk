rule report_features:
    # figures for `snakemake --report`: sample images, feature norms, failures, throughput per shard; whole-store
    # figures read a bounded sample of rows spread over the store (analysis/report.py `sample_spans`)
    input:
        f"{R}/{{dataset}}/{{extractor}}.h5",
    output:
        samples=report(
            f"{R}/report/{{dataset}}/{{extractor}}/samples.png",
            caption="../report/samples.rst",
            category="{dataset}",
            subcategory="{extractor}",
        ),
        norms=report(
            f"{R}/report/{{dataset}}/{{extractor}}/norms.png",
            caption="../report/norms.rst",
            category="{dataset}",
            subcategory="{extractor}",
        ),
        classes=report(
            f"{R}/report/{{dataset}}/{{extractor}}/classes.png",
            caption="../report/classes.rst",
            category="{dataset}",
            subcategory="{extractor}",
        ),
        failures=report(
            f"{R}/report/{{dataset}}/{{extractor}}/failures.png",
            caption="../report/failures.rst",
            category="{dataset}",
            subcategory="{extractor}",
        ),
        throughput=report(
            f"{R}/report/{{dataset}}/{{extractor}}/throughput.png",
            caption="../report/throughput.rst",
            category="{dataset}",
            subcategory="{extractor}",
        ),
    params:
        args=lambda wc, output: ARGS.report_features(wc.dataset, wc.extractor, os.path.dirname(output.samples)),
    log:
        "logs/report_features/{dataset}/{extractor}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("report --store {input} {params.args}")


rule report_kmeans:
    input:
        unpack(get_report_kmeans_input),
    output:
        objective=report(
            f"{R}/report/kmeans/{{kmeans}}/objective.png",
            caption="../report/kmeans.rst",
            category="k-means",
            subcategory="{kmeans}",
        ),
        sizes=report(
            f"{R}/report/kmeans/{{kmeans}}/cluster_sizes.png",
            caption="../report/kmeans.rst",
            category="k-means",
            subcategory="{kmeans}",
        ),
        codes=report(
            f"{R}/report/kmeans/{{kmeans}}/codes.png",
            caption="../report/kmeans.rst",
            category="k-means",
            subcategory="{kmeans}",
        ),
    params:
        args=lambda wc, input, output: ARGS.report_kmeans(
            wc.kmeans, os.path.dirname(output.objective), input.get("codes")
        ),
    log:
        "logs/report_kmeans/{kmeans}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("report --centroids {input.centroids} {params.args}")
