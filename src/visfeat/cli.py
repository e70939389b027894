"""`visfeat` command line. Each subcommand imports only what it needs, so the CPU steps run without torch."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_presets(a) -> int:
    from visfeat.extractors.cards import card, entry, find
    from visfeat.extractors.registry import PRESETS, presets

    if a.preset:
        print("\n".join(card(p) for p in find(a.preset)), end="")
        return 0
    for name in presets():
        print(name if a.names else entry(PRESETS[name]))
    return 0


def cmd_extract(a) -> int:
    from visfeat.engine.request import ExtractRequest
    from visfeat.engine.run import extract
    from visfeat.engine.stats import write_stats

    res = extract(ExtractRequest.from_args(a))
    write_stats(a.stats, res)  # measurements beside the log: the store stays reproducible
    return 0 if res else 1


def cmd_inspect(a) -> int:
    from visfeat.store.inspect import describe

    print(describe(a.file))
    return 0


def cmd_export(a) -> int:
    from visfeat.interop.exporters import export

    vectors = {k: v for k, v in (("field", a.field), ("part_rows", a.part_rows), ("dtype", a.dtype),
                                 ("normalize", a.normalize), ("manifest", a.manifest)) if v is not None}
    n = export(a.format, a.file, a.out, split=a.split, names=a.names, **vectors)
    print(f"exported {n} images to {a.out} ({a.format})")
    return 0


def cmd_import(a) -> int:
    from visfeat.interop.importers import import_features

    src = Path(a.file)
    if src.is_dir():  # a downloaded folder: the named member, or its only file
        files = [src / a.member] if a.member else [f for f in src.rglob("*") if f.is_file()]
        if len(files) != 1 or not files[0].is_file():
            raise SystemExit(f"{src}: give --member (files: {', '.join(str(f.relative_to(src)) for f in files[:10])})")
        src = files[0]
    n = import_features(a.format, str(src), a.out, preset=a.preset or "", source_url=a.url or "", id_style=a.id_style)
    print(f"imported {n} images from {a.file} ({a.format}) -> {a.out}")
    return 0


def cmd_compare(a) -> int:
    import json as _json

    from visfeat.interop.compare import compare, table

    res = compare(a.a, a.b, plot=a.plot)
    print(_json.dumps(res) if a.json else table(res))
    return 0


def cmd_manifest(a) -> int:
    from visfeat.sources.kinds import MANIFEST_SOURCES, SOURCE_KINDS, ManifestRequest

    if a.source not in MANIFEST_SOURCES:  # checked here, not by argparse: the parser stays free of the kinds' readers
        raise SystemExit(f"visfeat manifest: --source {a.source!r} is not a source kind; kinds: "
                         f"{', '.join(MANIFEST_SOURCES)}")
    print("\n".join(SOURCE_KINDS[a.source].build_manifest(ManifestRequest.from_args(a))))
    return 0


def numbered_files(files: list[str], folder: str | None, count: int | None, suffix: str, what: str) -> list[str]:
    """Files given one by one, or as FOLDER/{i}SUFFIX for i in 0..COUNT-1: the workflow's form, whose command line
    stays short whatever the shard count (Linux caps one argument at 128 KiB)."""
    if (folder is None) != (count is None):
        raise SystemExit(f"{what}: give the folder and the count together")
    if folder is None:
        return files
    if files:
        raise SystemExit(f"{what}: give the files one by one, or a folder and a count, not both")
    return [f"{folder}/{i}{suffix}" for i in range(count)]


def cmd_merge(a) -> int:
    from visfeat.sources.manifest import iter_shard_ids, per_image_rows
    from visfeat.store.merge import merge, merge_virtual

    shards = numbered_files(a.shards, a.shard_dir, a.count, ".h5", "merge --shard-dir/--shards")
    if not shards:
        raise SystemExit("merge: no shards given (SHARD.h5 ..., or --shard-dir DIR --shards N)")
    # a manifest of tars (webdataset, urls) names no images: then the ids are only checked to be unique
    expected = iter_shard_ids(a.manifest, len(shards)) if a.manifest and per_image_rows(a.manifest) else None
    res = (merge_virtual if a.mode == "virtual" else merge)(shards, a.out, expected=expected)
    print(f"merged {len(shards)} shards -> {a.out} ({a.mode}): {res['images']} images, {res['failed']} failed")
    return 0


def cmd_fetch_weights(a) -> int:
    from visfeat.extractors.registry import get_preset
    from visfeat.extractors.weights import fetch

    from visfeat.extractors.hub import HUB_PRESETS, fetch_preset_file

    p = get_preset(a.preset)
    if p.name in HUB_PRESETS:  # the hub file the path names: {root}/{preset}/{model}/{tag}/{file}
        fetch_preset_file(p.name, a.dest, url=a.url)
        print(f"weights ready: {a.dest}")
        return 0
    if not p.weights:
        print(f"preset {a.preset} needs no download ({p.weights_note})")
        return 0
    # a preset may list several files (weights first, e.g. a labelmap next): the one --dest names
    wf = next((w for w in p.weights if w.filename == Path(a.dest).name), p.weights[0])
    fetch(a.preset, wf if not a.url else type(wf)(wf.filename, a.url, wf.sha256, wf.size), a.dest)
    print(f"weights ready: {a.dest}")
    return 0


def cmd_prepare(a) -> int:
    from visfeat.sources.download import download, place, unpack
    from visfeat.sources.sample import install_sample

    if a.source == "sample":
        names = install_sample(a.dest)
        print(f"sample dataset: {len(names)} photos from scikit-image -> {a.dest}")
        return 0
    if not (a.url and a.archive):
        raise SystemExit("--source archive needs --url and --archive")
    archive = Path(a.archive)
    if not archive.exists():
        if not a.sha256:
            print(f"warning: no published checksum for {a.url}: downloaded unverified", file=sys.stderr)
        download(a.url, archive, sha256=a.sha256, size=a.size)
    if a.plain:
        place(archive, a.dest)
        print(f"placed {archive} -> {a.dest}")
    else:
        unpack(archive, a.dest)
        print(f"unpacked {archive} -> {a.dest}")
    return 0


def cmd_download_urls(a) -> int:
    from visfeat.sources.urls import download

    n = download(a.urls, a.out_dir, a.record, executable=a.img2dataset, url_col=a.url_col, caption_col=a.caption_col,
                 per_tar=a.urls_per_tar, timeout=a.timeout, retries=a.retries, processes=a.processes,
                 threads=a.threads)
    print(f"downloaded: {n} URLs -> {a.out_dir}")
    return 0


def cmd_kmeans_train(a) -> int:
    from visfeat.analysis.kmeans import KMeansError, train

    try:
        train(a.stores, a.out, field=a.field, k=a.k, niter=a.niter, seed=a.seed, max_train_vectors=a.max_train_vectors,
              gpu={"auto": "auto", "yes": True, "no": False}[a.gpu], name=a.name, npy=a.npy)
    except KMeansError as e:  # the workflow's --name is the config key: the message names the job to fix
        raise KMeansError(f"kmeans {a.name}: {e}") from None
    return 0


def cmd_kmeans_assign(a) -> int:
    from visfeat.analysis.kmeans import assign

    n = assign(a.store, a.centroids, a.out, pickle_path=a.pickle, gpu={"auto": "auto", "yes": True, "no": False}[a.gpu])
    print(f"codes for {n} images -> {a.out}")
    return 0


def cmd_report(a) -> int:
    from visfeat.analysis.report import feature_report, kmeans_report

    if a.centroids:
        paths = kmeans_report(a.centroids, a.store, a.out_dir, root=a.root)
    else:
        from visfeat.engine.stats import throughput

        logs = numbered_files(a.log, a.log_dir, a.shards, ".log", "report --log-dir/--shards")
        paths = feature_report(a.store, a.out_dir, root=a.root, throughput=throughput(logs),
                               weights_root=a.weights_root)
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_show(a) -> int:
    from visfeat.analysis.report import show

    print(show(a.file, a.image_id, a.out or f"{a.image_id.replace('/', '_')}.png", root=a.root,
               weights_root=a.weights_root))
    return 0


def cmd_text(a) -> int:
    from visfeat.engine.text import embed_captions

    from visfeat.engine.request import parse_set

    n = embed_captions(a.preset, a.captions, a.out, weights=a.weights, device=a.device, amp=a.amp,
                       batch_size=a.batch_size, options=parse_set(a.set))
    print(f"{n} captions embedded -> {a.out}")
    return 0


def add_weights_root(p: argparse.ArgumentParser) -> None:
    from visfeat.extractors.vocab import WEIGHTS_ROOT

    p.add_argument("--weights-root", default=WEIGHTS_ROOT,
                   help=f"where fetched weights lie, to read a preset's labelmap beside them (default: {WEIGHTS_ROOT})")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="visfeat", description="Image features for vision-and-language research.")
    ap.add_argument("--version", action="version", version=__import__("visfeat").__version__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("presets", help="list presets: conda env, capabilities, fields, weights, licence, citation; "
                       "with names, each one's card (fields, options with types and defaults, weights)")
    p.add_argument("preset", nargs="*", help="presets to print in full (default: list every preset)")
    p.add_argument("--names", action="store_true", help="names only")
    p.set_defaults(func=cmd_presets)

    from visfeat.engine.request import add_flags

    p = sub.add_parser("extract", help="extract features of a folder or an image list into one store")
    add_flags(p)  # the instance options: --preset, --weights, --batch-size, ... (engine/request.py OPTIONS)
    p.add_argument("--images", help="folder of images (recursive)")
    p.add_argument("--list", help="list file: `path` or `image_id<TAB>path` per line")
    p.add_argument("--manifest", help="a dataset's manifest.parquet (`visfeat manifest`): its images, or one shard")
    p.add_argument("--shard", type=int, metavar="I", help="--manifest: extract shard I (0-based) ...")
    p.add_argument("--shards", type=int, metavar="N", help="... of N (shards as the workflow cuts them)")
    p.add_argument("--root", help="folder that relative paths in --list or --manifest resolve against "
                                  "(default: the file's folder)")
    p.add_argument("--out", required=True, help="output .h5 (appears when complete; rerun resumes)")
    p.add_argument("--stats", metavar="FILE", help="also write the run's counts and timings to FILE (JSON)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="preset option (YAML value)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("inspect", help="what is in a feature file")
    p.add_argument("file")
    p.set_defaults(func=cmd_inspect)

    from visfeat.interop.exporters import EXPORTERS
    from visfeat.interop.importers import READERS
    from visfeat.interop.retrieval import DTYPES, PART_ROWS

    p = sub.add_parser("export", help="write a store in a layout downstream code reads")
    p.add_argument("--format", required=True, help=", ".join(EXPORTERS))
    p.add_argument("file")
    p.add_argument("out")
    p.add_argument("--split", help="vissl-npy: the split in the file names (default train)")
    p.add_argument("--names", choices=["id", "stem"], default="id",
                   help="name images by store id (default) or by image file stem, as LXMERT/X-LXMERT/MMF name "
                        "them (COCO_val2014_000000000042 for coco id 42)")
    g = p.add_argument_group("embedding-reader (clip-retrieval's layout; OUT a folder or s3://bucket/prefix, "
                             "endpoint and keys from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    g.add_argument("--field", help="the image store's fixed 1-D field to export (default global)")
    g.add_argument("--part-rows", type=int, help=f"rows per img_emb_{{i}}.npy part (default {PART_ROWS}, as "
                   "clip-retrieval)")
    g.add_argument("--dtype", choices=DTYPES, help=f"default {DTYPES[0]}, as clip-retrieval writes")
    g.add_argument("--no-normalize", dest="normalize", action="store_const", const=False,
                   help="keep the store's values (default: L2-normalised, as clip-retrieval writes)")
    g.add_argument("--manifest", help="the dataset's manifest.parquet of a webdataset or urls source (tars on local "
                   "disk): the metadata gains each image's caption (.txt) and url (.json), as clip-retrieval's "
                   "inference over img2dataset tars writes them")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="a published feature file into a store")
    p.add_argument("--format", required=True, help=", ".join(READERS))
    p.add_argument("file")
    p.add_argument("out")
    p.add_argument("--preset", help="the preset the file corresponds to (recorded in the store)")
    p.add_argument("--url", help="where the file was published (recorded in the store)")
    p.add_argument("--member", help="FILE is a folder: the file inside it to import")
    p.add_argument("--id-style", choices=["path", "stem", "coco"], default="path",
                   help="the dataset's id_style, applied to the file's image ids (coco: COCO_val2014_000000000042 "
                        "-> 42); default: kept as they are")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("compare", help="per-field agreement of two stores of the same dataset x preset")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="also write the distributions (matched IoU, cosine) to this PNG")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("manifest", help="(workflow) list a dataset's images into manifest.parquet")
    p.add_argument("--source", required=True, help="the source kind building it (sources/kinds.py)")
    p.add_argument("--root", required=True)
    p.add_argument("--tars", action="append", default=[],
                   help="webdataset: a brace pattern ({00000..00331}.tar), a tar, or a folder of .tar files "
                        "(repeat)")
    p.add_argument("--tars-per-shard", type=int, default=1, help="webdataset: tars per shard (extraction job)")
    p.add_argument("--downloaded", help="urls: the record `visfeat download-urls` wrote beside img2dataset's tars")
    p.add_argument("--shards", type=int, default=1, help="extraction shards the manifest is cut into (urls: the "
                   "tars are spread over them; webdataset: at least its tar count / --tars-per-shard)")
    p.add_argument("--list")
    p.add_argument("--folder", action="append", default=[],
                   help="folders: image folder under root (repeat); annotation: the images folder; "
                        "karpathy: FILEPATH=FOLDER (repeat)")
    p.add_argument("--annotation", help="annotation/split file under root (COCO json, Karpathy dataset_*.json)")
    p.add_argument("--split", action="append", default=[], help="karpathy: split names to keep (repeat)")
    p.add_argument("--missing-message", help="folder: what to tell the user when the folder does not exist")
    p.add_argument("--id-style", default="path", choices=["path", "stem", "coco"])
    p.add_argument("--no-exif", action="store_true", help="report header sizes without EXIF orientation")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("merge", help="(workflow) merge shard stores, validated against the manifest")
    p.add_argument("--manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--shard-dir", help="the shard stores are DIR/0.h5 ... DIR/{N-1}.h5 (with --shards N)")
    p.add_argument("--shards", type=int, dest="count", help="how many shard stores --shard-dir holds")
    p.add_argument("shards", nargs="*", help="shard stores, in order (or --shard-dir and --shards)")
    p.add_argument("--mode", choices=["copy", "virtual"], default="copy",
                   help="copy: every feature into one file; virtual: the fields as HDF5 virtual datasets over the "
                        "shard stores (kept beside it; source paths relative, so the results folder can move whole)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("fetch-weights", help="(workflow) download a preset's weights, sha256-checked")
    p.add_argument("--preset", required=True)
    p.add_argument("--dest", required=True)
    p.add_argument("--url", help="override the registry URL (a mirror)")
    p.set_defaults(func=cmd_fetch_weights)

    p = sub.add_parser("prepare", help="(workflow) install the sample photos, or download + unpack an archive")
    p.add_argument("--source", required=True, choices=["sample", "archive"])
    p.add_argument("--dest", required=True)
    p.add_argument("--url")
    p.add_argument("--sha256")
    p.add_argument("--archive", help="where the downloaded archive is kept (resumable .part beside it)")
    p.add_argument("--size", type=int, help="published size in bytes (free-disk check before downloading)")
    p.add_argument("--plain", action="store_true", help="the download is a plain file (placed into --dest as is)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("download-urls", help="(workflow) a urls source: img2dataset downloads the list into "
                                             "webdataset tars, resumable")
    p.add_argument("--urls", required=True, help="the URL list: .parquet, .csv or .tsv")
    p.add_argument("--out-dir", required=True, help="img2dataset's output folder (its tars, parquets, stats)")
    p.add_argument("--record", required=True, help="written when every tar is finished: one line per tar")
    p.add_argument("--img2dataset", default="img2dataset", help="the img2dataset command")
    p.add_argument("--url-col", default="url")
    p.add_argument("--caption-col", default="caption", help="'' for none; a list without this column has none")
    p.add_argument("--urls-per-tar", type=int, default=10000, help="img2dataset's number_sample_per_shard")
    p.add_argument("--timeout", type=int, default=10, help="seconds per URL")
    p.add_argument("--retries", type=int, default=0)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--threads", type=int, default=256)
    p.set_defaults(func=cmd_download_urls)

    p = sub.add_parser("kmeans-train", help="faiss k-means on a bounded sample of stores' vectors")
    p.add_argument("--name", default="kmeans")
    p.add_argument("--field", default="grid")
    p.add_argument("--k", type=int, default=10000)
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--max-train-vectors", type=int, help="sample bound (default k x 256, faiss' own cap)")
    p.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("--out", required=True, help="centroids.h5: centroids, objective per iteration, cluster sizes")
    p.add_argument("--npy", help="also the centroids as .npy (X-LXMERT)")
    p.add_argument("stores", nargs="+")
    p.set_defaults(func=cmd_kmeans_train)

    p = sub.add_parser("kmeans-assign", help="nearest-centroid codes for every vector of a store")
    p.add_argument("--centroids", required=True)
    p.add_argument("--out", required=True, help="a store of int32 codes shaped like the field")
    p.add_argument("--pickle", help="also X-LXMERT's image id -> codes pickle")
    p.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("store")
    p.set_defaults(func=cmd_kmeans_assign)

    p = sub.add_parser("report", help="(workflow) figures for a store, or for a k-means job with --centroids")
    p.add_argument("--store", help="a feature store (or, with --centroids, a codes store)")
    p.add_argument("--centroids", help="a k-means centroids.h5")
    p.add_argument("--root", help="the dataset root (a tar source: its manifest.parquet), to draw the images themselves")
    p.add_argument("--log", action="append", default=[], help="extraction logs (throughput per shard)")
    p.add_argument("--log-dir", help="the extraction logs are DIR/0.log ... DIR/{N-1}.log (with --shards N)")
    p.add_argument("--shards", type=int, help="how many extraction logs --log-dir holds")
    p.add_argument("--out-dir", required=True)
    add_weights_root(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("show", help="draw one image's boxes or grid cells (and a classifier's top-5 classes) to a PNG")
    p.add_argument("file")
    p.add_argument("image_id")
    p.add_argument("--root", help="the dataset root the store's image_path is relative to (a webdataset or urls "
                                  "source: its results/DATASET/manifest.parquet); needed unless the store is imported")
    p.add_argument("--out", help="PNG path (default: IMAGE_ID.png)")
    add_weights_root(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("text", help="text embeddings of captions (Karpathy dataset_*.json or a text file) by a "
                       "preset with a text tower (CLIP, openclip)")
    p.add_argument("--preset", required=True)
    p.add_argument("--weights")
    p.add_argument("--captions", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="preset option (YAML value), as for extract")
    p.set_defaults(func=cmd_text)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from visfeat.extractors.weights import WeightsMissing
    from visfeat.sources.images import ImageError

    try:
        return args.func(args)
    except (WeightsMissing, ImageError, KeyError, ValueError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"visfeat {args.cmd}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: one line (an extraction's says how to resume), the shell's 128 + SIGINT
        print(f"visfeat {args.cmd}: {e or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
