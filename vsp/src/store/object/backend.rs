//! Building an object-store backend from `--store az://…` / `s3://…`, and
//! creating the Azure container it lives in (object_store does not).
//!
//! Guest containers are prefixes inside that one Azure container or S3
//! bucket (with a marker object each, see `keys`), so the VSP needs rights on
//! one container/bucket only and S3 and Azure behave the same.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac as _};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use sha2::Sha256;

use crate::store::StoreError;

/// Azurite's well-known development account and key.
pub const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
pub const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The REST API version of our own Azure requests.
const AZURE_API_VERSION: &str = "2021-08-06";

/// An Azure Blob Storage location: `az://CONTAINER[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSpec {
    pub container: String,
    pub prefix: String,
    /// Blob service endpoint, e.g. `http://127.0.0.1:10000/devstoreaccount1`
    /// for Azurite; default `https://ACCOUNT.blob.core.windows.net`.
    pub endpoint: Option<String>,
    /// Account and Shared Key; from `AZURE_STORAGE_ACCOUNT_NAME` /
    /// `AZURE_STORAGE_ACCOUNT_KEY` when not given (Azurite's own with `emulator`).
    pub account: Option<String>,
    pub access_key: Option<String>,
    /// Azurite: its account and key by default, plain HTTP allowed.
    pub emulator: bool,
}

/// An S3 location: `s3://BUCKET[/PREFIX]`; credentials, region and endpoint
/// from the usual `AWS_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Spec {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
}

/// Splits `NAME[/PREFIX]`.
pub fn split_location(rest: &str) -> (String, String) {
    match rest.split_once('/') {
        Some((n, p)) => (n.to_owned(), p.trim_matches('/').to_owned()),
        None => (rest.to_owned(), String::new()),
    }
}

fn config_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote(format!("object store configuration: {e}"))
}

fn client_options() -> object_store::ClientOptions {
    object_store::ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(120))
}

impl AzureSpec {
    fn account(&self) -> Option<String> {
        self.account
            .clone()
            .or_else(|| std::env::var("AZURE_STORAGE_ACCOUNT_NAME").ok())
            .or_else(|| self.emulator.then(|| EMULATOR_ACCOUNT.to_owned()))
    }

    fn key(&self) -> Option<String> {
        self.access_key
            .clone()
            .or_else(|| std::env::var("AZURE_STORAGE_ACCOUNT_KEY").ok())
            .or_else(|| self.emulator.then(|| EMULATOR_KEY.to_owned()))
    }

    fn endpoint(&self, account: &str) -> String {
        self.endpoint.clone().unwrap_or_else(|| {
            if self.emulator {
                format!("http://127.0.0.1:10000/{account}")
            } else {
                format!("https://{account}.blob.core.windows.net")
            }
        })
    }

    pub fn build(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        // Other credential kinds (SAS, Entra ID) come from the environment.
        let mut b = MicrosoftAzureBuilder::from_env()
            .with_container_name(&self.container)
            .with_client_options(client_options());
        if let Some(account) = self.account() {
            b = b.with_endpoint(self.endpoint(&account)).with_account(account);
        }
        if let Some(key) = self.key() {
            b = b.with_access_key(key);
        }
        if self.emulator || self.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")) {
            b = b.with_allow_http(true);
        }
        Ok(Arc::new(b.build().map_err(config_err)?))
    }

    /// Creates the Azure container unless it exists (a Shared Key request of
    /// its own). Without a Shared Key the container must already exist.
    pub fn ensure_container(&self) -> Result<(), StoreError> {
        let (Some(account), Some(key)) = (self.account(), self.key()) else { return Ok(()) };
        let url = format!("{}/{}?restype=container", self.endpoint(&account).trim_end_matches('/'), self.container);
        let key = B64.decode(key.trim()).map_err(|e| config_err(format!("account key is not base64: {e}")))?;
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let parsed = reqwest::Url::parse(&url).map_err(config_err)?;
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{AZURE_API_VERSION}\n/{account}{}\nrestype:container",
            parsed.path()
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(config_err)?;
        mac.update(to_sign.as_bytes());
        let signature = B64.encode(mac.finalize().into_bytes());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let status = rt.block_on(async {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?
                .put(parsed)
                .header("x-ms-date", &date)
                .header("x-ms-version", AZURE_API_VERSION)
                .header("Authorization", format!("SharedKey {account}:{signature}"))
                .header("Content-Length", "0")
                .send()
                .await
                .map(|r| r.status())
        });
        match status.map_err(|e| StoreError::Remote(format!("creating Azure container: {e}")))? {
            s if s.is_success() || s == reqwest::StatusCode::CONFLICT => Ok(()),
            s if s == reqwest::StatusCode::FORBIDDEN || s == reqwest::StatusCode::UNAUTHORIZED => {
                Err(StoreError::Denied(format!("creating Azure container {}: {s}", self.container)))
            }
            s => Err(StoreError::Remote(format!("creating Azure container {}: {s}", self.container))),
        }
    }
}

impl S3Spec {
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&self.bucket).with_client_options(client_options());
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        Ok(Arc::new(b.build().map_err(config_err)?))
    }
}
