//! The `vmblob` CLI against a real daemon: every verb, the exit codes a
//! script relies on, stdout output, directory copies and the demo.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use vmblob_integration::{Sandbox, Vsp, VspOptions, vmblob_binary};

fn vmblob(socket: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(vmblob_binary());
    cmd.env_remove("VMBLOB_SOCKET").arg("--quiet").arg("--connect-timeout-ms").arg("1000");
    if let Some(s) = socket {
        cmd.arg("--socket").arg(s);
    }
    cmd.args(args).stdin(Stdio::null()).output().expect("run vmblob")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn ok(socket: &Path, args: &[&str]) -> String {
    let o = vmblob(Some(socket), args);
    assert_eq!(code(&o), 0, "vmblob {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).expect("utf-8 output")
}

/// Deterministic bytes (xorshift) so files differ in every block.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn verbs_output_and_exit_codes() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket();
    ok(s, &["mb", "photos"]);
    let dup = vmblob(Some(s), &["mb", "photos"]);
    assert_eq!(code(&dup), 4, "already exists");
    let err = String::from_utf8_lossy(&dup.stderr);
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    assert!(err.starts_with("vmblob: mb: already exists"), "{err}");

    // 10 MiB: more than one 8 MiB block, so the upload goes through blocks.
    let big = bytes(10 << 20, 7);
    let src = sb.dir.join("big.bin");
    std::fs::write(&src, &big).unwrap();
    ok(s, &["put", src.to_str().unwrap(), "photos/a/big.bin"]);
    let stat = ok(s, &["stat", "photos/a/big.bin"]);
    assert!(stat.contains(&format!("content-length: {}", big.len())), "{stat}");
    assert!(stat.contains("blocks:         2"), "{stat}");
    let out = sb.dir.join("back.bin");
    ok(s, &["get", "photos/a/big.bin", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == big, "downloaded file differs");
    // Ranged: across the 8 MiB block boundary, then a length past the end (clipped).
    let at = (8 << 20) - 10;
    ok(s, &["get", "--offset", &at.to_string(), "--length", "100", "photos/a/big.bin", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == big[at..at + 100], "ranged download differs");
    let tail = big.len() - 7;
    let o = vmblob(Some(s), &["get", "--offset", &tail.to_string(), "--length", "1000", "photos/a/big.bin", "-"]);
    assert_eq!(o.stdout, big[tail..], "a range past the end is clipped");
    let o = vmblob(Some(s), &["get", "--offset", &big.len().to_string(), "photos/a/big.bin", "-"]);
    assert!(code(&o) == 0 && o.stdout.is_empty(), "a range starting at the end is empty");

    let small = b"hello through the paravirtual path\n";
    let small_src = sb.dir.join("small.txt");
    std::fs::write(&small_src, small).unwrap();
    ok(s, &["put", small_src.to_str().unwrap(), "photos/small.txt"]);
    let o = vmblob(Some(s), &["get", "photos/small.txt", "-"]);
    assert_eq!(code(&o), 0);
    assert_eq!(o.stdout, small, "stdout carries the blob");

    let ls = ok(s, &["ls", "photos"]);
    let lines: Vec<&str> = ls.lines().map(str::trim).collect();
    assert_eq!(lines, vec!["DIR  a/", &format!("{}  small.txt", small.len())], "{ls}");
    let ls_r = ok(s, &["ls", "-r", "photos"]);
    assert!(ls_r.contains(&format!("{}  a/big.bin", big.len())), "{ls_r}");
    assert_eq!(ok(s, &["ls"]).trim(), "photos");

    assert_eq!(code(&vmblob(Some(s), &["get", "photos/missing", "-"])), 3, "not found");
    assert_eq!(code(&vmblob(Some(s), &["stat", "nope/x"])), 8, "container not found");
    assert_eq!(code(&vmblob(Some(s), &["put", small_src.to_str().unwrap(), "photos/../x"])), 2, "invalid name");
    assert_eq!(code(&vmblob(Some(s), &["get", "photos"])), 2, "not container/blob");
    assert_eq!(code(&vmblob(None, &["ls"])), 2, "no socket");

    ok(s, &["rm", "photos/small.txt"]);
    assert_eq!(code(&vmblob(Some(s), &["stat", "photos/small.txt"])), 3);
    ok(s, &["rb", "photos"]);
    assert_eq!(code(&vmblob(Some(s), &["ls", "photos"])), 8);
    assert!(!sb.dir.join("back.bin.vmblob-partial").exists(), "no partial file left behind");
}

/// `get --if-match` / `--if-none-match`: Azure's 412 and 304 as exit codes 9 and 7, and
/// a download that does not happen writes nothing.
#[test]
fn conditional_downloads() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket();
    ok(s, &["mb", "docs"]);
    let src = sb.dir.join("v1.txt");
    std::fs::write(&src, b"version one").unwrap();
    ok(s, &["put", src.to_str().unwrap(), "docs/f"]);
    let stat = ok(s, &["stat", "docs/f"]);
    let etag = stat.lines().find_map(|l| l.strip_prefix("etag:")).expect("stat shows the etag").trim().to_owned();
    let out = sb.dir.join("local.txt");
    let out_s = out.to_str().unwrap();

    let current = vmblob(Some(s), &["get", "--if-none-match", &etag, "docs/f", out_s]);
    assert_eq!(code(&current), 7, "{}", String::from_utf8_lossy(&current.stderr));
    assert!(!out.exists(), "a current local copy is not written over");
    let unquoted = etag.trim_matches('"');
    assert_eq!(code(&vmblob(Some(s), &["get", "--if-none-match", unquoted, "docs/f", "-"])), 7, "unquoted ETag");
    assert_eq!(code(&vmblob(Some(s), &["get", "--if-match", "\"0xdead\"", "docs/f", out_s])), 9);
    assert!(!out.exists(), "a failed If-Match writes nothing");

    ok(s, &["get", "--if-match", &etag, "docs/f", out_s]);
    assert_eq!(std::fs::read(&out).unwrap(), b"version one");
    std::fs::write(&src, b"version two").unwrap();
    ok(s, &["put", src.to_str().unwrap(), "docs/f"]);
    ok(s, &["get", "--if-none-match", &etag, "docs/f", out_s]);
    assert_eq!(std::fs::read(&out).unwrap(), b"version two", "a changed blob is downloaded");
    assert_eq!(
        code(&vmblob(Some(s), &["get", "--if-match", &etag, "docs/f", "-"])),
        9,
        "the old ETag no longer matches"
    );
}

/// The HTTP header flags (azcopy's), the creation time, and the time conditions
/// (`--if-modified-since`, `--if-unmodified-since`) on every single-blob verb.
#[test]
fn http_headers_and_time_conditions() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket();
    ok(s, &["mb", "web"]);
    let src = sb.dir.join("report.csv");
    std::fs::write(&src, b"a,b\n1,2\n").unwrap();
    let put = [
        "put",
        "--content-encoding",
        "x-none",
        "--content-language",
        "de-CH",
        "--cache-control",
        "max-age=60",
        "--content-disposition",
        "attachment; filename=\"r.csv\"",
        src.to_str().unwrap(),
        "web/r.csv",
    ];
    ok(s, &put);
    let stat = |extra: &[&str]| -> serde_json::Value {
        let args = [&["stat", "--json"], extra, &["web/r.csv"]].concat();
        serde_json::from_str(&ok(s, &args)).unwrap()
    };
    let j = stat(&[]);
    assert_eq!((&j["content_type"], &j["content_encoding"]), (&"text/csv".into(), &"x-none".into()));
    assert_eq!((&j["content_language"], &j["cache_control"]), (&"de-CH".into(), &"max-age=60".into()));
    assert_eq!(j["content_disposition"], "attachment; filename=\"r.csv\"");
    assert_eq!(j["created"], j["last_modified"], "created by its first write");
    let text = ok(s, &["stat", "web/r.csv"]);
    assert!(text.contains("cache-control:  max-age=60") && text.contains("created:"), "{text}");

    // `set` changes the headers it names and keeps the others and the creation time.
    ok(s, &["set", "--cache-control", "no-cache", "web/r.csv"]);
    let k = stat(&[]);
    assert_eq!((&k["cache_control"], &k["content_language"]), (&"no-cache".into(), &"de-CH".into()));
    assert_eq!((&k["content_type"], &k["created"]), (&"text/csv".into(), &j["created"]));
    ok(s, &["set", "--content-language", "", "--content-type", "text/plain", "web/r.csv"]);
    let k = stat(&[]);
    assert_eq!((&k["content_language"], &k["content_type"]), (&"".into(), &"text/plain".into()));
    assert_eq!(k["content_encoding"], "x-none");

    // Times: the blob's own second is not "since", the one before is.
    let lm = chrono::DateTime::parse_from_rfc3339(k["last_modified"].as_str().unwrap()).unwrap();
    let at = |d: chrono::TimeDelta| (lm + d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (own, before, after) =
        (at(chrono::TimeDelta::zero()), at(-chrono::TimeDelta::seconds(1)), at(chrono::TimeDelta::seconds(1)));
    let run = |args: &[&str]| code(&vmblob(Some(s), args));
    assert_eq!(run(&["get", "--if-modified-since", &own, "web/r.csv", "-"]), 7, "not modified since its own second");
    assert_eq!(run(&["stat", "--if-modified-since", &after, "web/r.csv"]), 7);
    assert_eq!(run(&["get", "--if-modified-since", &before, "web/r.csv", "-"]), 0);
    assert_eq!(run(&["get", "--if-unmodified-since", &before, "web/r.csv", "-"]), 9);
    assert_eq!(run(&["put", "--if-unmodified-since", &before, src.to_str().unwrap(), "web/r.csv"]), 9);
    assert_eq!(run(&["set", "--if-modified-since", &own, "--metadata", "k=v", "web/r.csv"]), 9);
    // A header change is a write too: 9, not a read's 7.
    assert_eq!(run(&["set", "--if-modified-since", &own, "--cache-control", "x", "web/r.csv"]), 9);
    assert_eq!(run(&["rm", "--if-unmodified-since", &before, "web/r.csv"]), 9);
    assert_eq!(stat(&[])["etag"], k["etag"], "nothing changed by a failed condition");
    assert_eq!(run(&["stat", "--if-unmodified-since", "yesterday", "web/r.csv"]), 2, "a time it cannot read");
    assert_eq!(run(&["rm", "-r", "--yes", "--if-unmodified-since", &own, "web"]), 2);
    ok(s, &["rm", "--if-unmodified-since", &own, "web/r.csv"]);
    assert_eq!(run(&["stat", "web/r.csv"]), 3);
}

/// `ls --include-uncommitted`: an upload staged but never committed shows.
#[test]
fn leases_lock_a_blob_to_its_holder() {
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket().to_owned();
    let s = s.as_path();
    ok(s, &["mb", "jobs"]);
    let small = sb.dir.join("small.txt");
    std::fs::write(&small, b"v1").unwrap();
    // Over one block (8 MiB): staged with PutBlock, which the lease guards too.
    let large = sb.dir.join("large.bin");
    std::fs::write(&large, bytes((8 << 20) + 4096, 7)).unwrap();
    let (small, large) = (small.to_str().unwrap(), large.to_str().unwrap());
    ok(s, &["put", small, "jobs/state"]);
    let run = |args: &[&str]| code(&vmblob(Some(s), args));
    let stat = || -> serde_json::Value { serde_json::from_str(&ok(s, &["stat", "--json", "jobs/state"])).unwrap() };
    let lease =
        |j: &serde_json::Value| (j["lease_state"].clone(), j["lease_status"].clone(), j["lease_duration"].clone());
    assert_eq!(lease(&stat()), ("available".into(), "unlocked".into(), serde_json::Value::Null));

    let id = ok(s, &["lease", "acquire", "jobs/state"]).trim().to_owned();
    assert_eq!((id.len(), id.matches('-').count()), (36, 4), "a GUID: {id}");
    assert_eq!(lease(&stat()), ("leased".into(), "locked".into(), "infinite".into()));
    assert!(ok(s, &["stat", "jobs/state"]).contains("lease:          leased (infinite)"));
    let other = "00000000-0000-4000-8000-000000000001";
    // Writes and deletes need the lease: 9 (Azure's 412) without it or with another.
    assert_eq!(run(&["put", small, "jobs/state"]), 9);
    assert_eq!(run(&["put", "--lease-id", other, small, "jobs/state"]), 9);
    assert_eq!(run(&["put", large, "jobs/state"]), 9, "no block is staged without the lease");
    assert_eq!(run(&["set", "--metadata", "k=v", "jobs/state"]), 9);
    assert_eq!(run(&["set", "--cache-control", "no-cache", "jobs/state"]), 9);
    assert_eq!(run(&["rm", "jobs/state"]), 9);
    assert_eq!(stat()["content_length"], 2, "nothing was written");
    ok(s, &["put", "--lease-id", &id, large, "jobs/state"]);
    // A copy onto the leased blob (inside the device) needs the lease too.
    ok(s, &["put", small, "jobs/src"]);
    assert_eq!(run(&["cp", "vmblob://jobs/src", "vmblob://jobs/state"]), 9);
    assert_eq!(run(&["cp", "-r", "--lease-id", &id, "vmblob://jobs/", "vmblob://other/"]), 2, "one blob's lease");
    ok(s, &["cp", "--lease-id", &id, "vmblob://jobs/src", "vmblob://jobs/state"]);
    assert_eq!(ok(s, &["get", "jobs/state", "-"]), "v1");
    ok(s, &["put", "--lease-id", &id, large, "jobs/state"]);
    ok(s, &["set", "--lease-id", &id, "--cache-control", "no-cache", "--metadata", "k=v", "jobs/state"]);
    let j = stat();
    assert_eq!((&j["content_length"], &j["cache_control"]), (&((8u64 << 20) + 4096).into(), &"no-cache".into()));
    // Reads need nothing, but a lease id they name must be the lease.
    assert_eq!(run(&["get", "jobs/state", "-"]), 0);
    assert_eq!(run(&["get", "--lease-id", other, "jobs/state", "-"]), 9);
    assert_eq!(run(&["get", "--lease-id", &id, "jobs/state", "-"]), 0);
    // Someone else's acquire is a lease conflict: 4 (Azure's 409).
    assert_eq!(run(&["lease", "acquire", "jobs/state"]), 4);
    assert_eq!(run(&["lease", "renew", "--lease-id", other, "jobs/state"]), 4);
    assert_eq!(run(&["lease", "acquire", "--duration", "10", "jobs/state"]), 2, "15 to 60 seconds");
    assert_eq!(run(&["lease", "release", "--lease-id", "not-a-guid", "jobs/state"]), 2);

    // Change hands it to a new id; the old one no longer writes.
    let new_id = ok(s, &["lease", "change", "--lease-id", &id, "--proposed-id", other, "jobs/state"]);
    assert_eq!(new_id.trim(), other);
    assert_eq!(run(&["put", "--lease-id", &id, small, "jobs/state"]), 9);

    // The lease outlives a restart of the VSP (it is persisted with the store).
    vsp.stop();
    vsp.restart();
    assert_eq!(run(&["put", small, "jobs/state"]), 9, "still leased after a restart");
    assert_eq!(lease(&stat()).0, "leased");

    // Break: anyone may; broken, the blob is free, and a write forgets the lease.
    assert_eq!(ok(s, &["lease", "break", "--break-period", "0", "jobs/state"]).trim(), "0");
    assert_eq!(lease(&stat()), ("broken".into(), "unlocked".into(), serde_json::Value::Null));
    assert_eq!(run(&["lease", "renew", "--lease-id", other, "jobs/state"]), 4, "a broken lease is not renewed");
    ok(s, &["put", small, "jobs/state"]);
    assert_eq!(lease(&stat()).0, "available");

    // A fixed lease under a proposed id, renewed and released.
    let fixed = "0123abcd-4567-489a-8bcd-ef0123456789";
    assert_eq!(ok(s, &["lease", "acquire", "--duration", "15", "--proposed-id", fixed, "jobs/state"]).trim(), fixed);
    assert_eq!(lease(&stat()), ("leased".into(), "locked".into(), "fixed".into()));
    let listed = ok(s, &["ls", "--json", "jobs"]);
    assert!(listed.contains("\"lease_state\":\"leased\""), "listings show the lease: {listed}");
    ok(s, &["lease", "renew", "--lease-id", fixed, "jobs/state"]);
    assert_eq!(
        ok(s, &["lease", "break", "jobs/state"]).trim().parse::<u32>().map(|t| t > 0 && t <= 15),
        Ok(true),
        "a fixed lease runs out its time"
    );
    assert_eq!(run(&["rm", "jobs/state"]), 9, "breaking still locks");
    ok(s, &["lease", "release", "--lease-id", fixed, "jobs/state"]);
    ok(s, &["rm", "jobs/state"]);
    assert_eq!(run(&["lease", "acquire", "jobs/state"]), 3, "no blob, no lease");
}

#[test]
fn listing_shows_uncommitted_uploads() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket();
    ok(s, &["mb", "ups"]);
    let src = sb.dir.join("done.txt");
    std::fs::write(&src, b"done").unwrap();
    ok(s, &["put", src.to_str().unwrap(), "ups/done.txt"]);
    {
        // A guest that staged a block and went away before committing.
        let g = vmblob_integration::Guest::connect(s, vmblob_integration::GuestOptions::default());
        let id = vmblob_vsc::BlockId::new(&[7; 48]).unwrap();
        let b = g.container("ups").blob("half/upload.bin");
        b.submit_block(&id, &[b"part"], vmblob_vsc::crc64(b"part"), None).unwrap().wait().unwrap();
    }
    assert_eq!(ok(s, &["ls", "-r", "ups"]).lines().count(), 1, "committed blobs only");
    let all = ok(s, &["ls", "-r", "--include-uncommitted", "ups"]);
    let lines: Vec<&str> = all.lines().map(str::trim).collect();
    assert_eq!(lines, ["4  done.txt", "UNCOMMITTED  half/upload.bin"], "{all}");
    let json = ok(s, &["ls", "-r", "--json", "--include-uncommitted", "ups"]);
    assert!(json.contains(r#"{"name":"half/upload.bin","uncommitted":true}"#), "{json}");
    let rolled = ok(s, &["ls", "--include-uncommitted", "ups"]);
    assert!(rolled.contains("DIR  half/"), "rolled up like any name: {rolled}");
}

/// The azcopy-like flags: content type (given, or guessed from the extension), metadata,
/// create-only and If-Match uploads, inclusive ranges, RFC 3339 dates, long and JSON
/// listings, `rm -r` behind `--yes`, and exit codes that tell 409 from 412.
#[test]
fn upload_properties_listings_and_recursive_removal() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket();
    ok(s, &["mb", "site"]);
    let page = sb.dir.join("index.html");
    std::fs::write(&page, b"<html>0123456789</html>").unwrap();
    let page_s = page.to_str().unwrap();
    ok(s, &["put", page_s, "site/index.html", "--metadata", "owner=ops", "--metadata", "build=42"]);
    let stat: serde_json::Value = serde_json::from_str(&ok(s, &["stat", "--json", "site/index.html"])).unwrap();
    assert_eq!(stat["content_type"], "text/html", "guessed from the extension: {stat}");
    assert_eq!(stat["content_length"], 23);
    assert_eq!((stat["metadata"]["owner"].as_str(), stat["metadata"]["build"].as_str()), (Some("ops"), Some("42")));
    let modified = stat["last_modified"].as_str().unwrap().to_owned();
    assert!(modified.len() == 24 && modified.ends_with('Z') && modified.as_bytes()[10] == b'T', "{modified}");
    let text = ok(s, &["stat", "site/index.html"]);
    assert!(
        text.contains(&format!("last-modified:  {modified}")) && text.contains("content-type:   text/html"),
        "{text}"
    );

    ok(s, &["put", page_s, "site/raw", "--content-type", "application/x-custom"]);
    let raw: serde_json::Value = serde_json::from_str(&ok(s, &["stat", "--json", "site/raw"])).unwrap();
    assert_eq!(raw["content_type"], "application/x-custom");
    let o = vmblob(Some(s), &["put", page_s, "site/x", "--metadata", "no-equals"]);
    assert_eq!(code(&o), 2, "metadata must be KEY=VALUE");

    // Create-only: 409 (exit 4); If-Match with another ETag: 412 (exit 9); with its own: done.
    let again = vmblob(Some(s), &["put", page_s, "site/index.html", "--no-overwrite"]);
    assert_eq!(code(&again), 4, "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(code(&vmblob(Some(s), &["put", page_s, "site/index.html", "--if-match", "\"0xdead\""])), 9);
    let etag = stat["etag"].as_str().unwrap();
    ok(s, &["put", page_s, "site/index.html", "--if-match", etag]);
    assert_eq!(code(&vmblob(Some(s), &["put", page_s, "site/index.html", "--if-match", etag])), 9, "ETag changed");
    ok(s, &["put", page_s, "site/new.html", "--no-overwrite"]);

    // Inclusive ranges, as HTTP's.
    let o = vmblob(Some(s), &["get", "--range", "6-15", "site/index.html", "-"]);
    assert_eq!((code(&o), o.stdout.as_slice()), (0, &b"0123456789"[..]));
    let o = vmblob(Some(s), &["get", "--range", "16-", "site/index.html", "-"]);
    assert_eq!(o.stdout, b"</html>");
    assert_eq!(code(&vmblob(Some(s), &["get", "--range", "9-3", "site/index.html", "-"])), 2);
    assert_eq!(code(&vmblob(Some(s), &["get", "--range", "0-1", "--offset", "3", "site/index.html", "-"])), 2);

    // Long and JSON listings.
    ok(s, &["put", page_s, "site/docs/a.txt", "--metadata", "kind=doc"]);
    let long = ok(s, &["ls", "-l", "site"]);
    let line = long.lines().find(|l| l.ends_with("  index.html")).expect("index.html listed");
    assert!(line.contains("text/html") && line.contains('Z') && line.contains("0x"), "{long}");
    assert!(long.lines().any(|l| l.trim() == "DIR  docs/"), "{long}");
    let json = ok(s, &["ls", "--json", "-r", "site"]);
    let entries: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = entries.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["docs/a.txt", "index.html", "new.html", "raw"], "{json}");
    assert_eq!(entries[0]["metadata"]["kind"], "doc", "JSON listings carry the metadata");
    assert_eq!(entries[0]["content_type"], "text/html", "guessed from the source file, as azcopy does");
    assert_eq!(entries[1]["metadata"], serde_json::json!({}), "the --if-match put replaced the metadata too");
    let containers = ok(s, &["ls", "--json"]);
    let c: serde_json::Value = serde_json::from_str(containers.trim()).unwrap();
    assert_eq!(c["name"], "site");

    // set: content type and metadata without uploading again; a new ETag, the same bytes.
    let before: serde_json::Value = serde_json::from_str(&ok(s, &["stat", "--json", "site/raw"])).unwrap();
    ok(s, &["set", "site/raw", "--content-type", "text/csv", "--metadata", "a=1", "--metadata", "b=2"]);
    let after: serde_json::Value = serde_json::from_str(&ok(s, &["stat", "--json", "site/raw"])).unwrap();
    assert_eq!(after["content_type"], "text/csv");
    assert_eq!(after["metadata"], serde_json::json!({ "a": "1", "b": "2" }));
    assert_ne!(after["etag"], before["etag"]);
    assert_eq!(
        (&after["content_crc64"], &after["content_length"]),
        (&before["content_crc64"], &before["content_length"])
    );
    assert_eq!(vmblob(Some(s), &["get", "site/raw", "-"]).stdout, std::fs::read(&page).unwrap());
    ok(s, &["set", "site/raw", "--clear-metadata", "--if-match", after["etag"].as_str().unwrap()]);
    let cleared: serde_json::Value = serde_json::from_str(&ok(s, &["stat", "--json", "site/raw"])).unwrap();
    assert_eq!((&cleared["metadata"], &cleared["content_type"]), (&serde_json::json!({}), &after["content_type"]));
    assert_eq!(code(&vmblob(Some(s), &["set", "site/raw", "--metadata", "x=1", "--if-match", "\"0xdead\""])), 9);
    assert_eq!(code(&vmblob(Some(s), &["set", "site/raw"])), 2, "nothing to set");
    assert_eq!(code(&vmblob(Some(s), &["set", "site/none", "--content-type", "a/b"])), 3);

    // rm -r: refused without --yes (saying how many), then every blob under the prefix.
    let refused = vmblob(Some(s), &["rm", "-r", "site/"]);
    assert_eq!(code(&refused), 2);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("would delete 4 blob(s)"), "{refused:?}");
    assert_eq!(ok(s, &["ls", "-r", "site"]).lines().count(), 4, "nothing deleted without --yes");
    ok(s, &["rm", "-r", "--yes", "site/docs/"]);
    assert_eq!(ok(s, &["ls", "-r", "site"]).lines().count(), 3);
    ok(s, &["rm", "-r", "--yes", "site"]);
    assert_eq!(ok(s, &["ls", "-r", "site"]), "");
    assert_eq!(code(&vmblob(Some(s), &["rm", "site/index.html"])), 3, "blob not found");
    assert_eq!(code(&vmblob(Some(s), &["rm", "-r", "--yes", "gone/"])), 8, "container not found");
}

