"""Known test data: the objects every test bucket starts with."""

from __future__ import annotations

import os
import uuid

#: Objects every test bucket starts with: small, known sizes and content.
BUCKET_OBJECTS: dict[str, bytes] = {
    "hello.txt": b"hello from obsctl tests\n",
    "data-a.bin": os.urandom(96 * 1024),
    "data-b.bin": os.urandom(160 * 1024),
    "dir/nested.txt": b"nested\n" * 100,
}


def unique_bucket_name(tag: str) -> str:
    """A valid, unique S3 bucket name that says which test made it."""
    tag = "".join(c if c.isalnum() else "-" for c in tag.lower())[:20].strip("-")
    return f"obsctl-{tag}-{uuid.uuid4().hex[:8]}"
