//! Accounts and their connections to third-party platforms. Credentials and tokens are
//! stored sealed (see `crypto`); callers get plaintext only through `ConnectionSecrets`.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use super::fields::UtcTime;
use super::schema::{accounts, connections};
use super::{ConnectionStatus, Db, StorageError, StorageResult, now, open_secret, reseal};
use crate::crypto::Crypto;
use crate::db_run;

pub const CREDENTIALS_COLUMN: &str = "connections.credentials";
pub const ACCESS_TOKEN_COLUMN: &str = "connections.access_token";
pub const REFRESH_TOKEN_COLUMN: &str = "connections.refresh_token";

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = accounts)]
pub struct Account {
    pub id: i64,
    pub name: String,
    pub email: Option<String>,
    pub created_at: UtcTime,
}

pub async fn create_account(db: &Db, name: &str, email: Option<&str>) -> StorageResult<Account> {
    let at = now();
    db_run!(db, |conn| {
        Ok(diesel::insert_into(accounts::table)
            .values((
                accounts::name.eq(name),
                accounts::email.eq(email),
                accounts::created_at.eq(at),
            ))
            .returning(Account::as_returning())
            .get_result(conn)
            .await?)
    })
}

/// A connection's `settings` column (a JSON object), parsed once when the row is read rather
/// than at every lookup. Text that is not a JSON object reads as no settings, as every reader
/// treated it before.
#[derive(Debug, Clone, Default, PartialEq, diesel::deserialize::FromSqlRow)]
pub struct Settings(serde_json::Map<String, serde_json::Value>);

impl Settings {
    pub fn from_text(text: &str) -> Settings {
        match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => Settings(map),
            _ => Settings::default(),
        }
    }

    /// One setting, if present.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key)
    }

    /// One setting's text, if it is a string.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(serde_json::Value::as_str)
    }

    /// The settings as one JSON object.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::Value::Object(self.0.clone())
    }

    /// The settings read as `T` (a provider's own settings struct); `T::default()` when
    /// they do not fit it.
    pub fn parse<T: serde::de::DeserializeOwned + Default>(&self) -> T {
        serde_json::from_value(self.to_value()).unwrap_or_default()
    }
}

impl Serialize for Settings {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for Settings {
    fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let text =
            <String as diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg>>::from_sql(
                bytes,
            )?;
        Ok(Settings::from_text(&text))
    }
}

impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::sqlite::Sqlite> for Settings {
    fn from_sql(
        bytes: <diesel::sqlite::Sqlite as diesel::backend::Backend>::RawValue<'_>,
    ) -> diesel::deserialize::Result<Self> {
        let text = <String as diesel::deserialize::FromSql<
            diesel::sql_types::Text,
            diesel::sqlite::Sqlite,
        >>::from_sql(bytes)?;
        Ok(Settings::from_text(&text))
    }
}

/// A stored connection. The secret columns are ciphertext and never serialised; the
/// fingerprint (last characters of the access token) is what people may see.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = connections)]
pub struct Connection {
    pub id: i64,
    pub account_id: i64,
    pub provider: String,
    pub name: String,
    pub base_url: Option<String>,
    pub settings: Settings,
    #[serde(skip)]
    pub credentials: Option<Vec<u8>>,
    #[serde(skip)]
    pub access_token: Option<Vec<u8>>,
    #[serde(skip)]
    pub refresh_token: Option<Vec<u8>>,
    pub token_fingerprint: Option<String>,
    pub expires_at: Option<UtcTime>,
    pub refresh_expires_at: Option<UtcTime>,
    pub status: ConnectionStatus,
    pub consecutive_failures: i32,
    pub last_error: Option<String>,
    pub last_refresh_attempt_at: Option<UtcTime>,
    pub last_refresh_success_at: Option<UtcTime>,
    pub last_sync_at: Option<UtcTime>,
    pub next_refresh_at: Option<UtcTime>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<UtcTime>,
    pub created_at: UtcTime,
    pub updated_at: UtcTime,
}