/// `cp` between two device paths runs inside the device (CopyBlob); `vmblob://`
/// also marks a device path for uploads and downloads.
#[test]
fn copies_inside_the_device() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket();
    ok(s, &["mb", "aaa"]);
    ok(s, &["mb", "bbb"]);
    let big = bytes(9 << 20, 3);
    let src = sb.dir.join("big.bin");
    std::fs::write(&src, &big).unwrap();
    ok(s, &["cp", src.to_str().unwrap(), "vmblob://aaa/dir/big.bin"]);
    ok(s, &["put", src.to_str().unwrap(), "aaa/dir/other", "--metadata", "k=v"]);
    ok(s, &["cp", "vmblob://aaa/dir/big.bin", "vmblob://aaa/copy.bin"]);
    assert!(vmblob(Some(s), &["get", "aaa/copy.bin", "-"]).stdout == big, "the copy holds the source's bytes");
    let copy: serde_json::Value = serde_json::from_str(&ok(s, &["stat", "--json", "aaa/copy.bin"])).unwrap();
    assert_eq!(copy["committed_blocks"], 2, "a block-list source's blocks go along");
    ok(s, &["cp", "-r", "vmblob://aaa/dir/", "vmblob://bbb/backup/"]);
    let listed = ok(s, &["ls", "-r", "bbb"]);
    let names: Vec<&str> = listed.lines().map(|l| l.split_whitespace().last().unwrap()).collect();
    assert_eq!(names, ["backup/big.bin", "backup/other"], "{listed}");
    let other: serde_json::Value = serde_json::from_str(&ok(s, &["stat", "--json", "bbb/backup/other"])).unwrap();
    assert_eq!(other["metadata"]["k"], "v", "metadata is copied");
    assert_eq!(code(&vmblob(Some(s), &["cp", "vmblob://aaa/missing", "vmblob://aaa/z"])), 3);
    assert_eq!(code(&vmblob(Some(s), &["cp", "vmblob://aaa/copy.bin", "vmblob://nope/z"])), 8);
    let out = sb.dir.join("down.bin");
    ok(s, &["cp", "vmblob://bbb/backup/big.bin", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == big);
}

