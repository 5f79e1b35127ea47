//! Credential sealing: apps' credentials are encrypted before they reach an event.
//!
//! Each organization has a data key (XChaCha20-Poly1305, 256-bit), stored outside the event log
//! wrapped by the master key the process is given (file or environment). Credentials are sealed
//! under the organization's data key, bound to the organization and app, so only sealed bytes
//! enter events. Deleting an organization's data key ([`Sealer::shred`]) makes its credentials
//! unreadable forever while the rest of its history stays verifiable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::FutureExt;
use futures::future::BoxFuture;
use qm_proto::{AppId, OrgId, SealedCredentials};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

const NONCE_LEN: usize = 24;
/// The generation of data keys this code creates.
const DATA_KEY_ID: u32 = 1;

/// The key that wraps every data key. Never logged, never stored by Quartermaster.
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Reads 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<MasterKey, SealError> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| SealError::BadMasterKey("must be 64 hex digits".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SealError::BadMasterKey("must be 32 bytes (64 hex digits)".into()))?;
        Ok(MasterKey(key))
    }

    pub fn generate() -> MasterKey {
        MasterKey(random())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A plaintext secret: shown as `***` by `Debug`, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Overwrite the plaintext so it does not linger in freed memory.
        let bytes = std::mem::take(&mut self.0).into_bytes();
        let mut bytes = bytes;
        bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&bytes);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("bad master key: {0}")]
    BadMasterKey(String),
    #[error("data key store unavailable: {0}")]
    Store(String),
    #[error("the data key of {org} was deleted; its credentials are unreadable")]
    Shredded { org: OrgId },
    #[error("sealed credentials of {org}/{app} do not open (wrong key or altered bytes)")]
    Tampered { org: OrgId, app: AppId },
    #[error("the data key of {org} does not unwrap (wrong master key?)")]
    WrongMasterKey { org: OrgId },
}

/// Where wrapped data keys are kept: a JetStream KV bucket or a redb table, never the log.
pub trait KeyStore: Send + Sync + std::fmt::Debug + 'static {
    fn get<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<Option<Vec<u8>>, SealError>>;
    /// Stores `wrapped` unless a key exists; returns whether this call stored it.
    fn create<'a>(
        &'a self,
        org: &'a OrgId,
        wrapped: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool, SealError>>;
    fn delete<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<(), SealError>>;
}

#[derive(Serialize, Deserialize)]
struct WrappedKey {
    key_id: u32,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

/// Seals and opens credentials with per-organization data keys.
#[derive(Debug)]
pub struct Sealer {
    master: MasterKey,
    store: Arc<dyn KeyStore>,
    keys: Mutex<HashMap<OrgId, Arc<[u8; 32]>>>,
}

impl Sealer {
    pub fn new(master: MasterKey, store: Arc<dyn KeyStore>) -> Sealer {
        Sealer { master, store, keys: Mutex::new(HashMap::new()) }
    }

    /// Seals `secret` for `app` of `org`, creating the organization's data key on first use.
    pub async fn seal(
        &self,
        org: &OrgId,
        app: &AppId,
        secret: &Secret,
    ) -> Result<SealedCredentials, SealError> {
        let key = match self.data_key(org).await? {
            Some(key) => key,
            None => self.create_data_key(org).await?,
        };
        let nonce: [u8; NONCE_LEN] = random();
        let aad = credentials_aad(org, app);
        let ciphertext = XChaCha20Poly1305::new((&*key).into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload { msg: secret.expose().as_bytes(), aad: &aad },
            )
            .expect("XChaCha20-Poly1305 encrypts any message under 256 GiB");
        Ok(SealedCredentials { key_id: DATA_KEY_ID, nonce: nonce.to_vec(), ciphertext })
    }

    /// Opens credentials sealed by [`Sealer::seal`].
    pub async fn open(
        &self,
        org: &OrgId,
        app: &AppId,
        sealed: &SealedCredentials,
    ) -> Result<Secret, SealError> {
        let key =
            self.data_key(org).await?.ok_or_else(|| SealError::Shredded { org: org.clone() })?;
        let tampered = || SealError::Tampered { org: org.clone(), app: app.clone() };
        if sealed.nonce.len() != NONCE_LEN {
            return Err(tampered());
        }
        let aad = credentials_aad(org, app);
        let plaintext = XChaCha20Poly1305::new((&*key).into())
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload { msg: &sealed.ciphertext, aad: &aad },
            )
            .map_err(|_| tampered())?;
        String::from_utf8(plaintext).map(Secret).map_err(|_| tampered())
    }