impl Connection {
    /// A text value of its settings, when set and not empty.
    pub fn text_setting(&self, key: &str) -> Option<String> {
        self.settings
            .text(key)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// A connection to create, with its secrets in plaintext (sealed before they are written).
/// Holds plaintext secrets until they are sealed: `Debug` shows only whether each is set.
#[derive(Clone, Default)]
pub struct NewConnection {
    pub account_id: i64,
    pub provider: String,
    pub name: String,
    pub base_url: Option<String>,
    /// Non-secret provider settings as JSON.
    pub settings: serde_json::Value,
    pub credentials: Option<String>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_at: Option<UtcTime>,
    pub refresh_expires_at: Option<UtcTime>,
}

/// `Some("********")` for a set secret, `None` for an unset one.
fn masked(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "********")
}

impl std::fmt::Debug for NewConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewConnection")
            .field("account_id", &self.account_id)
            .field("provider", &self.provider)
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("settings", &self.settings)
            .field("credentials", &masked(&self.credentials))
            .field("access_token", &masked(&self.access_token))
            .field("refresh_token", &masked(&self.refresh_token))
            .field("expires_at", &self.expires_at)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .finish()
    }
}

impl std::fmt::Debug for ConnectionUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionUpdate")
            .field("base_url", &self.base_url)
            .field("settings", &self.settings)
            .field("credentials", &masked(&self.credentials))
            .field("access_token", &masked(&self.access_token))
            .field("refresh_token", &masked(&self.refresh_token))
            .field("expires_at", &self.expires_at)
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// The decrypted secrets of one connection.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionSecrets {
    pub credentials: Option<String>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for ConnectionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionSecrets { .. }")
    }
}

/// The last four characters of a token: enough for a person to tell tokens apart.
pub fn fingerprint(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    format!("…{tail}")
}

fn status_for(token: Option<&str>, expires_at: Option<UtcTime>) -> ConnectionStatus {
    match (token, expires_at) {
        (None, _) => ConnectionStatus::Missing,
        (Some(_), Some(at)) if at.0 <= chrono::Utc::now() => ConnectionStatus::Expired,
        _ => ConnectionStatus::Active,
    }
}

pub async fn create_connection(db: &Db, crypto: &Crypto, new: &NewConnection) -> StorageResult<Connection> {
    let at = now();
    let seal = |column, value: &Option<String>| value.as_deref().map(|v| crypto.encrypt_str(column, v));
    let values = (
        connections::account_id.eq(new.account_id),
        connections::provider.eq(&new.provider),
        connections::name.eq(&new.name),
        connections::base_url.eq(&new.base_url),
        connections::settings.eq(new.settings.to_string()),
        connections::credentials.eq(seal(CREDENTIALS_COLUMN, &new.credentials)),
        connections::access_token.eq(seal(ACCESS_TOKEN_COLUMN, &new.access_token)),
        connections::refresh_token.eq(seal(REFRESH_TOKEN_COLUMN, &new.refresh_token)),
        connections::token_fingerprint.eq(new.access_token.as_deref().map(fingerprint)),
        connections::expires_at.eq(new.expires_at),
        connections::refresh_expires_at.eq(new.refresh_expires_at),
        connections::status.eq(status_for(new.access_token.as_deref(), new.expires_at)),
        connections::created_at.eq(at),
        connections::updated_at.eq(at),
    );
    db_run!(db, |conn| {
        Ok(diesel::insert_into(connections::table)
            .values(values.clone())
            .returning(Connection::as_returning())
            .get_result(conn)
            .await?)
    })
}

pub async fn get_connection(db: &Db, id: i64) -> StorageResult<Connection> {
    db_run!(db, |conn| {
        Ok(connections::table
            .find(id)
            .select(Connection::as_select())
            .first(conn)
            .await?)
    })
}

/// The connection `name` of `provider` owned by account `account`, if there is one.
pub async fn find_connection(
    db: &Db,
    account: &str,
    provider: &str,
    name: &str,
) -> StorageResult<Option<Connection>> {
    db_run!(db, |conn| {
        Ok(connections::table
            .inner_join(accounts::table)
            .filter(accounts::name.eq(account))
            .filter(connections::provider.eq(provider))
            .filter(connections::name.eq(name))
            .select(Connection::as_select())
            .first(conn)
            .await
            .optional()?)
    })
}

pub async fn list_connections(db: &Db) -> StorageResult<Vec<Connection>> {
    db_run!(db, |conn| {
        Ok(connections::table
            .order(connections::id.asc())
            .select(Connection::as_select())
            .load(conn)
            .await?)
    })
}