/// `cp -r --include/--exclude` and `sync` in both directions: only what is
/// missing or differs (by size or CRC-64) is copied.
#[test]
fn filtered_copies_and_sync() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket();
    ok(s, &["mb", "tree"]);
    let local = sb.dir.join("local");
    for (rel, body) in [("a.jpg", "A"), ("b.png", "B"), ("docs/c.jpg", "C"), ("docs/d.tmp", "D"), ("e.txt", "E")] {
        let p = local.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
    }
    let local_s = local.to_str().unwrap();
    ok(s, &["cp", "-r", local_s, "tree/jpg", "--include", "*.jpg"]);
    let names = |prefix: &str| -> Vec<String> {
        ok(s, &["ls", "-r", prefix]).lines().map(|l| l.split_whitespace().last().unwrap().to_owned()).collect()
    };
    assert_eq!(names("tree/jpg"), ["jpg/a.jpg", "jpg/docs/c.jpg"], "a name pattern at any depth");
    ok(s, &["cp", "-r", local_s, "tree/nodocs", "--exclude", "docs/**"]);
    assert_eq!(names("tree/nodocs"), ["nodocs/a.jpg", "nodocs/b.png", "nodocs/e.txt"]);
    assert_eq!(code(&vmblob(Some(s), &["cp", local_s, "tree/x", "--include", "*"])), 2, "filters need -r");

    // Upload sync: all at first, then only what changed (same size, other bytes: the CRC tells).
    let o = vmblob(Some(s), &["sync", local_s, "tree/sync", "--exclude", "*.tmp"]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("sync: 4 copied, 0 already current"), "{o:?}");
    std::fs::write(local.join("b.png"), "b").unwrap();
    let o = vmblob(Some(s), &["sync", local_s, "tree/sync", "--exclude", "*.tmp"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("sync: 1 copied, 3 already current"), "{o:?}");
    assert_eq!(vmblob(Some(s), &["get", "tree/sync/b.png", "-"]).stdout, b"b");

    // Download sync into a fresh directory, then after a change on the device.
    let back = sb.dir.join("back");
    let back_s = back.to_str().unwrap();
    let o = vmblob(Some(s), &["sync", "vmblob://tree/sync", back_s]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("sync: 4 copied, 0 already current"), "{o:?}");
    assert_eq!(std::fs::read(back.join("docs/c.jpg")).unwrap(), b"C");
    let e = sb.dir.join("e2.txt");
    std::fs::write(&e, "E2").unwrap();
    ok(s, &["put", e.to_str().unwrap(), "tree/sync/e.txt"]);
    let o = vmblob(Some(s), &["sync", "tree/sync", back_s]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("sync: 1 copied, 3 already current"), "{o:?}");
    assert_eq!(std::fs::read(back.join("e.txt")).unwrap(), b"E2");

    // Tree verbs take their prefix as a directory, and list before they write.
    ok(s, &["put", e.to_str().unwrap(), "tree/syncx"]);
    ok(s, &["cp", "-r", "vmblob://tree/sync", "vmblob://tree/sync/bak"]);
    assert_eq!(names("tree/sync/bak").len(), 4, "copied once into its own tree, no more");
    let refused = vmblob(Some(s), &["rm", "-r", "tree/sync"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("would delete 8 blob(s)"), "{refused:?}");
    ok(s, &["rm", "-r", "--yes", "tree/sync"]);
    assert_eq!(names("tree/sync"), ["syncx"], "tree/syncx is not under tree/sync/");
}

/// `sync --delete-destination`: what only the destination has goes, among
/// the names the filters pass, and only with `--yes`.
#[test]
fn sync_deletes_what_only_the_destination_has() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket();
    ok(s, &["mb", "tree"]);
    let local = sb.dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    for (rel, body) in [("a.txt", "A"), ("b.txt", "B"), ("keep.tmp", "K")] {
        std::fs::write(local.join(rel), body).unwrap();
    }
    let local_s = local.to_str().unwrap();
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let names = |prefix: &str| -> Vec<String> {
        ok(s, &["ls", "-r", prefix]).lines().map(|l| l.split_whitespace().last().unwrap().to_owned()).collect()
    };
    ok(s, &["sync", local_s, "tree/s"]);
    std::fs::remove_file(local.join("b.txt")).unwrap();
    let z = sb.dir.join("z");
    std::fs::write(&z, "Z").unwrap();
    ok(s, &["put", z.to_str().unwrap(), "tree/s/z.txt"]);
    ok(s, &["put", z.to_str().unwrap(), "tree/s/x.tmp"]);

    let o = vmblob(Some(s), &["sync", local_s, "tree/s", "--delete-destination"]);
    assert!(out(&o).contains("3 would be deleted (add --yes"), "{o:?}");
    assert_eq!(names("tree/s").len(), 5, "nothing deleted unconfirmed");
    let o = vmblob(Some(s), &["sync", local_s, "tree/s", "--delete-destination", "--yes", "--exclude", "*.tmp"]);
    assert!(out(&o).contains("sync: 0 copied, 1 already current, 2 deleted"), "{o:?}");
    assert_eq!(names("tree/s"), ["s/a.txt", "s/keep.tmp", "s/x.tmp"], "excluded names are not deleted");

    // Downloading: local files the device does not have go.
    let back = sb.dir.join("back");
    std::fs::create_dir_all(back.join("old")).unwrap();
    std::fs::write(back.join("old/gone.txt"), "G").unwrap();
    let back_s = back.to_str().unwrap();
    let o = vmblob(Some(s), &["sync", "tree/s", back_s, "--delete-destination", "--yes"]);
    assert!(out(&o).contains("sync: 3 copied, 0 already current, 1 deleted"), "{o:?}");
    assert!(!back.join("old/gone.txt").exists());
    assert_eq!(std::fs::read(back.join("x.tmp")).unwrap(), b"Z");
}

