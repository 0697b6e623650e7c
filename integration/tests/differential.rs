//! The differential test (issue 15): the same operation sequences against
//! vmblob (through the real daemon and the guest's `BlobClient`, on the
//! embedded store and on the Azure-backed store) and against Azure itself
//! (Azurite, through Microsoft's Python SDK: `differential/azure_reference.py`),
//! comparing statuses, bodies, properties, block lists and listings op by op.
//!
//! Every difference must be listed in [`DOCUMENTED`] with the PROTOCOL.md
//! section that explains it, and every listed one must still differ (so the
//! list cannot rot).
//!
//! The op language (JSON, one object per op; `c` container, `b` blob):
//! `create_container`, `delete_container`, `put {data, content_type?, metadata?}`,
//! `get {range?: [offset, length]}`, `head`, `delete`, `stage {id, data}`,
//! `commit {ids, content_type?, metadata?}`, `block_list`,
//! `list {prefix?, delimiter?, max?, uncommitted?}` (every page), `list_containers {prefix?}`,
//! `set_metadata {metadata?}` (all of it), `set_content_type {content_type}`,
//! `set_properties {content_type?, headers?}` (all HTTP headers),
//! `copy {from_c, from_b, metadata?, source_if_match?}` (into `c`/`b`),
//! `lease {action: acquire|renew|change|release|break, proposed?, duration?, period?}`
//! (the lease held is `lease`). Any op may name `lease: "L1"|"L2"`, the
//! lease id it is sent under (a copy's is the target's).
//! `data` is a string or `{len, seed}`; `headers` is an object of
//! `content_encoding`, `content_language`, `content_disposition`,
//! `cache_control`. Conditions: `if_match` / `if_none_match` = `"*"`, `"$k"`
//! (the ETag op k answered) or `"$k~"` (the same, unquoted);
//! `if_modified_since` / `if_unmodified_since` = `"$k"` (the last-modified
//! time op k answered, in whole seconds) or `"$k-1"` (a second before). A
//! `get`/`head` with `created_of: k` observes whether the blob's creation
//! time is op k's last-modified time.

use serde_json::{Value, json};
use vmblob_integration::differential::{Azurite, python_with_sdk, run_reference};
use vmblob_integration::{Guest, GuestOptions, Sandbox, StoreKind, Vsp, VspOptions, azurite};
use vmblob_protocol::ops::{
    BlobListItem, BlockListType, Conditions, ContentHeaders, ETag, LeaseAction, LeaseDuration, LeaseId, LeaseKind,
    ListedBlock, Metadata,
};
use vmblob_vsc::{
    BlockId, ClientError, CopyOptions, GetOptions, ListBlobsOptions, ListContainersOptions, PutOptions, crc64,
};

/// Differences from Azure that are deliberate, each with the PROTOCOL.md
/// section that gives the reason: (scenario, op index, where).
const DOCUMENTED: &[(&str, usize, &str)] = &[
    // Names with an empty, `.` or `..` segment (so no leading, trailing or
    // doubled `/`) and with `\` are refused; Azure takes them (and turns `\` into `/`).
    ("names", 1, "PROTOCOL.md §7, blob name"),
    ("names", 2, "PROTOCOL.md §7, blob name"),
    ("names", 3, "PROTOCOL.md §7, blob name"),
    ("names", 4, "PROTOCOL.md §7, blob name"),
    ("names", 5, "PROTOCOL.md §7, blob name"),
    // Azurite applies Set Blob Metadata with If-None-Match `*` to an existing
    // blob; Azure's documented answer, and vmblob's, is 412 ConditionNotMet.
    ("properties", 17, "PROTOCOL.md §6.4, SetBlobMetadata (Azurite differs from Azure)"),
];

/// Deliberate differences of one store: (store label, scenario, op, where).
const DOCUMENTED_OF_STORE: &[(&str, &str, usize, &str)] = &[
    // The object key `<container>/<name>` is at most 1024 bytes.
    ("Azure-backed store", "names", 8, "PROTOCOL.md §7, az:// and s3:// key length"),
    ("Azure-backed store", "names", 9, "PROTOCOL.md §7, az:// and s3:// key length"),
];

/// Differences that are bugs still open (issue 15), so the suite stays green
/// while saying exactly where vmblob is still wrong: (scenario, op, which bug).
const OPEN_BUGS: &[(&str, usize, &str)] = &[];

/// Open bugs that only some stores have: (store label, scenario, op, which bug).
const OPEN_BUGS_OF_STORE: &[(&str, &str, usize, &str)] = &[];

/// The same class for the same kind of answer on both sides: vmblob's status
/// names, and Azure's error codes mapped onto them.
fn azure_class(r: &Value) -> String {
    if r["http"] == 304 {
        return "NotModified".into();
    }
    let code = r["code"].as_str();
    let class = match code {
        None => "Ok",
        Some("ContainerNotFound") => "ContainerNotFound",
        Some("BlobNotFound") => "BlobNotFound",
        Some("ContainerAlreadyExists" | "BlobAlreadyExists") => "AlreadyExists",
        Some("ConditionNotMet") => "PreconditionFailed",
        Some("NotModified") => "NotModified",
        Some("InvalidRange") => "InvalidRange",
        Some("InvalidBlockList") => "InvalidBlockList",
        Some("InvalidBlobOrBlock") => "InvalidBlockList",
        Some("InvalidResourceName" | "OutOfRangeInput") => "InvalidName",
        Some(
            "LeaseIdMissing" | "LeaseIdMismatchWithBlobOperation" | "LeaseNotPresentWithBlobOperation" | "LeaseLost",
        ) => "PreconditionFailed",
        Some(
            "LeaseAlreadyPresent"
            | "LeaseIdMismatchWithLeaseOperation"
            | "LeaseNotPresentWithLeaseOperation"
            | "LeaseIsBreakingAndCannotBeAcquired"
            | "LeaseIsBreakingAndCannotBeChanged"
            | "LeaseIsBrokenAndCannotBeRenewed",
        ) => "LeaseConflict",
        Some(other) => return format!("Azure:{other}"),
    };
    class.to_owned()
}