pub fn secrets(crypto: &Crypto, connection: &Connection) -> StorageResult<ConnectionSecrets> {
    let open = |column, sealed: &Option<Vec<u8>>| {
        sealed
            .as_deref()
            .map(|s| open_secret(crypto, column, s))
            .transpose()
    };
    Ok(ConnectionSecrets {
        credentials: open(CREDENTIALS_COLUMN, &connection.credentials)?,
        access_token: open(ACCESS_TOKEN_COLUMN, &connection.access_token)?,
        refresh_token: open(REFRESH_TOKEN_COLUMN, &connection.refresh_token)?,
    })
}

/// Re-seals every connection secret with the current key (after a key rotation).
pub async fn reencrypt_secrets(db: &Db, crypto: &Crypto) -> StorageResult<usize> {
    type SealedRow = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            let rows: Vec<SealedRow> = connections::table
                .select((
                    connections::id,
                    connections::credentials,
                    connections::access_token,
                    connections::refresh_token,
                ))
                .load(tx)
                .await?;
            let mut changed = 0;
            for (id, credentials, access, refresh) in rows {
                let credentials = reseal(crypto, CREDENTIALS_COLUMN, credentials.as_deref())?;
                let access = reseal(crypto, ACCESS_TOKEN_COLUMN, access.as_deref())?;
                let refresh = reseal(crypto, REFRESH_TOKEN_COLUMN, refresh.as_deref())?;
                let columns = [&credentials, &access, &refresh];
                changed += columns.iter().filter(|c| c.is_some()).count();
                let target = connections::table.find(id);
                if let Some(v) = credentials {
                    diesel::update(target)
                        .set(connections::credentials.eq(v))
                        .execute(tx)
                        .await?;
                }
                if let Some(v) = access {
                    diesel::update(target)
                        .set(connections::access_token.eq(v))
                        .execute(tx)
                        .await?;
                }
                if let Some(v) = refresh {
                    diesel::update(target)
                        .set(connections::refresh_token.eq(v))
                        .execute(tx)
                        .await?;
                }
            }
            Ok(changed)
        })
        .await
    })
}

/// The named connection of an account, created (account too) when missing. `base_url` and
/// `settings` are brought up to date; tokens and status are left as stored.
pub async fn ensure_connection(
    db: &Db,
    account: &str,
    provider: &str,
    name: &str,
    base_url: Option<&str>,
    settings: &serde_json::Value,
) -> StorageResult<Connection> {
    let at = now();
    let settings = settings.to_string();
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            diesel::insert_into(accounts::table)
                .values((accounts::name.eq(account), accounts::created_at.eq(at)))
                .on_conflict(accounts::name)
                .do_nothing()
                .execute(tx)
                .await?;
            let account_id: i64 = accounts::table
                .filter(accounts::name.eq(account))
                .select(accounts::id)
                .first(tx)
                .await?;
            Ok(diesel::insert_into(connections::table)
                .values((
                    connections::account_id.eq(account_id),
                    connections::provider.eq(provider),
                    connections::name.eq(name),
                    connections::base_url.eq(base_url),
                    connections::settings.eq(&settings),
                    connections::created_at.eq(at),
                    connections::updated_at.eq(at),
                ))
                .on_conflict((connections::account_id, connections::provider, connections::name))
                .do_update()
                .set((
                    connections::base_url.eq(base_url),
                    connections::settings.eq(&settings),
                    connections::updated_at.eq(at),
                    connections::next_refresh_at.eq(None::<UtcTime>),
                ))
                .returning(Connection::as_returning())
                .get_result(tx)
                .await?)
        })
        .await
    })
}

/// A successful refresh: the new tokens (sealed), their expiry, a clean failure record.
#[derive(Clone)]
pub struct RefreshedToken {
    pub access_token: String,
    /// `None` keeps the stored refresh token.
    pub refresh_token: Option<String>,
    pub expires_at: Option<UtcTime>,
    pub refresh_expires_at: Option<UtcTime>,
}