#[test]
fn directory_copies_round_trip() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket();
    let tree = sb.dir.join("tree");
    let files = [("a.txt", 10usize), ("sub/b.bin", 70_000), ("sub/deeper/c.bin", 3 << 20), ("z", 0)];
    for (i, (name, len)) in files.iter().enumerate() {
        let p = tree.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes(*len, i as u64 + 1)).unwrap();
    }
    ok(s, &["mb", "trees"]);
    let refused = vmblob(Some(s), &["cp", tree.to_str().unwrap(), "trees/up"]);
    assert_eq!(code(&refused), 2, "a directory needs -r");
    ok(s, &["cp", "-r", tree.to_str().unwrap(), "trees/up"]);
    let listed = ok(s, &["ls", "-r", "trees/up"]);
    assert_eq!(listed.lines().count(), files.len(), "{listed}");
    let back = sb.dir.join("back");
    ok(s, &["cp", "-r", "trees/up", back.to_str().unwrap()]);
    for (i, (name, len)) in files.iter().enumerate() {
        let got = std::fs::read(back.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == bytes(*len, i as u64 + 1), "{name} differs after the round trip");
    }
}

#[test]
fn unreachable_daemon_fails_fast_with_exit_5() {
    let sb = Sandbox::new();
    let t = std::time::Instant::now();
    let o = vmblob(Some(&sb.dir.join("nobody.sock")), &["ls"]);
    assert_eq!(code(&o), 5, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "fails within the connect timeout");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "one line, no WARN before it: {err}");
}

