"""`source: urls`: a parquet/csv/tsv list of image URLs (+ captions) downloaded by img2dataset into webdataset tars.

img2dataset runs as its own command (its own env, envs/img2dataset.yaml: it needs pandas<3), with
`output_format webdataset`, `resize_mode no` and `skip_reencode`, so a JPEG is stored byte for byte as served and
every preset sees the original pixels (other formats are decoded and re-encoded as JPEG by img2dataset). Its
`incremental` mode skips every tar whose NNNNN_stats.json exists, so a rerun after an interruption downloads only
the unfinished tars. This module checks the list first (columns, row count), drops finished tars whose URLs no
longer match the list (img2dataset would keep them), runs img2dataset, checks that every tar finished and writes
the record the manifest step reads (`tars.scan_img2dataset`). Only the standard library and pyarrow: it runs in
img2dataset's env.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

LIST_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}
RECORD_COLUMNS = ["tar", "count", "successes", "failed_to_download", "failed_to_resize"]  # img2dataset's stats
OOM_SHARD_COUNT = 5  # img2dataset main.py `oom_shard_count` default: tar names are 00000.tar, 00001.tar, ...


class UrlListError(ValueError):
    pass


def list_format(path: str | os.PathLike) -> str:
    fmt = LIST_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UrlListError(f"URL list {path}: unknown format (give a {', '.join(LIST_FORMATS)} file)")
    return fmt


def _csv_parse(fmt: str):
    import pyarrow.csv as pacsv

    return pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")


def columns(path: str | os.PathLike) -> list[str]:
    fmt = list_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    import pyarrow.csv as pacsv

    return pacsv.open_csv(path, parse_options=_csv_parse(fmt)).schema.names


def read_column(path: str | os.PathLike, column: str) -> list:
    """One column of the list, parsed as img2dataset parses it (pyarrow, the same options)."""
    fmt = list_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=[column]).column(0).to_pylist()
    import pyarrow.csv as pacsv

    opts = pacsv.ConvertOptions(include_columns=[column])
    return pacsv.read_csv(path, parse_options=_csv_parse(fmt), convert_options=opts).column(0).to_pylist()


def tar_name(index: int) -> str:
    return f"{index:0{OOM_SHARD_COUNT}d}"


def drop_stale_tars(out_dir: Path, urls: list[str], per_tar: int) -> list[str]:
    """Finished tars whose URLs are not the list's slice for that tar any more (the list was edited, not only
    appended to): their files are removed so img2dataset downloads them again. Returns their names."""
    import pyarrow.parquet as pq

    stale = []
    for stats in sorted(out_dir.glob("*_stats.json")):
        name = stats.name.split("_")[0]
        k = int(name)
        want = sorted(urls[k * per_tar:(k + 1) * per_tar])
        part = out_dir / f"{name}.parquet"
        have = sorted(pq.read_table(part, columns=["url"]).column(0).to_pylist()) if part.exists() else None
        if have != want:
            stale.append(name)
            for suffix in ("_stats.json", ".tar", ".parquet"):
                (out_dir / f"{name}{suffix}").unlink(missing_ok=True)
    return stale


def img2dataset_command(executable: str, url_list: str, out_dir: str, url_col: str, caption_col: str | None,
                        per_tar: int, timeout: int, retries: int, processes: int, threads: int) -> list[str]:
    fmt = list_format(url_list)
    cmd = [executable, url_list, "--input_format", fmt, "--url_col", url_col, "--output_folder", out_dir,
           "--output_format", "webdataset", "--resize_mode", "no", "--skip_reencode", "True",
           "--incremental_mode", "incremental", "--number_sample_per_shard", str(per_tar),
           "--timeout", str(timeout), "--retries", str(retries), "--processes_count", str(processes),
           "--thread_count", str(threads), "--enable_wandb", "False"]
    return cmd + (["--caption_col", caption_col] if caption_col else [])


def _stats(out_dir: Path, name: str) -> list[str]:
    import json

    s = json.loads((out_dir / f"{name}_stats.json").read_text())
    return [f"{name}.tar", *(str(s[k]) for k in RECORD_COLUMNS[1:])]


def download(url_list: str, out_dir: str, record: str, executable: str = "img2dataset", url_col: str = "url",
             caption_col: str = "caption", per_tar: int = 10000, timeout: int = 10, retries: int = 0,
             processes: int = 1, threads: int = 256) -> int:
    """Download (or finish downloading) `url_list` into `out_dir`; write `record` (tab-separated, one line per tar:
    RECORD_COLUMNS) once every tar is finished. Returns the number of URLs."""
    if not os.path.isfile(url_list):
        raise UrlListError(f"URL list {url_list} does not exist")
    have = columns(url_list)
    if url_col not in have:
        raise UrlListError(f"URL list {url_list}: no column {url_col!r} (set url_col; its columns: {', '.join(have)})")
    urls = read_column(url_list, url_col)
    if not urls:
        raise UrlListError(f"URL list {url_list} has no rows")
    if caption_col and caption_col not in have:
        print(f"[visfeat] {url_list} has no {caption_col!r} column: no captions", file=sys.stderr)
        caption_col = None
    exe = shutil.which(executable)
    if exe is None:
        raise UrlListError(f"img2dataset command {executable!r} not found: run under `snakemake --use-conda` "
                           "(envs/img2dataset.yaml), or `make setup-urls` and set the dataset's img2dataset.executable "
                           "to .venv-img2dataset/bin/img2dataset")
    n_tars = math.ceil(len(urls) / per_tar)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = drop_stale_tars(out, urls, per_tar)
    if stale:
        print(f"[visfeat] {len(stale)} finished tars no longer match the list, downloaded again: "
              f"{' '.join(stale[:20])}", file=sys.stderr)
    done = sum((out / f"{tar_name(k)}_stats.json").exists() for k in range(n_tars))
    print(f"[visfeat] {len(urls)} URLs in {n_tars} tars of {per_tar}; {done} already finished", file=sys.stderr)
    if done < n_tars:
        cmd = img2dataset_command(exe, os.path.abspath(url_list), str(out.resolve()), url_col, caption_col, per_tar,
                                  timeout, retries, processes, threads)
        print("[visfeat] " + " ".join(cmd), file=sys.stderr, flush=True)
        # albumentations (an img2dataset dependency) asks PyPI for a newer version on import unless told not to
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            raise UrlListError(f"img2dataset exited with status {rc}; rerun to resume (finished tars are kept)")
    missing = [tar_name(k) for k in range(n_tars) if not (out / f"{tar_name(k)}_stats.json").exists()
               or not (out / f"{tar_name(k)}.tar").exists() or not (out / f"{tar_name(k)}.parquet").exists()]
    if missing:  # img2dataset exits 0 after an interrupt (SIGINT) or a shard that failed as a whole
        raise UrlListError(f"img2dataset finished {n_tars - len(missing)} of {n_tars} tars (unfinished: "
                           f"{' '.join(missing[:20])}); rerun to resume (finished tars are kept)")
    lines = ["\t".join(RECORD_COLUMNS)] + ["\t".join(_stats(out, tar_name(k))) for k in range(n_tars)]
    tmp = Path(record + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(record)
    print(f"[visfeat] {n_tars} tars finished -> {record}", file=sys.stderr)
    return len(urls)