pub async fn store_refreshed_token(
    db: &Db,
    crypto: &Crypto,
    id: i64,
    token: &RefreshedToken,
    at: UtcTime,
) -> StorageResult<Connection> {
    // One statement, so the new access token and a rotated refresh token land together; a
    // refresh that rotated nothing leaves the stored refresh token (and its expiry) alone.
    let changeset = ConnectionChangeset {
        access_token: Some(Some(crypto.encrypt_str(ACCESS_TOKEN_COLUMN, &token.access_token))),
        token_fingerprint: Some(Some(fingerprint(&token.access_token))),
        refresh_token: token
            .refresh_token
            .as_deref()
            .map(|t| Some(crypto.encrypt_str(REFRESH_TOKEN_COLUMN, t))),
        refresh_expires_at: token.refresh_token.as_ref().map(|_| token.refresh_expires_at),
        expires_at: Some(token.expires_at),
        status: Some(ConnectionStatus::Active),
        consecutive_failures: Some(0),
        last_error: Some(None),
        last_refresh_attempt_at: Some(Some(at)),
        last_refresh_success_at: Some(Some(at)),
        updated_at: Some(at),
        ..Default::default()
    };
    apply(db, id, &changeset).await
}

/// A failed refresh: counted, with its (sanitised) error; `status` set when the failure
/// says something lasting (e.g. `needs_reauth`).
pub async fn record_refresh_failure(
    db: &Db,
    id: i64,
    status: Option<ConnectionStatus>,
    error: &str,
    at: UtcTime,
) -> StorageResult<Connection> {
    let changeset = ConnectionChangeset {
        status,
        last_error: Some(Some(error.to_owned())),
        last_refresh_attempt_at: Some(Some(at)),
        updated_at: Some(at),
        ..Default::default()
    };
    db_run!(db, |conn| {
        Ok(diesel::update(connections::table.find(id))
            .set((
                &changeset,
                connections::consecutive_failures.eq(connections::consecutive_failures + 1),
            ))
            .returning(Connection::as_returning())
            .get_result(conn)
            .await?)
    })
}

/// The connections alert evaluation must judge: waiting for re-authorisation, failing to
/// refresh at least `refresh_failures` times, holding a token that expires by `runway_until`,
/// or owning a poll pair that fails at least `poll_failures` times (its alert names the
/// connection). Healthy connections never alert, so they are not read.
pub async fn alert_candidates(
    db: &Db,
    refresh_failures: i32,
    runway_until: UtcTime,
    poll_failures: i32,
) -> StorageResult<Vec<Connection>> {
    use super::schema::poll_endpoint_state as polls;
    db_run!(db, |conn| {
        let failing_polls = super::polling::failing(poll_failures).select(polls::connection_id);
        Ok(connections::table
            .filter(
                connections::status
                    .eq(ConnectionStatus::NeedsReauth)
                    .or(connections::consecutive_failures.ge(refresh_failures))
                    .or(connections::access_token
                        .is_not_null()
                        .and(connections::expires_at.le(runway_until)))
                    .or(connections::id.eq_any(failing_polls)),
            )
            .order(connections::id.asc())
            .select(Connection::as_select())
            .load(conn)
            .await?)
    })
}

/// Connections a refresh sweep should look at: not disabled, not waiting for re-authorisation,
/// holding a token or a refresh token, due by `at` (`next_refresh_at`) or not yet scheduled
/// (`NULL`: new or changed since), optionally of one provider or one id. Both backends answer
/// from the `next_refresh_at` index, so the sweep reads what is due, not every connection.
/// Whether each is really due is decided by the caller (leads differ by provider).
pub async fn refresh_candidate_ids(
    db: &Db,
    provider: Option<&str>,
    id: Option<i64>,
    at: UtcTime,
) -> StorageResult<Vec<i64>> {
    db_run!(db, |conn| {
        let mut query = connections::table
            .filter(
                connections::next_refresh_at
                    .is_null()
                    .or(connections::next_refresh_at.le(at)),
            )
            .filter(connections::status.ne_all([ConnectionStatus::Disabled, ConnectionStatus::NeedsReauth]))
            .filter(
                connections::refresh_token
                    .is_not_null()
                    .or(connections::credentials.is_not_null()),
            )
            .select(connections::id)
            .into_boxed();
        if let Some(provider) = provider {
            query = query.filter(connections::provider.eq(provider.to_owned()));
        }
        if let Some(id) = id {
            query = query.filter(connections::id.eq(id));
        }
        // Sorted here, not by the query: an ORDER BY id leads SQLite to scan the table in id
        // order instead of reading the `next_refresh_at` index.
        let mut due: Vec<i64> = query.load(conn).await?;
        due.sort_unstable();
        Ok(due)
    })
}