/// `vmblob --socket S put SRC DEST` with `input` on stdin.
fn put_from_stdin(socket: &Path, src: &str, dest: &str, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(vmblob_binary())
        .env_remove("VMBLOB_SOCKET")
        .args(["--quiet", "--socket"])
        .arg(socket)
        .args(["put", src, dest])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vmblob");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("vmblob exits");
    writer.join().expect("writer").expect("write stdin");
    out
}

#[test]
fn input_the_cli_cannot_size_is_streamed_to_its_end() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket();
    ok(s, &["mb", "pipes"]);
    // stdin as '-' and as /dev/stdin (a pipe: its metadata says 0 bytes), small and multi-block.
    let big = bytes((9 << 20) + 77, 5);
    for (src, name, data) in
        [("-", "small", &b"hi\n"[..]), ("/dev/stdin", "dev-stdin", &b"hello"[..]), ("-", "big", &big[..])]
    {
        let o = put_from_stdin(s, src, &format!("pipes/{name}"), data);
        assert_eq!(code(&o), 0, "put {src}: {}", String::from_utf8_lossy(&o.stderr));
        let back = vmblob(Some(s), &["get", &format!("pipes/{name}"), "-"]);
        assert!(back.stdout == data, "put {src} stored {} bytes, not {}", back.stdout.len(), data.len());
    }
    let o = vmblob(Some(s), &["put", sb.dir.to_str().unwrap(), "pipes/dir"]);
    assert_eq!(code(&o), 2, "a directory is a usage error");
}

