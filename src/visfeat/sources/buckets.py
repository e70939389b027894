"""Why an S3 bucket cannot be used, in one line: the start-of-run check of the buckets a workflow run reads and
writes (workflow/s3check.py) and an export to s3:// (interop/destinations.py) both say it this way, before
anything is read or written. Never prints a key."""
from __future__ import annotations

AWS_KEYS = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"


def bucket_of(url: str) -> str:
    """The bucket of s3://bucket/key."""
    return url.split("://", 1)[1].split("/", 1)[0]


def bucket_problem(client, bucket: str, what: str, keys: str = AWS_KEYS) -> str | None:
    """One line saying why `bucket` cannot be used through the boto3 `client` (None: it can). `what`: where the
    run names the bucket; `keys`: where the caller's keys come from, named when access is denied."""
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
            return f"S3 access to bucket {bucket!r} ({what}) on {endpoint} denied: check the access key and secret ({keys})"
        return f"S3 bucket {bucket!r} ({what}) on {endpoint}: {code} {e}"
    except BotoCoreError as e:
        return f"S3 endpoint {endpoint} unreachable for bucket {bucket!r} ({what}): {e}"