/// The connections with these ids, in id order (the sweep reads its candidates a page at a
/// time through this, so judging many never holds them all in memory).
pub async fn connections_by_ids(db: &Db, ids: &[i64]) -> StorageResult<Vec<Connection>> {
    db_run!(db, |conn| {
        let mut rows: Vec<Connection> = connections::table
            .filter(connections::id.eq_any(ids))
            .select(Connection::as_select())
            .load(conn)
            .await?;
        rows.sort_by_key(|c| c.id);
        Ok(rows)
    })
}

/// Records when each connection `(id, next due, updated_at as judged)` is next due, for
/// connections a sweep found not due yet; a connection changed since it was judged (its
/// `updated_at` moved) keeps `NULL`, to be judged again. Written a few hundred rows a
/// transaction, so a first sweep over many connections never holds their rows (or SQLite's
/// one writer) for long.
pub async fn schedule_refreshes(db: &Db, due: &[(i64, UtcTime, UtcTime)]) -> StorageResult<()> {
    for chunk in due.chunks(SCHEDULE_CHUNK) {
        db_run!(db, |conn| {
            conn.transaction::<_, StorageError, _>(async |tx| {
                for (id, next, judged_version) in chunk {
                    diesel::update(
                        connections::table
                            .find(*id)
                            .filter(connections::updated_at.eq(*judged_version)),
                    )
                    .set(connections::next_refresh_at.eq(Some(*next)))
                    .execute(tx)
                    .await?;
                }
                Ok(())
            })
            .await
        })?;
    }
    Ok(())
}

const SCHEDULE_CHUNK: usize = 500;

/// Takes the refresh lease on a connection for `owner` until `until`, unless another owner
/// holds an unexpired one. A single conditional UPDATE: on PostgreSQL the row lock makes a
/// concurrent claimer re-check the condition after the first commits, so one of them wins.
/// Returns the claimed row (re-read, so the caller judges it as it is now).
pub async fn claim(
    db: &Db,
    id: i64,
    owner: &str,
    at: UtcTime,
    until: UtcTime,
) -> StorageResult<Option<Connection>> {
    db_run!(db, |conn| {
        Ok(diesel::update(
            connections::table.find(id).filter(
                connections::lease_expires_at
                    .is_null()
                    .or(connections::lease_expires_at.lt(at))
                    .or(connections::lease_owner.eq(owner)),
            ),
        )
        .set((
            connections::lease_owner.eq(owner),
            connections::lease_expires_at.eq(until),
        ))
        .returning(Connection::as_returning())
        .get_result(conn)
        .await
        .optional()?)
    })
}

/// Extends `owner`'s lease to `until`; whether it still held it.
pub async fn renew(db: &Db, id: i64, owner: &str, until: UtcTime) -> StorageResult<bool> {
    db_run!(db, |conn| {
        Ok(diesel::update(
            connections::table
                .filter(connections::id.eq(id))
                .filter(connections::lease_owner.eq(owner)),
        )
        .set(connections::lease_expires_at.eq(until))
        .execute(conn)
        .await?
            == 1)
    })
}

/// Gives the lease back (only if `owner` still holds it).
pub async fn release(db: &Db, id: i64, owner: &str) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::update(
            connections::table
                .find(id)
                .filter(connections::lease_owner.eq(owner)),
        )
        .set((
            connections::lease_owner.eq(None::<String>),
            connections::lease_expires_at.eq(None::<UtcTime>),
        ))
        .execute(conn)
        .await?;
        Ok(())
    })
}

/// Gives back every lease `owner` holds (a process stopping in the middle of a sweep); how many.
pub async fn release_all(db: &Db, owner: &str) -> StorageResult<usize> {
    db_run!(db, |conn| {
        Ok(
            diesel::update(connections::table.filter(connections::lease_owner.eq(owner)))
                .set((
                    connections::lease_owner.eq(None::<String>),
                    connections::lease_expires_at.eq(None::<UtcTime>),
                ))
                .execute(conn)
                .await?,
        )
    })
}