    /// Deletes `org`'s data key: every credential it sealed becomes unreadable.
    pub async fn shred(&self, org: &OrgId) -> Result<(), SealError> {
        self.store.delete(org).await?;
        self.keys.lock().expect("key cache lock is never poisoned").remove(org);
        Ok(())
    }

    async fn data_key(&self, org: &OrgId) -> Result<Option<Arc<[u8; 32]>>, SealError> {
        if let Some(key) = self.keys.lock().expect("key cache lock is never poisoned").get(org) {
            return Ok(Some(key.clone()));
        }
        let Some(wrapped) = self.store.get(org).await? else { return Ok(None) };
        let key = Arc::new(self.unwrap_key(org, &wrapped)?);
        self.keys
            .lock()
            .expect("key cache lock is never poisoned")
            .insert(org.clone(), key.clone());
        Ok(Some(key))
    }

    async fn create_data_key(&self, org: &OrgId) -> Result<Arc<[u8; 32]>, SealError> {
        let key: [u8; 32] = random();
        let nonce: [u8; NONCE_LEN] = random();
        let aad = data_key_aad(org, DATA_KEY_ID);
        let ciphertext = XChaCha20Poly1305::new((&self.master.0).into())
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &key, aad: &aad })
            .expect("XChaCha20-Poly1305 encrypts a 32-byte key");
        let wrapped = WrappedKey { key_id: DATA_KEY_ID, nonce, ciphertext };
        let bytes = postcard::to_stdvec(&wrapped).expect("postcard encodes a wrapped key");
        if self.store.create(org, bytes).await? {
            let key = Arc::new(key);
            self.keys
                .lock()
                .expect("key cache lock is never poisoned")
                .insert(org.clone(), key.clone());
            return Ok(key);
        }
        // Another instance created the key first: use theirs.
        self.data_key(org).await?.ok_or_else(|| SealError::Shredded { org: org.clone() })
    }

    fn unwrap_key(&self, org: &OrgId, bytes: &[u8]) -> Result<[u8; 32], SealError> {
        let wrong = || SealError::WrongMasterKey { org: org.clone() };
        let wrapped: WrappedKey = postcard::from_bytes(bytes).map_err(|_| wrong())?;
        let aad = data_key_aad(org, wrapped.key_id);
        let key = XChaCha20Poly1305::new((&self.master.0).into())
            .decrypt(
                XNonce::from_slice(&wrapped.nonce),
                Payload { msg: &wrapped.ciphertext, aad: &aad },
            )
            .map_err(|_| wrong())?;
        key.try_into().map_err(|_| wrong())
    }
}

fn credentials_aad(org: &OrgId, app: &AppId) -> Vec<u8> {
    format!("quartermaster/credentials/{org}/{app}").into_bytes()
}

fn data_key_aad(org: &OrgId, key_id: u32) -> Vec<u8> {
    format!("quartermaster/data-key/{org}/{key_id}").into_bytes()
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0; N];
    getrandom::fill(&mut out).expect("the operating system provides randomness");
    out
}

const DATA_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("data_keys");

/// Data keys in a redb table, beside the embedded log.
#[derive(Debug, Clone)]
pub struct RedbKeyStore {
    db: Arc<Database>,
}

impl RedbKeyStore {
    pub fn new(db: Arc<Database>) -> RedbKeyStore {
        RedbKeyStore { db }
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, SealError>> {
        let db = self.db.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .expect("redb calls do not panic")
                .map_err(|e| SealError::Store(e.to_string()))
        }
        .boxed()
    }
}

