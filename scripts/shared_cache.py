#!/usr/bin/env python
"""Share computed stages between machines through a DVC remote on S3 and DVC's run-cache.

    python scripts/shared_cache.py check    # is the remote configured, are there credentials, can they reach it?
    python scripts/shared_cache.py push     # after `dvc repro` / a queue / a SLURM task: send results and run-cache
    python scripts/shared_cache.py fetch    # on another machine, then `dvc repro --pull` restores instead of running
    python scripts/shared_cache.py fetch STAGE   # the run-cache and only that stage's data (a SLURM task)

DVC does the work (``dvc push --run-cache``, ``dvc fetch --run-cache``, ``dvc repro --pull``); this script adds
two things DVC lacks:
- a check before any transfer: no remote, no S3 credentials, an endpoint that does not answer or a bucket that
  refuses them are one clear message each (DVC says "Unable to locate credentials" mid-transfer, or retries);
- the objects of outputs with ``cache: false`` (every metrics file of this project): DVC's run-cache records them
  and saves them to the local cache, but ``dvc push --run-cache`` pushes only the run records and the objects the
  workspace's dvc.lock uses, so on another machine the stage cannot be restored and reruns. ``push`` also pushes
  the objects of every local run-cache record (those already on the remote are skipped).

Credentials never go into the repository: use the AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), a
profile in ~/.aws/credentials (``dvc remote modify --local <remote> profile NAME``), or
``dvc remote modify --local <remote> access_key_id ...`` (kept in .dvc/config.local, which git ignores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


class SharedCacheError(Exception):
    """A problem the user can fix; printed as one message, exit 1."""


def remote_settings(repo, name: str | None) -> tuple[str, dict]:
    remotes = repo.config.get("remote", {})
    name = name or repo.config.get("core", {}).get("remote")
    if not name:
        raise SharedCacheError("no DVC remote is configured: dvc remote add -d team s3://BUCKET/PREFIX (and, for "
                               "a non-AWS S3, dvc remote modify team endpointurl https://HOST:PORT); see "
                               "docs/scaling-out.md")
    if name not in remotes:
        raise SharedCacheError(f"there is no DVC remote {name!r}; configured: {', '.join(remotes) or 'none'}")
    return name, dict(remotes[name])


def s3_client(name: str, settings: dict):
    """A boto3 client with the credentials DVC would use for this remote (its config, then AWS's usual chain)."""
    import boto3
    import botocore.session

    if settings.get("credentialpath"):
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.path.expanduser(settings["credentialpath"])
    session = boto3.Session(profile_name=settings.get("profile"), botocore_session=botocore.session.Session())
    key, secret = settings.get("access_key_id"), settings.get("secret_access_key")
    if not (key and secret) and session.get_credentials() is None:
        raise SharedCacheError(
            f"no S3 credentials for DVC remote {name!r} ({settings['url']}): set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY, or name a profile of ~/.aws/credentials with `dvc remote modify --local {name} "
            f"profile NAME`, or `dvc remote modify --local {name} access_key_id ...` and `secret_access_key ...` "
            "(.dvc/config.local is never committed)")
    options = {"endpoint_url": settings.get("endpointurl"), "region_name": settings.get("region")}
    if key and secret:
        options.update(aws_access_key_id=key, aws_secret_access_key=secret,
                       aws_session_token=settings.get("session_token"))
    from botocore.config import Config
    config = Config(connect_timeout=10, read_timeout=30, retries={"max_attempts": 1})
    return session.client("s3", config=config, **{k: v for k, v in options.items() if v})


def check(repo, name: str | None) -> str:
    """The remote's name, once it is known to be usable; a :class:`SharedCacheError` saying what to fix if not."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    name, settings = remote_settings(repo, name)
    url = settings.get("url", "")
    if not url.startswith("s3://"):
        print(f"[shared-cache] remote {name!r} is {url}: not S3, credentials are left to DVC")
        return name
    bucket = url[len("s3://"):].split("/", 1)[0]
    client = s3_client(name, settings)
    where = settings.get("endpointurl") or "AWS S3"
    try:
        client.head_bucket(Bucket=bucket)
    except EndpointConnectionError:
        raise SharedCacheError(f"DVC remote {name!r}: the S3 endpoint {where} does not answer; check "
                               f"`dvc remote modify {name} endpointurl ...` and the network") from None
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket"):
            raise SharedCacheError(f"DVC remote {name!r}: bucket {bucket!r} does not exist at {where}") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise SharedCacheError(f"DVC remote {name!r}: {where} refused these credentials for bucket {bucket!r} "
                                   f"({code}); check the AWS_* variables or the remote's --local settings") from None
        raise SharedCacheError(f"DVC remote {name!r}: {where} answered {code or error} for bucket {bucket!r}") from None
    except BotoCoreError as error:
        raise SharedCacheError(f"DVC remote {name!r}: {error}") from None
    return name


def dvc(*args: str) -> None:
    result = subprocess.run([str(BIN / "dvc"), *args])
    if result.returncode != 0:
        raise SharedCacheError(f"`dvc {' '.join(args)}` failed (exit {result.returncode}); see its message above")


def run_cache_records(repo) -> list[tuple[str, str]]:
    """(key, value) of every run recorded in the local run-cache (.dvc/cache/runs/<xx>/<key>/<value>)."""
    root = Path(repo.stage_cache.cache_dir)
    return [(entry.parent.name, entry.name) for entry in root.glob("*/*/*") if entry.is_file()]


def push_run_cache_objects(repo, name: str, jobs: int | None) -> int:
    """Push the objects every local run-cache record refers to, uncached outputs (metrics) included."""
    used = repo.stage_cache.get_used_objs(run_cache_records(repo), remote=name)
    pushed = 0
    for odb, objects in used.items():
        result = repo.cloud.push(objects, jobs=jobs, remote=name, odb=odb)
        if result.failed:
            raise SharedCacheError(f"{len(result.failed)} object(s) of the run-cache could not be pushed to {name!r}")
        pushed += len(result.transferred)
    return pushed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("check", "push", "fetch"))
    parser.add_argument("-r", "--remote", help="DVC remote (default: the default remote)")
    parser.add_argument("-j", "--jobs", type=int, help="parallel transfers (DVC's default when omitted)")
    parser.add_argument("targets", nargs="*", help="fetch: only these stages' data (the run-cache is always "
                        "fetched whole: it is small)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            name = check(repo, args.remote)
            jobs = ["-j", str(args.jobs)] if args.jobs else []
            if args.command == "check":
                print(f"[shared-cache] remote {name!r} is reachable with these credentials")
            elif args.command == "push":
                dvc("push", "--run-cache", "-r", name, *jobs)
                pushed = push_run_cache_objects(repo, name, args.jobs)
                print(f"[shared-cache] pushed the run-cache to {name!r} ({pushed} more object(s) of its records)")
            else:
                dvc("fetch", "--run-cache", "-r", name, *jobs, *args.targets)
                print("[shared-cache] fetched; now `dvc repro --pull` restores every stage already computed "
                      "elsewhere instead of running it")
    except SharedCacheError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