#[test]
fn get_into_a_directory_and_bad_socket_paths() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let s = vsp.socket();
    ok(s, &["mb", "downloads"]);
    let src = sb.dir.join("one.txt");
    std::fs::write(&src, b"one").unwrap();
    ok(s, &["put", src.to_str().unwrap(), "downloads/sub/one.txt"]);
    let dir = sb.dir.join("into");
    std::fs::create_dir(&dir).unwrap();
    ok(s, &["get", "downloads/sub/one.txt", dir.to_str().unwrap()]);
    assert_eq!(std::fs::read(dir.join("one.txt")).unwrap(), b"one", "lands under the blob's last name");
    let left: Vec<_> = std::fs::read_dir(&sb.dir).unwrap().filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains("vmblob-partial")), "no partial file: {left:?}");

    // A socket path that is a file or a directory fails at once as a usage error.
    for not_socket in [src.as_path(), dir.as_path()] {
        let t = std::time::Instant::now();
        let o = vmblob(Some(not_socket), &["ls"]);
        assert_eq!(code(&o), 2, "{}", String::from_utf8_lossy(&o.stderr));
        assert!(t.elapsed() < std::time::Duration::from_millis(900), "no retries: {:?}", t.elapsed());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("not a socket")
                || String::from_utf8_lossy(&o.stderr).contains("a directory")
        );
    }

    // An over-long name is refused without echoing all of it.
    let long = "n".repeat(5000);
    let o = vmblob(Some(s), &["put", src.to_str().unwrap(), &format!("downloads/{long}")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.lines().count() == 1 && err.len() < 300 && err.contains("5000 bytes"), "{err}");
}