fn vmblob_class(e: &ClientError) -> String {
    match e {
        ClientError::Status { error, .. } => format!("{error:?}"),
        ClientError::InvalidName { .. } => "InvalidName".into(),
        other => format!("Client:{other}"),
    }
}

fn data_of(op: &Value) -> Vec<u8> {
    match &op["data"] {
        Value::String(s) => s.as_bytes().to_vec(),
        d => {
            let (len, seed) = (d["len"].as_u64().unwrap(), d["seed"].as_u64().unwrap());
            (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect()
        }
    }
}

fn metadata_of(op: &Value) -> Metadata {
    let pairs = op["metadata"].as_object().map_or_else(Vec::new, |m| {
        m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect::<Vec<_>>()
    });
    Metadata::new(pairs).unwrap()
}

fn metadata_json(m: &Metadata) -> Value {
    Value::Object(m.0.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// `$k`, `$k~` or `*` to an ETag, from this side's own earlier answers.
fn etag_ref(results: &[Value], r: &str) -> ETag {
    if r == "*" {
        return ETag::any();
    }
    let k: usize = r.trim_start_matches('$').trim_end_matches('~').parse().unwrap();
    let tag = results[k]["etag"].as_str().unwrap_or_else(|| panic!("op {k} answered no ETag"));
    ETag::new(if r.ends_with('~') { tag.trim_matches('"') } else { tag }).unwrap()
}

/// `$k` or `$k-1` to ms since the epoch: op k's last-modified second, or the one before.
fn time_ref(results: &[Value], r: &str) -> u64 {
    let (k, minus) = r.trim_start_matches('$').split_once('-').unwrap_or((r.trim_start_matches('$'), "0"));
    let secs = results[k.parse::<usize>().unwrap()]["lm"].as_u64().unwrap_or_else(|| panic!("op {k} has no time"));
    (secs - minus.parse::<u64>().unwrap()) * 1000
}

/// The lease ids scenarios name (as `azure_reference.py` has them).
const LEASES: [(&str, &str); 2] =
    [("L1", "11111111-1111-4111-8111-111111111111"), ("L2", "22222222-2222-4222-8222-222222222222")];

fn lease_ref(name: &Value) -> Option<LeaseId> {
    let name = name.as_str()?;
    let (_, id) = LEASES.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no lease {name}"));
    Some(id.parse().unwrap())
}

fn lease_name(id: Option<LeaseId>) -> Value {
    let text = id.map(|i| i.to_string()).unwrap_or_default();
    json!(LEASES.iter().find(|(_, v)| *v == text).map_or("fresh", |(n, _)| n))
}

fn conditions(op: &Value, results: &[Value]) -> Conditions {
    let time = |k: &str| op[k].as_str().map(|r| time_ref(results, r));
    Conditions {
        lease_id: lease_ref(&op["lease"]),
        if_match: op["if_match"].as_str().map(|r| etag_ref(results, r)),
        if_none_match: op["if_none_match"].as_str().map(|r| etag_ref(results, r)),
        if_modified_since_ms: time("if_modified_since"),
        if_unmodified_since_ms: time("if_unmodified_since"),
    }
}

fn headers_of(op: &Value) -> ContentHeaders {
    let h = |k: &str| op["headers"][k].as_str().unwrap_or("").to_owned();
    ContentHeaders {
        content_encoding: h("content_encoding"),
        content_language: h("content_language"),
        content_disposition: h("content_disposition"),
        cache_control: h("cache_control"),
    }
}

fn put_options(op: &Value, results: &[Value]) -> PutOptions {
    PutOptions {
        content_type: op["content_type"].as_str().unwrap_or("").to_owned(),
        headers: headers_of(op),
        metadata: metadata_of(op),
        conditions: conditions(op, results),
    }
}

fn written(w: vmblob_vsc::BlobWritten) -> Value {
    json!({ "etag": w.etag, "lm": w.last_modified_ms / 1000 })
}

fn properties_json(p: &vmblob_vsc::BlobProperties, op: &Value, results: &[Value]) -> Value {
    let h = &p.headers;
    let mut out = json!({ "len": p.content_length, "content_type": p.content_type,
            "metadata": metadata_json(&p.metadata), "etag": p.etag, "lm": p.last_modified_ms / 1000,
            "lease": [p.lease.state.name(), if p.lease.state.is_locked() { "locked" } else { "unlocked" },
                      p.lease.duration.map(|k| if k == LeaseKind::Fixed { "fixed" } else { "infinite" })],
            "headers": { "content_encoding": h.content_encoding, "content_language": h.content_language,
                         "content_disposition": h.content_disposition, "cache_control": h.cache_control } });
    if let Some(k) = op["created_of"].as_u64() {
        out["created_is_op"] = json!(json!(p.created_ms / 1000) == results[k as usize]["lm"]);
    }
    out
}

/// One op through vmblob's guest client.
fn run_vmblob(g: &Guest, op: &Value, results: &[Value]) -> Result<Value, ClientError> {
    let s = |k: &str| op[k].as_str().unwrap_or_default().to_owned();
    let c = g.container(&s("c"));
    let b = c.blob(&s("b"));
    Ok(match op["op"].as_str().unwrap() {
        "create_container" => json!({ "etag": c.create()?.etag }),
        "delete_container" => {
            c.delete()?;
            json!({})
        }
        "put" => written(b.put_opts(&data_of(op), put_options(op, results))?),
        "get" => {
            let range = op["range"].as_array().map(|r| {
                let (o, l) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
                o..o + l
            });
            let got = b.get_opts(GetOptions { range, conditions: conditions(op, results) })?;
            let mut out = properties_json(&got.properties, op, results);
            out["sha256"] = json!(sha256_hex(&got.data));
            out["body_len"] = json!(got.data.len());
            out
        }
        "head" => properties_json(&b.properties_opts(conditions(op, results))?, op, results),
        "delete" => {
            b.delete_opts(conditions(op, results))?;
            json!({})
        }
        "set_metadata" => written(b.set_metadata(metadata_of(op), conditions(op, results))?),
        "set_content_type" => written(b.set_content_type(&s("content_type"), conditions(op, results))?),
        "set_properties" => written(b.set_http_headers(&s("content_type"), headers_of(op), conditions(op, results))?),
        "copy" => {
            let from = g.container(&s("from_c")).blob(&s("from_b"));
            let options = CopyOptions {
                source_conditions: op["source_if_match"]
                    .as_str()
                    .map_or_else(Conditions::none, |r| Conditions::if_match(etag_ref(results, r))),
                conditions: conditions(op, results),
                metadata: op["metadata"].is_object().then(|| metadata_of(op)),
            };
            written(b.copy_from(&from, options)?)
        }
        "stage" => {
            let data = data_of(op);
            let id = BlockId::new(s("id").as_bytes()).unwrap();
            b.submit_block(&id, &[&data], crc64(&data), lease_ref(&op["lease"]))?.wait()?;
            json!({})
        }
        "commit" => {
            let ids = op["ids"].as_array().unwrap().iter();
            let blocks = ids.map(|i| ListedBlock::unproven(BlockId::new(i.as_str().unwrap().as_bytes()).unwrap()));
            written(b.commit_blocks(blocks, put_options(op, results))?)
        }
        "block_list" => {
            let blocks = b.block_list(BlockListType::All)?;
            let side = |committed: bool| {
                blocks
                    .iter()
                    .filter(|x| x.committed == committed)
                    .map(|x| json!([String::from_utf8_lossy(&x.id), x.size]))
                    .collect::<Vec<_>>()
            };
            json!({ "committed": side(true), "uncommitted": side(false) })
        }
        "list" => {
            let options = ListBlobsOptions {
                prefix: s("prefix"),
                delimiter: s("delimiter"),
                max_results: op["max"].as_u64().unwrap_or(0) as u32,
                include_uncommitted: op["uncommitted"].as_bool().unwrap_or(false),
                ..ListBlobsOptions::default()
            };
            let mut pages = Vec::new();
            for page in c.list_blobs(options) {
                let names: Vec<String> = page?
                    .items
                    .into_iter()
                    .map(|i| match i {
                        // Azure lists an uncommitted blob as a blob (of length 0).
                        BlobListItem::Blob { name, .. } | BlobListItem::Uncommitted(name) => name,
                        BlobListItem::Prefix(p) => format!("prefix:{p}"),
                    })
                    .collect();
                pages.push(names);
            }
            json!({ "pages": pages })
        }
        "lease" => {
            let mut cond = conditions(op, results);
            cond.lease_id = None;
            let held = || lease_ref(&op["lease"]).expect("the lease held");
            let action = match op["action"].as_str().unwrap() {
                "acquire" => LeaseAction::Acquire {
                    duration: op["duration"]
                        .as_u64()
                        .map_or(LeaseDuration::Infinite, |s| LeaseDuration::Fixed(s as u32)),
                    proposed_id: lease_ref(&op["proposed"]),
                },
                "renew" => LeaseAction::Renew { lease_id: held() },
                "change" => LeaseAction::Change { lease_id: held(), proposed_id: lease_ref(&op["proposed"]).unwrap() },
                "release" => LeaseAction::Release { lease_id: held() },
                "break" => LeaseAction::Break { break_period_secs: op["period"].as_u64().map(|p| p as u32) },
                other => panic!("unknown lease action {other}"),
            };
            let is = |a: &str| op["action"] == a;
            let r = b.lease(action, cond)?;
            if is("break") {
                json!({ "lease_time": r.lease_time_secs })
            } else if is("release") {
                json!({})
            } else {
                json!({ "lease_id": lease_name(r.lease_id) })
            }
        }
        "list_containers" => {
            let options = ListContainersOptions { prefix: s("prefix"), ..ListContainersOptions::default() };
            let mut names = Vec::new();
            for page in g.list_containers(options) {
                names.extend(page?.items.into_iter().map(|e| e.name));
            }
            json!({ "names": names })
        }
        other => panic!("unknown op {other}"),
    })
}

/// What is compared of one answer: its class, and for a success every
/// observation but the ETag and the time (each side's own).
fn comparable(class: String, r: &Value) -> Value {
    let mut r = r.clone();
    if let Some(m) = r.as_object_mut() {
        for k in ["etag", "lm", "http", "code"] {
            m.remove(k);
        }
    }
    if class == "Ok" { json!({ "class": class, "observed": r }) } else { json!({ "class": class }) }
}

struct Scenario {
    name: &'static str,
    ops: Vec<Value>,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "containers_and_whole_blobs",
            ops: vec![
                json!({"op": "create_container", "c": "alpha"}),
                json!({"op": "create_container", "c": "alpha"}),
                json!({"op": "put", "c": "alpha", "b": "a.txt", "data": "hello world", "content_type": "text/plain",
                       "metadata": {"k": "v", "other": "x y"}}),
                json!({"op": "get", "c": "alpha", "b": "a.txt"}),
                json!({"op": "head", "c": "alpha", "b": "a.txt"}),
                json!({"op": "get", "c": "alpha", "b": "a.txt", "range": [6, 5]}),
                json!({"op": "get", "c": "alpha", "b": "a.txt", "range": [6, 100]}),
                json!({"op": "get", "c": "alpha", "b": "a.txt", "range": [11, 4]}),
                json!({"op": "get", "c": "alpha", "b": "nope"}),
                json!({"op": "get", "c": "missing", "b": "a.txt"}),
                json!({"op": "put", "c": "missing", "b": "a.txt", "data": "x"}),
                json!({"op": "delete", "c": "alpha", "b": "nope"}),
                // No content type: Azure's default (bug 5).
                json!({"op": "put", "c": "alpha", "b": "plain", "data": {"len": 70000, "seed": 3}}),
                json!({"op": "head", "c": "alpha", "b": "plain"}),
                json!({"op": "put", "c": "alpha", "b": "empty", "data": ""}),
                json!({"op": "get", "c": "alpha", "b": "empty"}),
                json!({"op": "list_containers", "prefix": "al"}),
                json!({"op": "delete_container", "c": "alpha"}),
                json!({"op": "get", "c": "alpha", "b": "a.txt"}),
                json!({"op": "delete_container", "c": "alpha"}),
            ],
        },
        Scenario {
            name: "conditions",
            ops: vec![
                json!({"op": "create_container", "c": "cond"}),
                json!({"op": "put", "c": "cond", "b": "x", "data": "one"}),
                // If-None-Match * over an existing blob: 409 BlobAlreadyExists (bug 6).
                json!({"op": "put", "c": "cond", "b": "x", "data": "two", "if_none_match": "*"}),
                json!({"op": "put", "c": "cond", "b": "x", "data": "two", "if_match": "$1"}),
                json!({"op": "put", "c": "cond", "b": "x", "data": "three", "if_match": "$1"}),
                json!({"op": "get", "c": "cond", "b": "x", "if_match": "$3"}),
                json!({"op": "get", "c": "cond", "b": "x", "if_match": "$1"}),
                // If-None-Match with the current ETag: 304 (bug 6), quoted or not (bug 1).
                json!({"op": "get", "c": "cond", "b": "x", "if_none_match": "$3"}),
                json!({"op": "head", "c": "cond", "b": "x", "if_none_match": "$3~"}),
                json!({"op": "put", "c": "cond", "b": "x", "data": "four", "if_none_match": "$3~"}),
                json!({"op": "put", "c": "cond", "b": "x", "data": "four", "if_match": "$3~"}),
                json!({"op": "get", "c": "cond", "b": "x", "if_none_match": "$1"}),
                json!({"op": "put", "c": "cond", "b": "new", "data": "n", "if_none_match": "*"}),
                json!({"op": "put", "c": "cond", "b": "absent", "data": "n", "if_match": "*"}),
                json!({"op": "put", "c": "cond", "b": "absent", "data": "n", "if_match": "$1"}),
                json!({"op": "delete", "c": "cond", "b": "x", "if_match": "$1"}),
                json!({"op": "delete", "c": "cond", "b": "x", "if_match": "$10~"}),
                json!({"op": "head", "c": "cond", "b": "x"}),
            ],
        },
        Scenario {
            name: "blocks",
            ops: vec![
                json!({"op": "create_container", "c": "blk"}),
                json!({"op": "stage", "c": "blk", "b": "b", "id": "id-01", "data": {"len": 1000, "seed": 1}}),
                json!({"op": "stage", "c": "blk", "b": "b", "id": "id-02", "data": "second"}),
                json!({"op": "block_list", "c": "blk", "b": "b"}),
                json!({"op": "get", "c": "blk", "b": "b"}),
                json!({"op": "list", "c": "blk"}),
                json!({"op": "commit", "c": "blk", "b": "b", "ids": ["id-02", "id-01"], "content_type": "a/b",
                       "metadata": {"m": "1"}}),
                json!({"op": "get", "c": "blk", "b": "b"}),
                json!({"op": "block_list", "c": "blk", "b": "b"}),
                json!({"op": "stage", "c": "blk", "b": "b", "id": "id-03", "data": "third"}),
                json!({"op": "block_list", "c": "blk", "b": "b"}),
                // A committed block and a staged one; then an id nobody staged.
                json!({"op": "commit", "c": "blk", "b": "b", "ids": ["id-01", "id-03"]}),
                json!({"op": "get", "c": "blk", "b": "b"}),
                json!({"op": "commit", "c": "blk", "b": "b", "ids": ["id-09"]}),
                json!({"op": "commit", "c": "blk", "b": "b", "ids": ["id-01"], "if_match": "$6"}),
                // Ids of another length in the same blob (bug 3).
                json!({"op": "stage", "c": "blk", "b": "mixed", "id": "aa", "data": "x"}),
                json!({"op": "stage", "c": "blk", "b": "mixed", "id": "bbb", "data": "y"}),
                json!({"op": "commit", "c": "blk", "b": "mixed", "ids": ["aa", "bbb"]}),
                // A name with only staged blocks is deleted, blocks and all (bug 2).
                json!({"op": "stage", "c": "blk", "b": "only-staged", "id": "s1", "data": "z"}),
                json!({"op": "delete", "c": "blk", "b": "only-staged"}),
                json!({"op": "block_list", "c": "blk", "b": "only-staged"}),
                json!({"op": "commit", "c": "blk", "b": "empty", "ids": []}),
                json!({"op": "head", "c": "blk", "b": "empty"}),
                // Listing uncommitted blobs: staged-only names among the blobs, rolled
                // up, paged; a committed blob with staged blocks once.
                json!({"op": "stage", "c": "blk", "b": "up/part", "id": "u1", "data": "p"}),
                json!({"op": "stage", "c": "blk", "b": "c-staged", "id": "u1", "data": "p"}),
                json!({"op": "stage", "c": "blk", "b": "b", "id": "id-07", "data": "p"}),
                json!({"op": "list", "c": "blk"}),
                json!({"op": "list", "c": "blk", "uncommitted": true}),
                json!({"op": "list", "c": "blk", "uncommitted": true, "max": 1}),
                json!({"op": "list", "c": "blk", "uncommitted": true, "delimiter": "/"}),
                json!({"op": "list", "c": "blk", "uncommitted": true, "prefix": "up/"}),
            ],
        },
        Scenario {
            name: "names",
            ops: vec![
                json!({"op": "create_container", "c": "nms"}),
                json!({"op": "put", "c": "nms", "b": "dir/", "data": "x"}),
                json!({"op": "put", "c": "nms", "b": "a//b", "data": "x"}),
                json!({"op": "put", "c": "nms", "b": "/lead", "data": "x"}),
                json!({"op": "put", "c": "nms", "b": "x/./y", "data": "x"}),
                json!({"op": "put", "c": "nms", "b": "back\\slash", "data": "x"}),
                json!({"op": "put", "c": "nms", "b": "ünïcode/名前 with spaces", "data": "x"}),
                json!({"op": "get", "c": "nms", "b": "ünïcode/名前 with spaces"}),
                json!({"op": "put", "c": "nms", "b": "n".repeat(1024), "data": "x"}),
                json!({"op": "head", "c": "nms", "b": "n".repeat(1024)}),
                json!({"op": "create_container", "c": "UPPER"}),
                json!({"op": "create_container", "c": "a--b"}),
                json!({"op": "create_container", "c": "ab"}),
                json!({"op": "put", "c": "nms", "b": "m", "data": "x", "metadata": {"Mixed_Case": "v", "_u": ""}}),
                json!({"op": "head", "c": "nms", "b": "m"}),
            ],
        },
        Scenario {
            name: "properties",
            ops: vec![
                json!({"op": "create_container", "c": "props"}),
                json!({"op": "put", "c": "props", "b": "b", "data": "hello", "content_type": "text/plain",
                       "metadata": {"a": "1"}}),
                json!({"op": "stage", "c": "props", "b": "b", "id": "blk-01", "data": "staged"}),
                json!({"op": "set_metadata", "c": "props", "b": "b", "metadata": {"x": "y", "Mixed": "Case"}}),
                json!({"op": "head", "c": "props", "b": "b"}),
                json!({"op": "set_content_type", "c": "props", "b": "b", "content_type": "application/json",
                       "if_match": "$3"}),
                json!({"op": "set_content_type", "c": "props", "b": "b", "content_type": "text/html",
                       "if_match": "$1"}),
                json!({"op": "get", "c": "props", "b": "b"}),
                json!({"op": "block_list", "c": "props", "b": "b"}),
                json!({"op": "set_metadata", "c": "props", "b": "missing", "metadata": {"k": "v"}}),
                json!({"op": "set_metadata", "c": "props", "b": "b", "if_match": "$5~"}),
                json!({"op": "head", "c": "props", "b": "b"}),
                json!({"op": "stage", "c": "props", "b": "only-staged", "id": "blk-01", "data": "s"}),
                json!({"op": "set_content_type", "c": "props", "b": "only-staged", "content_type": "a/b"}),
                json!({"op": "set_metadata", "c": "nobox", "b": "b", "metadata": {"k": "v"}}),
                json!({"op": "set_content_type", "c": "props", "b": "b", "content_type": ""}),
                json!({"op": "head", "c": "props", "b": "b"}),
                // Last, since Azurite lets it through and what follows would differ by cascade.
                json!({"op": "set_metadata", "c": "props", "b": "b", "if_none_match": "*"}),
                json!({"op": "delete_container", "c": "props"}),
            ],
        },
        Scenario {
            name: "copy",
            ops: vec![
                json!({"op": "create_container", "c": "cpa"}),
                json!({"op": "create_container", "c": "cpb"}),
                json!({"op": "put", "c": "cpa", "b": "src", "data": {"len": 70000, "seed": 9},
                       "content_type": "image/png", "metadata": {"camera": "x100"}}),
                json!({"op": "copy", "c": "cpb", "b": "dst", "from_c": "cpa", "from_b": "src"}),
                json!({"op": "get", "c": "cpb", "b": "dst"}),
                json!({"op": "copy", "c": "cpa", "b": "meta", "from_c": "cpa", "from_b": "src",
                       "metadata": {"new": "set"}}),
                json!({"op": "head", "c": "cpa", "b": "meta"}),
                json!({"op": "copy", "c": "cpb", "b": "dst", "from_c": "cpa", "from_b": "src", "if_none_match": "*"}),
                json!({"op": "copy", "c": "cpb", "b": "dst", "from_c": "cpa", "from_b": "src", "if_match": "$2"}),
                json!({"op": "copy", "c": "cpb", "b": "dst", "from_c": "cpa", "from_b": "src", "if_match": "$3"}),
                json!({"op": "copy", "c": "cpb", "b": "x", "from_c": "cpa", "from_b": "src", "source_if_match": "$3"}),
                json!({"op": "copy", "c": "cpb", "b": "y", "from_c": "cpa", "from_b": "src", "source_if_match": "$2"}),
                json!({"op": "copy", "c": "cpb", "b": "z", "from_c": "cpa", "from_b": "missing"}),
                json!({"op": "stage", "c": "cpa", "b": "blk", "id": "id-01", "data": "block one"}),
                json!({"op": "stage", "c": "cpa", "b": "blk", "id": "id-02", "data": "block two"}),
                json!({"op": "commit", "c": "cpa", "b": "blk", "ids": ["id-01", "id-02"]}),
                json!({"op": "copy", "c": "cpb", "b": "blk", "from_c": "cpa", "from_b": "blk"}),
                json!({"op": "block_list", "c": "cpb", "b": "blk"}),
                json!({"op": "get", "c": "cpb", "b": "blk"}),
                json!({"op": "delete_container", "c": "cpa"}),
                json!({"op": "delete_container", "c": "cpb"}),
            ],
        },
        Scenario {
            name: "times",
            ops: vec![
                json!({"op": "create_container", "c": "tms"}),
                json!({"op": "put", "c": "tms", "b": "t", "data": "one"}),
                // Reads: modified since the second before (200), not since its own (304);
                // unmodified since its own (200), not since the second before (412).
                json!({"op": "get", "c": "tms", "b": "t", "if_modified_since": "$1-1"}),
                json!({"op": "get", "c": "tms", "b": "t", "if_modified_since": "$1"}),
                json!({"op": "head", "c": "tms", "b": "t", "if_modified_since": "$1"}),
                json!({"op": "head", "c": "tms", "b": "t", "if_unmodified_since": "$1"}),
                json!({"op": "get", "c": "tms", "b": "t", "if_unmodified_since": "$1-1"}),
                // With an ETag condition: If-None-Match decides with If-Modified-Since on a read.
                json!({"op": "get", "c": "tms", "b": "t", "if_none_match": "$1", "if_modified_since": "$1-1"}),
                json!({"op": "get", "c": "tms", "b": "t", "if_match": "$1", "if_unmodified_since": "$1"}),
                // Writes: 412 when a time condition fails, through when it holds.
                json!({"op": "put", "c": "tms", "b": "t", "data": "two", "if_modified_since": "$1"}),
                json!({"op": "put", "c": "tms", "b": "t", "data": "two", "if_unmodified_since": "$1-1"}),
                json!({"op": "set_metadata", "c": "tms", "b": "t", "metadata": {"k": "v"},
                       "if_modified_since": "$1"}),
                json!({"op": "delete", "c": "tms", "b": "t", "if_unmodified_since": "$1-1"}),
                json!({"op": "put", "c": "tms", "b": "t", "data": "two", "if_unmodified_since": "$1"}),
                json!({"op": "head", "c": "tms", "b": "t", "created_of": 13}),
                json!({"op": "set_metadata", "c": "tms", "b": "t", "metadata": {"k": "v"},
                       "if_modified_since": "$13-1"}),
                // A metadata change keeps the creation time.
                json!({"op": "head", "c": "tms", "b": "t", "created_of": 13}),
                // Time conditions on a blob that is not there: writes go through.
                json!({"op": "put", "c": "tms", "b": "new", "data": "n", "if_unmodified_since": "$1-1"}),
                json!({"op": "put", "c": "tms", "b": "new2", "data": "n", "if_modified_since": "$1"}),
                json!({"op": "get", "c": "tms", "b": "none", "if_modified_since": "$1"}),
                json!({"op": "delete", "c": "tms", "b": "t", "if_unmodified_since": "$15"}),
                json!({"op": "delete_container", "c": "tms"}),
            ],
        },
        Scenario {
            name: "http_headers",
            ops: vec![
                json!({"op": "create_container", "c": "hdr"}),
                // An encoding HTTP clients do not undo, so the GET compares the stored bytes.
                json!({"op": "put", "c": "hdr", "b": "h", "data": "x", "content_type": "text/csv",
                       "headers": {"content_encoding": "x-vmblob", "content_language": "de-CH",
                                   "content_disposition": "attachment; filename=\"r.csv\"",
                                   "cache_control": "max-age=60"}}),
                json!({"op": "head", "c": "hdr", "b": "h", "created_of": 1}),
                json!({"op": "get", "c": "hdr", "b": "h"}),
                // Set Blob Properties replaces them all: one not given is cleared.
                json!({"op": "set_properties", "c": "hdr", "b": "h", "content_type": "text/plain",
                       "headers": {"cache_control": "no-cache"}}),
                json!({"op": "head", "c": "hdr", "b": "h", "created_of": 1}),
                json!({"op": "set_metadata", "c": "hdr", "b": "h", "metadata": {"a": "b"}}),
                json!({"op": "head", "c": "hdr", "b": "h"}),
                json!({"op": "stage", "c": "hdr", "b": "blk", "id": "id-1", "data": "block"}),
                json!({"op": "commit", "c": "hdr", "b": "blk", "ids": ["id-1"],
                       "headers": {"content_language": "fr", "content_encoding": "br"}}),
                // Not `created_of`: Azurite keeps a committed block blob's creation time from its
                // first PutBlock (PROTOCOL.md §6.4), so whether it equals the commit's second
                // depends on timing.
                json!({"op": "head", "c": "hdr", "b": "blk"}),
                json!({"op": "copy", "c": "hdr", "b": "cp", "from_c": "hdr", "from_b": "h"}),
                json!({"op": "head", "c": "hdr", "b": "cp", "created_of": 11}),
                json!({"op": "list", "c": "hdr"}),
                json!({"op": "delete_container", "c": "hdr"}),
            ],
        },
        Scenario {
            name: "leases",
            ops: vec![
                json!({"op": "create_container", "c": "lse"}),
                json!({"op": "put", "c": "lse", "b": "x", "data": "one"}),
                json!({"op": "lease", "c": "lse", "b": "x", "action": "acquire", "proposed": "L1"}),
                json!({"op": "head", "c": "lse", "b": "x"}),
                // Writes need the lease: without it, or with another, 412.
                json!({"op": "put", "c": "lse", "b": "x", "data": "two"}),
                json!({"op": "put", "c": "lse", "b": "x", "data": "two", "lease": "L2"}),
                json!({"op": "put", "c": "lse", "b": "x", "data": "two", "lease": "L1"}),
                json!({"op": "get", "c": "lse", "b": "x", "lease": "L2"}),
                json!({"op": "get", "c": "lse", "b": "x"}),
                json!({"op": "set_metadata", "c": "lse", "b": "x", "metadata": {"a": "b"}}),
                json!({"op": "set_metadata", "c": "lse", "b": "x", "metadata": {"a": "b"}, "lease": "L1"}),
                json!({"op": "stage", "c": "lse", "b": "x", "id": "s1", "data": "staged"}),
                json!({"op": "stage", "c": "lse", "b": "x", "id": "s1", "data": "staged", "lease": "L1"}),
                json!({"op": "commit", "c": "lse", "b": "x", "ids": ["s1"]}),
                json!({"op": "commit", "c": "lse", "b": "x", "ids": ["s1"], "lease": "L1"}),
                json!({"op": "delete", "c": "lse", "b": "x"}),
                // Lease actions: someone else's acquire, the holder's re-acquire, renew, change.
                json!({"op": "lease", "c": "lse", "b": "x", "action": "acquire", "proposed": "L2"}),
                json!({"op": "lease", "c": "lse", "b": "x", "action": "acquire", "proposed": "L1", "duration": 15}),
                json!({"op": "head", "c": "lse", "b": "x", "lease": "L1"}),
                json!({"op": "lease", "c": "lse", "b": "x", "action": "renew", "lease": "L2"}),
                json!({"op": "lease", "c": "lse", "b": "x", "action": "renew", "lease": "L1"}),
                json!({"op": "lease", "c": "lse", "b": "x", "action": "change", "lease": "L1", "proposed": "L2"}),
                json!({"op": "put", "c": "lse", "b": "x", "data": "three", "lease": "L1"}),
                // Broken at once: unlocked, not renewable, forgotten by the next write.
                json!({"op": "lease", "c": "lse", "b": "x", "action": "break", "period": 0}),
                json!({"op": "head", "c": "lse", "b": "x"}),
                json!({"op": "put", "c": "lse", "b": "x", "data": "three", "lease": "L2"}),
                json!({"op": "lease", "c": "lse", "b": "x", "action": "renew", "lease": "L2"}),
                json!({"op": "put", "c": "lse", "b": "x", "data": "three"}),
                json!({"op": "head", "c": "lse", "b": "x"}),
                // An infinite lease breaks at once without a period; release frees it.
                json!({"op": "lease", "c": "lse", "b": "x", "action": "acquire", "proposed": "L1"}),
                json!({"op": "lease", "c": "lse", "b": "x", "action": "break"}),
                json!({"op": "lease", "c": "lse", "b": "x", "action": "release", "lease": "L1"}),
                json!({"op": "head", "c": "lse", "b": "x"}),
                json!({"op": "lease", "c": "lse", "b": "x", "action": "release", "lease": "L1"}),
                json!({"op": "lease", "c": "lse", "b": "x", "action": "break"}),
                json!({"op": "lease", "c": "lse", "b": "absent", "action": "acquire", "proposed": "L1"}),
                // A lease action under a condition that fails; a copy onto a leased blob.
                json!({"op": "lease", "c": "lse", "b": "x", "action": "acquire", "proposed": "L2", "if_match": "$1"}),
                json!({"op": "put", "c": "lse", "b": "src", "data": "source"}),
                json!({"op": "lease", "c": "lse", "b": "x", "action": "acquire", "proposed": "L2"}),
                json!({"op": "copy", "c": "lse", "b": "x", "from_c": "lse", "from_b": "src"}),
                json!({"op": "copy", "c": "lse", "b": "x", "from_c": "lse", "from_b": "src", "lease": "L2"}),
                json!({"op": "get", "c": "lse", "b": "x"}),
                json!({"op": "delete", "c": "lse", "b": "x", "lease": "L1"}),
                json!({"op": "delete", "c": "lse", "b": "x", "lease": "L2"}),
                json!({"op": "head", "c": "lse", "b": "x"}),
                // A read's 304 and a missing blob's 404 come before the lease's 412.
                json!({"op": "put", "c": "lse", "b": "y", "data": "why"}),
                json!({"op": "lease", "c": "lse", "b": "y", "action": "acquire", "proposed": "L1"}),
                json!({"op": "head", "c": "lse", "b": "y", "if_none_match": "$45", "lease": "L2"}),
                json!({"op": "head", "c": "lse", "b": "y", "lease": "L2"}),
                json!({"op": "delete", "c": "lse", "b": "absent", "lease": "L1"}),
                json!({"op": "head", "c": "lse", "b": "absent", "lease": "L1"}),
                // A name with only staged blocks can be leased before it is committed.
                json!({"op": "stage", "c": "lse", "b": "fresh", "id": "f1", "data": "f"}),
                json!({"op": "lease", "c": "lse", "b": "fresh", "action": "acquire", "proposed": "L2"}),
                json!({"op": "stage", "c": "lse", "b": "fresh", "id": "f2", "data": "g"}),
                json!({"op": "delete", "c": "lse", "b": "fresh"}),
                json!({"op": "commit", "c": "lse", "b": "fresh", "ids": ["f1"], "lease": "L2"}),
                json!({"op": "head", "c": "lse", "b": "fresh"}),
                json!({"op": "put", "c": "lse", "b": "fresh", "data": "x"}),
                json!({"op": "delete_container", "c": "lse"}),
            ],
        },
        Scenario {
            name: "listing",
            ops: {
                let names =
                    ["a", "a/b", "a/c/d", "a-b", "b", "B", "a.txt", "dir/x", "dir/y/z", "😀", "\u{ff01}", "é", "z"];
                let mut ops = vec![json!({"op": "create_container", "c": "lst"})];
                ops.extend(names.iter().map(|n| json!({"op": "put", "c": "lst", "b": n, "data": n})));
                ops.extend([
                    json!({"op": "list", "c": "lst"}),
                    json!({"op": "list", "c": "lst", "max": 3}),
                    json!({"op": "list", "c": "lst", "delimiter": "/"}),
                    json!({"op": "list", "c": "lst", "delimiter": "/", "max": 2}),
                    json!({"op": "list", "c": "lst", "prefix": "a"}),
                    json!({"op": "list", "c": "lst", "prefix": "a/", "delimiter": "/"}),
                    json!({"op": "list", "c": "lst", "prefix": "dir/", "delimiter": "/"}),
                    json!({"op": "list", "c": "lst", "prefix": "nothing"}),
                ]);
                ops
            },
        },
    ]
}

/// Runs every scenario on `g` and on the reference; returns the differences
/// as (scenario, op, vmblob's answer, Azure's answer).
fn differences(g: &Guest, python: &std::path::Path, reference: &Azurite) -> Vec<(String, usize, Value, Value)> {
    let mut found = Vec::new();
    for sc in scenarios() {
        let azure = run_reference(python, reference, &sc.ops).unwrap_or_else(|e| panic!("{}: {e}", sc.name));
        // A scenario whose container Azure refused would compare refusals only.
        assert!(azure_class(&azure[0]) == "Ok", "{}: Azure refused the set-up: {}", sc.name, azure[0]);
        let mut ours: Vec<Value> = Vec::new();
        for op in &sc.ops {
            let r = match run_vmblob(g, op, &ours) {
                Ok(mut v) => {
                    v["class"] = json!("Ok");
                    v
                }
                Err(e) => json!({ "class": vmblob_class(&e) }),
            };
            ours.push(r);
        }
        for (i, ((o, a), op)) in ours.iter().zip(&azure).zip(&sc.ops).enumerate() {
            let (mut o, mut a) =
                (comparable(o["class"].as_str().unwrap().to_owned(), o), comparable(azure_class(a), a));
            if op["delimiter"].is_string() {
                // The SDK hands a page's prefixes before its blobs, so only a page's
                // contents, not their interleaving, can be compared.
                sort_pages(&mut o);
                sort_pages(&mut a);
            }
            let o = json!({ "class": o["class"], "observed": o.get("observed").map(|v| {
                let mut v = v.clone();
                v.as_object_mut().map(|m| m.remove("class"));
                v
            }) });
            let a = json!({ "class": a["class"], "observed": a.get("observed") });
            if o != a {
                found.push((sc.name.to_owned(), i, o, a));
            }
        }
    }
    found
}

fn sort_pages(r: &mut Value) {
    if let Some(pages) = r.pointer_mut("/observed/pages").and_then(Value::as_array_mut) {
        for p in pages {
            if let Some(names) = p.as_array_mut() {
                names.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
    }
}

fn check_against_azure(store: StoreKind, label: &str) {
    let Some(python) = python_with_sdk().unwrap_or_else(|e| panic!("{e}")) else { return };
    let Some(reference) = Azurite::start().unwrap_or_else(|e| panic!("{e}")) else { return };
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default().store(store));
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    let found = differences(&g, &python, &reference);
    let mut undocumented = Vec::new();
    let listed: Vec<(&str, usize, &str)> = DOCUMENTED
        .iter()
        .chain(OPEN_BUGS)
        .copied()
        .chain(
            DOCUMENTED_OF_STORE
                .iter()
                .chain(OPEN_BUGS_OF_STORE)
                .filter(|(l, ..)| *l == label)
                .map(|&(_, s, k, why)| (s, k, why)),
        )
        .collect();
    for (sc, i, o, a) in &found {
        match listed.iter().find(|(s, k, _)| s == sc && k == i) {
            Some((_, _, why)) => eprintln!("{label}: {sc} op {i} differs ({why}): vmblob {o} | Azure {a}"),
            None => undocumented.push(format!("{sc} op {i}: vmblob {o} | Azure {a}")),
        }
    }
    let stale: Vec<_> =
        listed.iter().filter(|(s, k, _)| !found.iter().any(|(sc, i, _, _)| sc == s && i == k)).collect();
    eprintln!("{label}: {} differences, {} listed", found.len(), found.len() - undocumented.len());
    assert!(undocumented.is_empty(), "{label}: undocumented differences from Azure:\n{}", undocumented.join("\n"));
    assert!(stale.is_empty(), "{label}: listed differences that no longer differ (remove them): {stale:?}");
}

#[test]
fn embedded_store_answers_as_azure() {
    check_against_azure(StoreKind::Embedded, "embedded store");
}

#[test]
fn azure_backed_store_answers_as_azure() {
    let Some(store) = azurite::fresh_store() else { return };
    check_against_azure(store, "Azure-backed store");
}
