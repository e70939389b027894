"""The start-of-run check of the S3 buckets a run uses: wrong credentials, a missing bucket or an unreachable
endpoint is one line before any job starts, not a traceback from the first upload. It is given the boto3 client of
Snakemake's own S3 storage plugin (workflow/rules/common.smk), so it sees exactly the endpoint and keys the jobs
will use; the line itself is sources/buckets.py's."""
from __future__ import annotations

from visfeat.sources.buckets import AWS_KEYS, bucket_of, bucket_problem

# where a Snakemake run's S3 keys come from: the plugin's flags or the standard variables
PLUGIN_KEYS = f"--storage-s3-access-key/--storage-s3-secret-key or {AWS_KEYS}"


def check_buckets(client_of, urls: dict[str, str]) -> str | None:
    """The first problem of the buckets of `urls` (url -> where the run names it), each bucket asked once;
    `client_of(url)`: the boto3 client that serves that URL."""
    seen = set()
    for url, what in urls.items():
        bucket = bucket_of(url)
        if bucket not in seen:
            seen.add(bucket)
            problem = bucket_problem(client_of(url), bucket, what, PLUGIN_KEYS)
            if problem:
                return problem
    return None