#[test]
fn demo_round_trips_and_stops_its_daemon() {
    let o = Command::new(vmblob_binary())
        .args(["--quiet", "demo", "--size", &(9 << 20).to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run vmblob demo");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(code(&o), 0, "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("identical: yes"), "{out}");
    assert!(out.contains("2 committed blocks"), "9 MiB goes through blocks: {out}");
    assert!(out.contains("vmblob-vsp stopped"), "{out}");
}

/// Runs `vmblob` with `--timeout-ms 2000` and returns its output and how long it took.
fn timed(socket: &Path, args: &[&str]) -> (Output, std::time::Duration) {
    let mut full = vec!["--timeout-ms", "2000"];
    full.extend_from_slice(args);
    let _ = vmblob_binary(); // built on first use: not part of the time measured
    let start = std::time::Instant::now();
    let out = vmblob(Some(socket), &full);
    (out, start.elapsed())
}

#[test]
fn a_stopped_daemon_fails_the_cli_within_its_timeout() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    ok(vsp.socket(), &["mb", "box"]);
    vsp.signal("STOP");
    let (out, took) = timed(vsp.socket(), &["ls", "box"]);
    vsp.signal("CONT");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 5, "{err}");
    assert!(took < std::time::Duration::from_secs(6), "exit after {took:?} (timeout 2 s): {err}");
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    assert!(err.contains("did not answer"), "{err}");
}

#[test]
fn a_client_holding_the_connection_makes_the_next_one_fail_saying_why() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    // This process holds the daemon's one VMM connection (as a stopped client would).
    let holder = vmblob_integration::Guest::connect(vsp.socket(), vmblob_integration::GuestOptions::default());
    let (out, took) = timed(vsp.socket(), &["ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 5, "{err}");
    assert!(took < std::time::Duration::from_secs(6), "exit after {took:?} (timeout 2 s): {err}");
    assert!(err.contains("one VMM at a time"), "{err}");
    drop(holder);
    ok(vsp.socket(), &["ls"]);
}
