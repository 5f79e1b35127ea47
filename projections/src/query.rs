//! Queries over one consistent read of the views.
//!
//! Lists page by key order: a page token is the last key of the previous page, so paging is
//! stable while the views change underneath (new rows after the token still show up).

use std::ops::Bound;

use qm_proto::*;
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;

use crate::views::*;

/// The largest page a query returns.
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 100;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// 0 means the default size; larger than [`MAX_PAGE`] is clamped.
    pub size: usize,
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when more items may follow.
    pub next_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("views storage failed: {0}")]
    Storage(String),
    #[error("invalid page_token")]
    BadPageToken,
}

type Result<T> = std::result::Result<T, QueryError>;

fn storage(e: impl std::fmt::Display) -> QueryError {
    QueryError::Storage(e.to_string())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(storage)
}

impl PageRequest {
    fn size(&self) -> usize {
        match self.size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        }
    }

    /// The key after which this page starts, which must lie in `range`.
    fn after(&self, range: &(String, String)) -> Result<Option<String>> {
        let Some(token) = &self.token else { return Ok(None) };
        let bytes = hex::decode(token).map_err(|_| QueryError::BadPageToken)?;
        let key = String::from_utf8(bytes).map_err(|_| QueryError::BadPageToken)?;
        if key.as_str() < range.0.as_str() || key.as_str() >= range.1.as_str() {
            return Err(QueryError::BadPageToken);
        }
        Ok(Some(key))
    }
}

/// One consistent read of the views.
pub struct Views {
    txn: ReadTransaction,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Views(..)")
    }
}

impl Views {
    pub(crate) fn new(txn: ReadTransaction) -> Views {
        Views { txn }
    }

    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<ReadOnlyTable<K, V>> {
        self.txn.open_table(def).map_err(storage)
    }

    pub fn position(&self) -> Result<Position> {
        Ok(self.table(META)?.get(POSITION_KEY).map_err(storage)?.map(|v| v.value()).unwrap_or(0))
    }

    pub fn organization(&self, org: &OrgId) -> Result<Option<OrganizationView>> {
        self.get(ORGS, org.as_str())
    }

    pub fn member(&self, org: &OrgId, person: &PersonId) -> Result<Option<MemberView>> {
        self.get(MEMBERS, &key(&[org.as_str(), person.as_str()]))
    }

    pub fn members(&self, org: &OrgId, page: &PageRequest) -> Result<Page<MemberView>> {
        self.rows(MEMBERS, &[org.as_str()], page)
    }

    pub fn teams(&self, org: &OrgId, page: &PageRequest) -> Result<Page<TeamView>> {
        self.rows(TEAMS, &[org.as_str()], page)
    }

    pub fn app(&self, org: &OrgId, app: &AppId) -> Result<Option<AppView>> {
        self.get(APPS, &key(&[org.as_str(), app.as_str()]))
    }

    pub fn apps(&self, org: &OrgId, page: &PageRequest) -> Result<Page<AppView>> {
        self.rows(APPS, &[org.as_str()], page)
    }

    pub fn grant(&self, org: &OrgId, grant: &GrantId) -> Result<Option<GrantView>> {
        self.get(GRANTS, &key(&[org.as_str(), grant.as_str()]))
    }

    /// Who has access: the live grants of one app, by person.
    pub fn who_has_access(
        &self,
        org: &OrgId,
        app: &AppId,
        page: &PageRequest,
    ) -> Result<Page<GrantView>> {
        let grants = self.table(GRANTS)?;
        self.scan(BY_APP, &[org.as_str(), app.as_str()], page, |_, grant| {
            let row = grants.get(key(&[org.as_str(), grant]).as_str()).map_err(storage)?;
            decode(row.ok_or_else(|| storage("index names a missing grant"))?.value())
        })
    }

    /// One person's live grants across organizations.
    pub fn grants_for_person(
        &self,
        person: &PersonId,
        page: &PageRequest,
    ) -> Result<Page<GrantView>> {
        let grants = self.table(GRANTS)?;
        self.scan(BY_PERSON, &[person.as_str()], page, |index_key, grant| {
            let org = parts(index_key).get(1).copied().unwrap_or_default();
            let row = grants.get(key(&[org, grant]).as_str()).map_err(storage)?;
            decode(row.ok_or_else(|| storage("index names a missing grant"))?.value())
        })
    }

