"""The reference side of the differential test (integration/tests/differential.rs).

Runs a sequence of blob operations against Azure Blob Storage (Azurite in the
suite) through Microsoft's own Python SDK, an implementation independent of
vmblob and of object_store, and prints one JSON result per operation.

stdin: {"connection_string": "...", "ops": [...]}, the op language described
in differential.rs. stdout: a JSON list, one entry per op: {"http": status,
"code": the service's error code or null, ...the op's observations}.
"""

import datetime
import hashlib
import json
import sys

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotModifiedError
from azure.storage.blob import BlobBlock, BlobLeaseClient, BlobServiceClient, ContentSettings

# The lease ids scenarios name (`"lease": "L1"`, `"proposed": "L2"`).
LEASES = {"L1": "11111111-1111-4111-8111-111111111111", "L2": "22222222-2222-4222-8222-222222222222"}


def lease_name(lease_id):
    """A lease id as the scenario names it; one neither side was told is `fresh`."""
    return next((k for k, v in LEASES.items() if v == (lease_id or "").lower()), "fresh")


def etag_of(results, ref):
    """`$k` is the ETag op k answered (`$k~` the same without its quotes); `*` is any."""
    if ref == "*":
        return "*"
    unquoted = ref.endswith("~")
    etag = results[int(ref.strip("$~"))]["etag"]
    return etag.strip('"') if unquoted else etag


def time_of(results, ref):
    """`$k` is the last-modified time op k answered, in whole seconds; `$k-1` a second before."""
    k, _, minus = ref.strip("$").partition("-")
    secs = results[int(k)]["lm"] - int(minus or 0)
    return datetime.datetime.fromtimestamp(secs, tz=datetime.timezone.utc)


def conditions(op, results):
    """The SDK's way to send If-Match / If-None-Match / If-(Un)Modified-Since."""
    kw = {}
    if "if_modified_since" in op:
        kw["if_modified_since"] = time_of(results, op["if_modified_since"])
    if "if_unmodified_since" in op:
        kw["if_unmodified_since"] = time_of(results, op["if_unmodified_since"])
    if "lease" in op:
        kw["lease"] = LEASES[op["lease"]]
    return {**kw, **etag_conditions(op, results)}


def etag_conditions(op, results):
    if "if_match" in op:
        tag = etag_of(results, op["if_match"])
        if tag == "*":
            return {"match_condition": MatchConditions.IfPresent}
        return {"etag": tag, "match_condition": MatchConditions.IfNotModified}
    if "if_none_match" in op:
        tag = etag_of(results, op["if_none_match"])
        if tag == "*":
            return {"match_condition": MatchConditions.IfMissing}
        return {"etag": tag, "match_condition": MatchConditions.IfModified}
    return {}


def data_of(op):
    d = op["data"]
    if isinstance(d, str):
        return d.encode()
    return bytes((i * 31 + d["seed"]) % 251 for i in range(d["len"]))


HEADERS = ["content_encoding", "content_language", "content_disposition", "cache_control"]


def settings_of(op):
    """The op's Content-Type and other HTTP headers, or None if it gives none."""
    if "content_type" not in op and "headers" not in op:
        return None
    h = op.get("headers", {})
    return ContentSettings(content_type=op.get("content_type"), **{k: h.get(k) for k in HEADERS})


def seconds(t):
    return int(t.timestamp())


def properties(p, op, results):
    s = p.content_settings
    out = {
        "len": p.size,
        "content_type": (s.content_type if s else None) or "",
        "metadata": dict(p.metadata or {}),
        "headers": {k: (getattr(s, k, None) if s else None) or "" for k in HEADERS},
        "lm": seconds(p.last_modified),
        "lease": [p.lease.state, p.lease.status, p.lease.duration],
    }
    if "created_of" in op:
        out["created_is_op"] = seconds(p.creation_time) == results[op["created_of"]]["lm"]
    return out


def written(r):
    return {"etag": r["etag"], "lm": seconds(r["last_modified"])}