impl KeyStore for RedbKeyStore {
    fn get<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<Option<Vec<u8>>, SealError>> {
        let org = org.clone();
        self.run(move |db| {
            let read = db.begin_read()?;
            let table = match read.open_table(DATA_KEYS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            use redb::ReadableTable;
            Ok(table.get(org.as_str())?.map(|v| v.value().to_vec()))
        })
    }

    fn create<'a>(
        &'a self,
        org: &'a OrgId,
        wrapped: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool, SealError>> {
        let org = org.clone();
        self.run(move |db| {
            let write = db.begin_write()?;
            let created = {
                let mut table = write.open_table(DATA_KEYS)?;
                use redb::ReadableTable;
                if table.get(org.as_str())?.is_some() {
                    false
                } else {
                    table.insert(org.as_str(), wrapped.as_slice())?;
                    true
                }
            };
            write.commit()?;
            Ok(created)
        })
    }

    fn delete<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<(), SealError>> {
        let org = org.clone();
        self.run(move |db| {
            let write = db.begin_write()?;
            write.open_table(DATA_KEYS)?.remove(org.as_str())?;
            write.commit()?;
            Ok(())
        })
    }
}

/// Data keys in a JetStream KV bucket (history 1, so a deleted key leaves no older revision).
#[derive(Debug, Clone)]
pub struct KvKeyStore {
    bucket: async_nats::jetstream::kv::Store,
}

impl KvKeyStore {
    pub async fn open(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<KvKeyStore, SealError> {
        let bucket = js
            .create_or_update_key_value(async_nats::jetstream::kv::Config {
                bucket: bucket.into(),
                description: "Quartermaster data keys, wrapped by the master key".into(),
                history: 1,
                num_replicas: replicas,
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| SealError::Store(e.to_string()))?;
        Ok(KvKeyStore { bucket })
    }
}

impl KeyStore for KvKeyStore {
    fn get<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<Option<Vec<u8>>, SealError>> {
        async move {
            let value = self
                .bucket
                .get(crate::log::kv_key(org))
                .await
                .map_err(|e| SealError::Store(e.to_string()))?;
            Ok(value.map(|v| v.to_vec()))
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        org: &'a OrgId,
        wrapped: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool, SealError>> {
        async move {
            use async_nats::jetstream::kv::CreateErrorKind;
            match self.bucket.create(crate::log::kv_key(org), wrapped.into()).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(SealError::Store(e.to_string())),
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<(), SealError>> {
        async move {
            // Purge, not delete: a delete marker would leave the wrapped key's revision readable.
            self.bucket
                .purge(crate::log::kv_key(org))
                .await
                .map_err(|e| SealError::Store(e.to_string()))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(store: Arc<dyn KeyStore>) -> Sealer {
        Sealer::new(MasterKey::from_hex(&"11".repeat(32)).unwrap(), store)
    }

    fn redb_store() -> (tempfile::TempDir, Arc<dyn KeyStore>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("keys.redb")).unwrap();
        (dir, Arc::new(RedbKeyStore::new(Arc::new(db))))
    }

    #[tokio::test]
    async fn sealed_credentials_open_only_for_their_org_and_app() {
        let (_dir, store) = redb_store();
        let sealer = sealer(store);
        let (acme, crm) = (OrgId::parse("acme").unwrap(), AppId::parse("crm").unwrap());
        let secret = Secret::new("token-123");
        let sealed = sealer.seal(&acme, &crm, &secret).await.unwrap();
        assert!(!sealed.ciphertext.windows(9).any(|w| w == b"token-123"));
        assert_eq!(sealer.open(&acme, &crm, &sealed).await.unwrap(), secret);
        let other = AppId::parse("other").unwrap();
        assert!(matches!(
            sealer.open(&acme, &other, &sealed).await,
            Err(SealError::Tampered { .. })
        ));
    }

    #[tokio::test]
    async fn shredding_the_data_key_makes_credentials_unreadable() {
        let (_dir, store) = redb_store();
        let sealer = sealer(store);
        let (acme, crm) = (OrgId::parse("acme").unwrap(), AppId::parse("crm").unwrap());
        let sealed = sealer.seal(&acme, &crm, &Secret::new("t")).await.unwrap();
        sealer.shred(&acme).await.unwrap();
        assert!(matches!(sealer.open(&acme, &crm, &sealed).await, Err(SealError::Shredded { .. })));
    }

    #[tokio::test]
    async fn a_different_master_key_cannot_unwrap_data_keys() {
        let (_dir, store) = redb_store();
        let (acme, crm) = (OrgId::parse("acme").unwrap(), AppId::parse("crm").unwrap());
        let sealed = sealer(store.clone()).seal(&acme, &crm, &Secret::new("t")).await.unwrap();
        let other = Sealer::new(MasterKey::from_hex(&"22".repeat(32)).unwrap(), store);
        assert!(matches!(
            other.open(&acme, &crm, &sealed).await,
            Err(SealError::WrongMasterKey { .. })
        ));
    }

    #[test]
    fn secrets_and_keys_never_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
        assert_eq!(format!("{:?}", MasterKey::generate()), "MasterKey(..)");
        assert!(MasterKey::from_hex("abc").is_err());
    }
}