    /// What one person sees: every app account they hold, across organizations.
    pub fn launchpad(&self, person: &PersonId, page: &PageRequest) -> Result<Page<LaunchpadEntry>> {
        let grants = self.grants_for_person(person, page)?;
        let orgs = self.table(ORGS)?;
        let apps = self.table(APPS)?;
        let mut items = Vec::with_capacity(grants.items.len());
        for grant in grants.items {
            let org = orgs.get(grant.org.as_str()).map_err(storage)?;
            let org: OrganizationView =
                decode(org.ok_or_else(|| storage("missing organization"))?.value())?;
            let app = apps
                .get(key(&[grant.org.as_str(), grant.app.as_str()]).as_str())
                .map_err(storage)?;
            let app: AppView = decode(app.ok_or_else(|| storage("missing app"))?.value())?;
            items.push(LaunchpadEntry {
                org: grant.org,
                org_name: org.name,
                app: grant.app,
                app_name: app.display_name,
                catalog_app: app.catalog_app,
                grant: grant.grant,
                status: grant.status,
                user_name: grant.account.as_ref().map(|a| a.user_name.clone()),
                open_url: grant.account.and_then(|a| a.open_url),
            });
        }
        Ok(Page { items, next_token: grants.next_token })
    }

    /// Every access interval of one app, in (person, opened) order.
    pub fn access_intervals(&self, org: &OrgId, app: &AppId) -> Result<Vec<AccessInterval>> {
        let (start, end) = prefix_range(&[org.as_str(), app.as_str()]);
        let table = self.table(INTERVALS)?;
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..end.as_str()).map_err(storage)? {
            let (_, row) = entry.map_err(storage)?;
            out.push(decode(row.value())?);
        }
        Ok(out)
    }

    /// Who had a working account in one app at instant `at`.
    pub fn access_at(
        &self,
        org: &OrgId,
        app: &AppId,
        at: Timestamp,
    ) -> Result<Vec<AccessInterval>> {
        let mut intervals = self.access_intervals(org, app)?;
        intervals.retain(|i| i.from <= at && i.to.is_none_or(|to| at < to));
        Ok(intervals)
    }

    /// Every row of every view, one line each, in table and key order: two views files hold
    /// the same views exactly when their dumps are equal.
    pub fn dump(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let meta = self.table(META)?;
        for entry in meta.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.push(format!("meta {:?} => {}", k.value(), v.value()));
        }
        for def in [ORGS, MEMBERS, TEAMS, APPS, GRANTS, INTERVALS] {
            for entry in self.table(def)?.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                out.push(format!("{} {:?} => {}", def.name(), k.value(), hex::encode(v.value())));
            }
        }
        for def in [BY_APP, BY_PERSON] {
            for entry in self.table(def)?.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                out.push(format!("{} {:?} => {}", def.name(), k.value(), v.value()));
            }
        }
        Ok(out)
    }

    fn get<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        row_key: &str,
    ) -> Result<Option<T>> {
        self.table(def)?.get(row_key).map_err(storage)?.map(|v| decode(v.value())).transpose()
    }

    fn rows<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        prefix: &[&str],
        page: &PageRequest,
    ) -> Result<Page<T>> {
        self.scan(def, prefix, page, |_, row| decode(row))
    }

    /// One page of the rows whose keys start with `prefix`, each turned into an item by `item`.
    fn scan<V, T>(
        &self,
        def: TableDefinition<&str, V>,
        prefix: &[&str],
        page: &PageRequest,
        mut item: impl FnMut(&str, V::SelfType<'_>) -> Result<T>,
    ) -> Result<Page<T>>
    where
        V: redb::Value + 'static,
    {
        let range = prefix_range(prefix);
        let after = page.after(&range)?;
        let start = match &after {
            Some(key) => Bound::Excluded(key.as_str()),
            None => Bound::Included(range.0.as_str()),
        };
        let table = self.table(def)?;
        let mut items = Vec::new();
        let mut last: Option<String> = None;
        for entry in table.range((start, Bound::Excluded(range.1.as_str()))).map_err(storage)? {
            let (row_key, value) = entry.map_err(storage)?;
            if items.len() == page.size() {
                return Ok(Page { items, next_token: last.map(hex::encode) });
            }
            items.push(item(row_key.value(), value.value())?);
            last = Some(row_key.value().to_string());
        }
        Ok(Page { items, next_token: None })
    }
}
