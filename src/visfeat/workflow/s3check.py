"""The start-of-run check of the S3 buckets a run uses: wrong credentials, a missing bucket or an unreachable
endpoint is one line before any job starts, not a traceback from the first upload. It is given the boto3 client of
Snakemake's own S3 storage plugin (workflow/rules/common.smk), so it sees exactly the endpoint and keys the jobs
will use; it never prints a key."""
from __future__ import annotations


def bucket_of(url: str) -> str:
    """The bucket of s3://bucket/key."""
    return url.split("://", 1)[1].split("/", 1)[0]


def bucket_problem(client, bucket: str, what: str) -> str | None:
    """One line saying why `bucket` cannot be used (None: it can). `what`: where the run names it."""
    from botocore.exceptions import BotoCoreError, ClientError

    endpoint = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
        return None
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            return f"S3 bucket {bucket!r} ({what}) does not exist on {endpoint}: create it first"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return (f"S3 access to bucket {bucket!r} ({what}) on {endpoint} denied: check the access key and secret "
                    "(--storage-s3-access-key/--storage-s3-secret-key or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
        return f"S3 bucket {bucket!r} ({what}) on {endpoint}: {code} {e}"
    except BotoCoreError as e:
        return f"S3 endpoint {endpoint} unreachable for bucket {bucket!r} ({what}): {e}"


def check_buckets(client_of, urls: dict[str, str]) -> str | None:
    """The first problem of the buckets of `urls` (url -> where the run names it), each bucket asked once;
    `client_of(url)`: the boto3 client that serves that URL."""
    seen = set()
    for url, what in urls.items():
        bucket = bucket_of(url)
        if bucket not in seen:
            seen.add(bucket)
            problem = bucket_problem(client_of(url), bucket, what)
            if problem:
                return problem
    return None