pub async fn delete_connection(db: &Db, id: i64) -> StorageResult<()> {
    db_run!(db, |conn| {
        match diesel::delete(connections::table.find(id)).execute(conn).await? {
            0 => Err(StorageError::NotFound),
            _ => Ok(()),
        }
    })
}

/// Forgets a connection's access and refresh tokens (credentials and settings stay); a
/// disabled connection stays disabled. With `reconnect_needed` (no way to log in anew without
/// a person) the connection needs re-authorisation, saying why; else it is `missing`, and the
/// next refresh logs in anew.
pub async fn clear_tokens(
    db: &Db,
    id: i64,
    at: UtcTime,
    reconnect_needed: Option<&str>,
) -> StorageResult<Connection> {
    let current = get_connection(db, id).await?;
    let status = match reconnect_needed {
        Some(_) => ConnectionStatus::NeedsReauth,
        None => ConnectionStatus::Missing,
    };
    let changeset = ConnectionChangeset {
        access_token: Some(None),
        token_fingerprint: Some(None),
        refresh_token: Some(None),
        expires_at: Some(None),
        refresh_expires_at: Some(None),
        status: (current.status != ConnectionStatus::Disabled).then_some(status),
        consecutive_failures: Some(0),
        last_error: Some(reconnect_needed.map(str::to_owned)),
        updated_at: Some(at),
        ..Default::default()
    };
    apply(db, id, &changeset).await
}

/// An account's name.
pub async fn account_name(db: &Db, id: i64) -> StorageResult<String> {
    db_run!(db, |conn| {
        Ok(accounts::table
            .find(id)
            .select(accounts::name)
            .first(conn)
            .await?)
    })
}

pub async fn account_by_name(db: &Db, name: &str) -> StorageResult<Account> {
    db_run!(db, |conn| {
        Ok(accounts::table
            .filter(accounts::name.eq(name))
            .select(Account::as_select())
            .first(conn)
            .await?)
    })
}

/// Stores a token derived from another connection's (e.g. a Facebook page token) as a
/// connection of the same account, created or updated by (provider, name).
pub async fn upsert_derived_token(
    db: &Db,
    crypto: &Crypto,
    parent: &Connection,
    provider: &str,
    name: &str,
    settings: &serde_json::Value,
    token: &str,
) -> StorageResult<Connection> {
    let (account_id, base_url) = (parent.account_id, parent.base_url.as_deref());
    let at = now();
    let sealed = crypto.encrypt_str(ACCESS_TOKEN_COLUMN, token);
    let settings = settings.to_string();
    db_run!(db, |conn| {
        Ok(diesel::insert_into(connections::table)
            .values((
                connections::account_id.eq(account_id),
                connections::provider.eq(provider),
                connections::name.eq(name),
                connections::base_url.eq(base_url),
                connections::settings.eq(&settings),
                connections::access_token.eq(Some(&sealed)),
                connections::token_fingerprint.eq(Some(fingerprint(token))),
                connections::status.eq(ConnectionStatus::Active),
                connections::last_refresh_success_at.eq(Some(at)),
                connections::created_at.eq(at),
                connections::updated_at.eq(at),
            ))
            .on_conflict((connections::account_id, connections::provider, connections::name))
            .do_update()
            .set((
                connections::settings.eq(&settings),
                connections::access_token.eq(Some(&sealed)),
                connections::token_fingerprint.eq(Some(fingerprint(token))),
                connections::status.eq(ConnectionStatus::Active),
                connections::last_refresh_success_at.eq(Some(at)),
                connections::updated_at.eq(at),
                connections::next_refresh_at.eq(None::<UtcTime>),
            ))
            .returning(Connection::as_returning())
            .get_result(conn)
            .await?)
    })
}

/// Changes to a connection; `None` leaves a field as it is. Secrets are given in plaintext
/// and sealed here.
/// Holds plaintext secrets until they are sealed: `Debug` shows only whether each is set.
#[derive(Clone, Default)]
pub struct ConnectionUpdate {
    pub base_url: Option<Option<String>>,
    pub settings: Option<serde_json::Value>,
    pub credentials: Option<String>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_at: Option<Option<UtcTime>>,
    /// `Some(true)` disables the connection (sweeps skip it); `Some(false)` enables it again.
    pub disabled: Option<bool>,
}

