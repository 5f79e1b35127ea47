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

/// Above every id: ids are printable ASCII below 0x7f.
const KEY_MAX: &str = "\u{7f}";

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

    /// The key parts after which this page starts.
    fn after(&self) -> Result<Option<Vec<String>>> {
        let Some(token) = &self.token else { return Ok(None) };
        let bytes = hex::decode(token).map_err(|_| QueryError::BadPageToken)?;
        postcard::from_bytes(&bytes).map(Some).map_err(|_| QueryError::BadPageToken)
    }
}

fn token(parts: &[&str]) -> String {
    hex::encode(postcard::to_stdvec(parts).expect("postcard encodes strings"))
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
        self.table(ORGS)?.get(org.as_str()).map_err(storage)?.map(|v| decode(v.value())).transpose()
    }

    pub fn member(&self, org: &OrgId, person: &PersonId) -> Result<Option<MemberView>> {
        self.get2(MEMBERS, org.as_str(), person.as_str())
    }

    pub fn members(&self, org: &OrgId, page: &PageRequest) -> Result<Page<MemberView>> {
        self.page2(MEMBERS, org.as_str(), page)
    }

    pub fn teams(&self, org: &OrgId, page: &PageRequest) -> Result<Page<TeamView>> {
        self.page2(TEAMS, org.as_str(), page)
    }

    pub fn app(&self, org: &OrgId, app: &AppId) -> Result<Option<AppView>> {
        self.get2(APPS, org.as_str(), app.as_str())
    }

    pub fn apps(&self, org: &OrgId, page: &PageRequest) -> Result<Page<AppView>> {
        self.page2(APPS, org.as_str(), page)
    }

    pub fn grant(&self, org: &OrgId, grant: &GrantId) -> Result<Option<GrantView>> {
        self.get2(GRANTS, org.as_str(), grant.as_str())
    }

    /// Who has access: the live grants of one app, by person.
    pub fn who_has_access(
        &self,
        org: &OrgId,
        app: &AppId,
        page: &PageRequest,
    ) -> Result<Page<GrantView>> {
        let (org, app) = (org.as_str(), app.as_str());
        let after = page.after()?;
        let start = match &after {
            Some(parts) if parts.len() == 1 => Bound::Excluded((org, app, parts[0].as_str())),
            Some(_) => return Err(QueryError::BadPageToken),
            None => Bound::Included((org, app, "")),
        };
        let index = self.table(BY_APP)?;
        let grants = self.table(GRANTS)?;
        let mut items = Vec::new();
        let mut last = None;
        for entry in index.range((start, Bound::Included((org, app, KEY_MAX)))).map_err(storage)? {
            let (key, grant) = entry.map_err(storage)?;
            if items.len() == page.size() {
                return Ok(Page { items, next_token: last });
            }
            let row = grants.get((org, grant.value())).map_err(storage)?;
            let row = row.ok_or_else(|| storage("index names a missing grant"))?;
            items.push(decode(row.value())?);
            last = Some(token(&[key.value().2]));
        }
        Ok(Page { items, next_token: None })
    }

    /// One person's live grants across organizations.
    pub fn grants_for_person(
        &self,
        person: &PersonId,
        page: &PageRequest,
    ) -> Result<Page<GrantView>> {
        let person = person.as_str();
        let after = page.after()?;
        let start = match &after {
            Some(parts) if parts.len() == 2 => {
                Bound::Excluded((person, parts[0].as_str(), parts[1].as_str()))
            }
            Some(_) => return Err(QueryError::BadPageToken),
            None => Bound::Included((person, "", "")),
        };
        let index = self.table(BY_PERSON)?;
        let grants = self.table(GRANTS)?;
        let mut items = Vec::new();
        let mut last = None;
        for entry in
            index.range((start, Bound::Included((person, KEY_MAX, KEY_MAX)))).map_err(storage)?
        {
            let (key, grant) = entry.map_err(storage)?;
            if items.len() == page.size() {
                return Ok(Page { items, next_token: last });
            }
            let (_, org, app) = key.value();
            let row = grants.get((org, grant.value())).map_err(storage)?;
            let row = row.ok_or_else(|| storage("index names a missing grant"))?;
            items.push(decode(row.value())?);
            last = Some(token(&[org, app]));
        }
        Ok(Page { items, next_token: None })
    }

    /// What one person sees: every app account they hold, across organizations.
    pub fn launchpad(&self, person: &PersonId, page: &PageRequest) -> Result<Page<LaunchpadEntry>> {
        let grants = self.grants_for_person(person, page)?;
        let orgs = self.table(ORGS)?;
        let apps = self.table(APPS)?;
        let mut items = Vec::with_capacity(grants.items.len());
        for grant in grants.items {
            let org: OrganizationView = decode(
                orgs.get(grant.org.as_str())
                    .map_err(storage)?
                    .ok_or_else(|| storage("missing organization"))?
                    .value(),
            )?;
            let app: AppView = decode(
                apps.get((grant.org.as_str(), grant.app.as_str()))
                    .map_err(storage)?
                    .ok_or_else(|| storage("missing app"))?
                    .value(),
            )?;
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
        let (org, app) = (org.as_str(), app.as_str());
        let table = self.table(INTERVALS)?;
        let mut out = Vec::new();
        for entry in
            table.range((org, app, "", 0)..=(org, app, KEY_MAX, u64::MAX)).map_err(storage)?
        {
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
        fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
            views: &Views,
            def: TableDefinition<K, V>,
            out: &mut Vec<String>,
        ) -> Result<()>
        where
            for<'a> K::SelfType<'a>: std::fmt::Debug,
            for<'a> V::SelfType<'a>: std::fmt::Debug,
        {
            let name = def.name().to_string();
            for entry in views.table(def)?.iter().map_err(storage)? {
                let (key, value) = entry.map_err(storage)?;
                out.push(format!("{name} {:?} => {:?}", key.value(), value.value()));
            }
            Ok(())
        }
        let mut out = Vec::new();
        rows(self, META, &mut out)?;
        rows(self, ORGS, &mut out)?;
        rows(self, MEMBERS, &mut out)?;
        rows(self, TEAMS, &mut out)?;
        rows(self, APPS, &mut out)?;
        rows(self, GRANTS, &mut out)?;
        rows(self, BY_APP, &mut out)?;
        rows(self, BY_PERSON, &mut out)?;
        rows(self, INTERVALS, &mut out)?;
        rows(self, OPEN_INTERVALS, &mut out)?;
        Ok(out)
    }

    fn get2<T: DeserializeOwned>(
        &self,
        def: TableDefinition<Key2, &[u8]>,
        a: &str,
        b: &str,
    ) -> Result<Option<T>> {
        self.table(def)?.get((a, b)).map_err(storage)?.map(|v| decode(v.value())).transpose()
    }

    fn page2<T: DeserializeOwned>(
        &self,
        def: TableDefinition<Key2, &[u8]>,
        prefix: &str,
        page: &PageRequest,
    ) -> Result<Page<T>> {
        let after = page.after()?;
        let start = match &after {
            Some(parts) if parts.len() == 1 => Bound::Excluded((prefix, parts[0].as_str())),
            Some(_) => return Err(QueryError::BadPageToken),
            None => Bound::Included((prefix, "")),
        };
        let table = self.table(def)?;
        let mut items = Vec::new();
        let mut last = None;
        for entry in table.range((start, Bound::Included((prefix, KEY_MAX)))).map_err(storage)? {
            let (key, row) = entry.map_err(storage)?;
            if items.len() == page.size() {
                return Ok(Page { items, next_token: last });
            }
            items.push(decode(row.value())?);
            last = Some(token(&[key.value().1]));
        }
        Ok(Page { items, next_token: None })
    }
}