def run(svc, op, results):
    kind = op["op"]
    c = svc.get_container_client(op["c"]) if "c" in op else None
    b = c.get_blob_client(op["b"]) if "b" in op else None
    if kind == "create_container":
        return {"etag": c.create_container()["etag"]}
    if kind == "delete_container":
        c.delete_container()
        return {}
    if kind == "put":
        overwrite = "if_none_match" not in op or op["if_none_match"] != "*"
        r = b.upload_blob(
            data_of(op),
            overwrite=overwrite,
            content_settings=settings_of(op),
            metadata=op.get("metadata"),
            **(conditions(op, results) if overwrite else {}),
        )
        return written(r)
    if kind == "get":
        kw = conditions(op, results)
        if "range" in op:
            kw["offset"], kw["length"] = op["range"]
        d = b.download_blob(**kw)
        body = d.readall()
        out = properties(d.properties, op, results)
        # For a ranged read the SDK's size is the range's; the blob's is in Content-Range.
        if d.properties.content_range:
            out["len"] = int(d.properties.content_range.rsplit("/", 1)[1])
        out.update({"sha256": hashlib.sha256(body).hexdigest(), "body_len": len(body), "etag": d.properties.etag})
        return out
    if kind == "head":
        p = b.get_blob_properties(**conditions(op, results))
        out = properties(p, op, results)
        out["etag"] = p.etag
        return out
    if kind == "delete":
        b.delete_blob(**conditions(op, results))
        return {}
    if kind == "set_metadata":
        r = b.set_blob_metadata(metadata=op.get("metadata") or {}, **conditions(op, results))
        return written(r)
    if kind in ("set_content_type", "set_properties"):
        r = b.set_http_headers(content_settings=settings_of(op), **conditions(op, results))
        return written(r)
    if kind == "copy":
        src = svc.get_container_client(op["from_c"]).get_blob_client(op["from_b"])
        kw = conditions(op, results)
        if "lease" in kw:
            kw["destination_lease"] = kw.pop("lease")
        if "source_if_match" in op:
            kw["source_etag"] = etag_of(results, op["source_if_match"])
            kw["source_match_condition"] = MatchConditions.IfNotModified
        r = b.start_copy_from_url(src.url, metadata=op.get("metadata"), **kw)
        if r.get("copy_status") != "success":
            raise ValueError(f"copy did not complete at once: {r}")
        return written(r)
    if kind == "stage":
        b.stage_block(op["id"], data_of(op), **({"lease": LEASES[op["lease"]]} if "lease" in op else {}))
        return {}
    if kind == "lease":
        return lease(b, op, results)
    if kind == "commit":
        r = b.commit_block_list(
            [BlobBlock(block_id=i) for i in op["ids"]],
            content_settings=settings_of(op),
            metadata=op.get("metadata"),
            **conditions(op, results),
        )
        return written(r)
    if kind == "block_list":
        committed, uncommitted = b.get_block_list(op.get("type", "all"))
        return {
            "committed": [[x.id, x.size] for x in committed],
            "uncommitted": [[x.id, x.size] for x in uncommitted],
        }
    if kind == "list":
        pages = []
        kw = {"name_starts_with": op.get("prefix") or None, "results_per_page": op.get("max", 5000)}
        if op.get("uncommitted"):
            kw["include"] = ["uncommittedblobs"]
        if op.get("delimiter"):
            it = c.walk_blobs(delimiter=op["delimiter"], **kw)
        else:
            it = c.list_blobs(**kw)
        for page in it.by_page():
            names = []
            for item in page:
                # walk_blobs yields BlobPrefix items (with a `prefix` attribute) for roll-ups.
                prefix = getattr(item, "prefix", None)
                names.append(("prefix:" + prefix) if prefix is not None and not hasattr(item, "size") else item.name)
            pages.append(names)
        return {"pages": pages}
    if kind == "list_containers":
        names = [x.name for x in svc.list_containers(name_starts_with=op.get("prefix") or None)]
        return {"names": names}
    raise ValueError(f"unknown op {kind}")


def lease(b, op, results):
    """One Lease Blob action; the lease id it answers, by name, or the break's time."""
    action = op["action"]
    kw = {k: v for k, v in conditions(op, results).items() if k != "lease"}
    held = LEASES.get(op.get("lease"))
    if action == "acquire":
        lc = BlobLeaseClient(b, lease_id=LEASES.get(op.get("proposed")))
        lc.acquire(lease_duration=op.get("duration", -1), **kw)
        return {"lease_id": lease_name(lc.id)}
    lc = BlobLeaseClient(b, lease_id=held)
    if action == "renew":
        lc.renew(**kw)
        return {"lease_id": lease_name(lc.id)}
    if action == "change":
        lc.change(proposed_lease_id=LEASES[op["proposed"]], **kw)
        return {"lease_id": lease_name(lc.id)}
    if action == "release":
        lc.release(**kw)
        return {}
    if action == "break":
        return {"lease_time": lc.break_lease(lease_break_period=op.get("period"), **kw)}
    raise ValueError(f"unknown lease action {action}")


def main():
    req = json.load(sys.stdin)
    svc = BlobServiceClient.from_connection_string(req["connection_string"])
    results = []
    for op in req["ops"]:
        try:
            out = run(svc, op, results)
            out.update({"http": 200, "code": None})
        except ResourceNotModifiedError:
            out = {"http": 304, "code": "NotModified"}
        except (ResourceModifiedError, HttpResponseError) as e:
            status = e.status_code or (e.response.status_code if e.response is not None else 0)
            # A 304 carries no body; Azurite still names it ConditionNotMet in a header.
            code = "NotModified" if status == 304 else (e.error_code or f"HTTP{status}")
            out = {"http": status, "code": code}
        results.append(out)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