#[derive(AsChangeset, Default)]
#[diesel(table_name = connections)]
struct ConnectionChangeset {
    base_url: Option<Option<String>>,
    settings: Option<String>,
    credentials: Option<Option<Vec<u8>>>,
    access_token: Option<Option<Vec<u8>>>,
    token_fingerprint: Option<Option<String>>,
    refresh_token: Option<Option<Vec<u8>>>,
    expires_at: Option<Option<UtcTime>>,
    refresh_expires_at: Option<Option<UtcTime>>,
    status: Option<ConnectionStatus>,
    consecutive_failures: Option<i32>,
    last_error: Option<Option<String>>,
    last_refresh_attempt_at: Option<Option<UtcTime>>,
    last_refresh_success_at: Option<Option<UtcTime>>,
    updated_at: Option<UtcTime>,
}

/// Applies an update. New credentials or tokens count as a re-authorisation: failures are
/// cleared and a `needs_reauth` connection becomes eligible for refresh again.
pub async fn update_connection(
    db: &Db,
    crypto: &Crypto,
    id: i64,
    update: &ConnectionUpdate,
) -> StorageResult<Connection> {
    let current = get_connection(db, id).await?;
    let reauthorised =
        update.credentials.is_some() || update.access_token.is_some() || update.refresh_token.is_some();
    let has_token = update.access_token.is_some() || current.access_token.is_some();
    let renewed = if has_token {
        ConnectionStatus::Active
    } else {
        ConnectionStatus::Missing
    };
    let status = match update.disabled {
        Some(true) => Some(ConnectionStatus::Disabled),
        Some(false) if current.status == ConnectionStatus::Disabled || reauthorised => Some(renewed),
        _ if reauthorised && current.status != ConnectionStatus::Disabled => Some(renewed),
        _ => None,
    };
    let changeset = ConnectionChangeset {
        base_url: update.base_url.clone(),
        settings: update.settings.as_ref().map(|s| s.to_string()),
        credentials: update
            .credentials
            .as_deref()
            .map(|c| Some(crypto.encrypt_str(CREDENTIALS_COLUMN, c))),
        access_token: update
            .access_token
            .as_deref()
            .map(|t| Some(crypto.encrypt_str(ACCESS_TOKEN_COLUMN, t))),
        token_fingerprint: update.access_token.as_deref().map(|t| Some(fingerprint(t))),
        refresh_token: update
            .refresh_token
            .as_deref()
            .map(|t| Some(crypto.encrypt_str(REFRESH_TOKEN_COLUMN, t))),
        expires_at: update.expires_at,
        status,
        consecutive_failures: reauthorised.then_some(0),
        last_error: reauthorised.then_some(None),
        updated_at: Some(now()),
        ..Default::default()
    };
    apply(db, id, &changeset).await
}

/// Writes `changeset` to connection `id` in one statement; returns the row as it now is.
/// Every such change (tokens, expiry, settings, status) may move when the connection is due,
/// so its `next_refresh_at` is cleared for the next sweep to work out again.
async fn apply(db: &Db, id: i64, changeset: &ConnectionChangeset) -> StorageResult<Connection> {
    db_run!(db, |conn| {
        Ok(diesel::update(connections::table.find(id))
            .set((changeset, connections::next_refresh_at.eq(None::<UtcTime>)))
            .returning(Connection::as_returning())
            .get_result(conn)
            .await?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_secrets_never_print() {
        let new = NewConnection {
            credentials: Some("CANARY-credentials".into()),
            access_token: Some("CANARY-access".into()),
            refresh_token: Some("CANARY-refresh".into()),
            ..NewConnection::default()
        };
        let update = ConnectionUpdate {
            credentials: new.credentials.clone(),
            access_token: new.access_token.clone(),
            refresh_token: new.refresh_token.clone(),
            ..ConnectionUpdate::default()
        };
        for shown in [format!("{new:?}"), format!("{update:?}")] {
            assert!(!shown.contains("CANARY"), "{shown}");
            assert!(shown.contains("access_token: Some(\"********\")"), "{shown}");
        }
    }
}
