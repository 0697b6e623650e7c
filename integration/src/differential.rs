//! The reference side of the differential test: Microsoft's Azure SDK for
//! Python (`azure-storage-blob`, from PyPI) against an Azurite of its own,
//! running `differential/azure_reference.py`.
//!
//! The SDK is installed on first use into a virtual environment under
//! `target/azure-sdk-venv` (one installer at a time, across test processes).
//! Without python3 (with venv and pip) the test skips and says so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use vmblob_vsp::store::object::backend::{EMULATOR_ACCOUNT, EMULATOR_KEY};

pub use vmblob_vsp::store::object::azurite::Azurite;

/// The SDK version the reference runs (pinned: its answers are the baseline).
const SDK: &str = "azure-storage-blob==12.31.1";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python with the SDK importable, installing it first if need be;
/// `Ok(None)` (with a message) when python3 cannot make a venv.
pub fn python_with_sdk() -> Result<Option<PathBuf>, String> {
    let venv = workspace().join("target/azure-sdk-venv");
    let python = venv.join("bin/python");
    let target = workspace().join("target");
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    let lock_path = target.join("azure-sdk.install.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock().map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    let ready = || {
        Command::new(&python)
            .args(["-c", "import azure.storage.blob"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready() {
        return Ok(Some(python));
    }
    let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).output();
    match made {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!("SKIPPED: python3 cannot make a venv: {}", String::from_utf8_lossy(&o.stderr).trim());
            return Ok(None);
        }
        Err(e) => {
            eprintln!("SKIPPED: no python3 ({e}), so the Azure SDK reference cannot run");
            return Ok(None);
        }
    }
    eprintln!("installing {SDK} into {} (pip) ...", venv.display());
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", SDK])
        .output()
        .map_err(|e| format!("running pip: {e}"))?;
    if !out.status.success() || !ready() {
        return Err(format!(
            "pip install {SDK} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Some(python))
}

/// Runs `ops` through the SDK against `azurite`; one JSON result per op.
pub fn run_reference(python: &Path, azurite: &Azurite, ops: &[Value]) -> Result<Vec<Value>, String> {
    let connection = format!(
        "DefaultEndpointsProtocol=http;AccountName={EMULATOR_ACCOUNT};AccountKey={EMULATOR_KEY};BlobEndpoint={};",
        azurite.endpoint()
    );
    let input = serde_json::json!({ "connection_string": connection, "ops": ops });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("differential/azure_reference.py");
    let mut child = Command::new(python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.to_string().as_bytes())
        .map_err(|e| format!("writing to the reference: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("waiting for the reference: {e}"))?;
    if !out.status.success() {
        return Err(format!("the reference failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("the reference's output: {e}"))
}
