//! Staff users, their login sessions and their API tokens. Passwords are stored as Argon2id
//! hashes; session and API tokens only as SHA-256 hashes (they are long random values, so a
//! fast hash is enough and lookups stay indexed).

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use super::fields::{Role, UtcTime};
use super::schema::{api_tokens, app_settings, password_resets, staff_sessions, staff_users};
use super::{Db, StorageError, StorageResult};
use crate::db_run;

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = staff_users)]
pub struct StaffUser {
    pub id: i64,
    pub email: String,
    #[serde(skip)]
    pub password_hash: String,
    /// `admin` or `viewer`.
    pub role: Role,
    pub disabled: bool,
    pub last_login_at: Option<UtcTime>,
    pub created_at: UtcTime,
}

#[derive(Debug, Clone, Queryable, Selectable, PartialEq)]
#[diesel(table_name = staff_sessions)]
pub struct StaffSession {
    pub id: i64,
    pub token_hash: String,
    pub user_id: i64,
    pub csrf_token: String,
    pub created_at: UtcTime,
    pub expires_at: UtcTime,
    pub last_seen_at: UtcTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = api_tokens)]
pub struct ApiToken {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    #[serde(skip)]
    pub token_hash: String,
    pub last_used_at: Option<UtcTime>,
    pub expires_at: Option<UtcTime>,
    pub created_at: UtcTime,
}

pub async fn create_user(
    db: &Db,
    email: &str,
    password_hash: &str,
    role: Role,
    at: UtcTime,
) -> StorageResult<StaffUser> {
    db_run!(db, |conn| {
        Ok(diesel::insert_into(staff_users::table)
            .values((
                staff_users::email.eq(email),
                staff_users::password_hash.eq(password_hash),
                staff_users::role.eq(role),
                staff_users::created_at.eq(at),
            ))
            .returning(StaffUser::as_returning())
            .get_result(conn)
            .await?)
    })
}

/// The first admin, created by the one caller that consumes the setup value `setup_value`
/// stored under `setup_key` in `app_settings` (delete and insert in one transaction), so two
/// setups racing on several replicas cannot both succeed. `NotFound`: the setup was already used.
pub async fn create_first_admin(
    db: &Db,
    setup_key: &str,
    setup_value: &str,
    email: &str,
    password_hash: &str,
    at: UtcTime,
) -> StorageResult<StaffUser> {
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            let consumed = diesel::delete(
                app_settings::table
                    .filter(app_settings::key.eq(setup_key))
                    .filter(app_settings::value.eq(setup_value)),
            )
            .execute(tx)
            .await?;
            if consumed != 1 {
                return Err(StorageError::NotFound);
            }
            Ok(diesel::insert_into(staff_users::table)
                .values((
                    staff_users::email.eq(email),
                    staff_users::password_hash.eq(password_hash),
                    staff_users::role.eq(Role::Admin),
                    staff_users::created_at.eq(at),
                ))
                .returning(StaffUser::as_returning())
                .get_result(tx)
                .await?)
        })
        .await
    })
}

pub async fn user_by_email(db: &Db, email: &str) -> StorageResult<StaffUser> {
    db_run!(db, |conn| {
        staff_users::table
            .filter(staff_users::email.eq(email))
            .select(StaffUser::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(StorageError::NotFound)
    })
}

pub async fn user(db: &Db, id: i64) -> StorageResult<StaffUser> {
    db_run!(db, |conn| {
        staff_users::table
            .find(id)
            .select(StaffUser::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(StorageError::NotFound)
    })
}

pub async fn list_users(db: &Db) -> StorageResult<Vec<StaffUser>> {
    db_run!(db, |conn| {
        Ok(staff_users::table
            .select(StaffUser::as_select())
            .order(staff_users::email)
            .load(conn)
            .await?)
    })
}

pub async fn count_users(db: &Db) -> StorageResult<i64> {
    db_run!(db, |conn| {
        Ok(staff_users::table.count().get_result(conn).await?)
    })
}

/// Why a change is refused that would leave nobody able to administer Telltale.
pub const LAST_ADMIN: &str = "that would leave no enabled admin: make another user an admin first";

/// Changes to admins are taken one at a time on PostgreSQL (a transaction-scoped advisory
/// lock), so two admins demoting each other at once cannot both succeed. SQLite has one
/// writer anyway. A macro: the statement is compiled for each backend's connection.
macro_rules! lock_admins {
    ($postgres:expr, $tx:expr) => {
        if $postgres {
            diesel::sql_query("SELECT pg_advisory_xact_lock(7401020304)")
                .execute($tx)
                .await?;
        }
    };
}

macro_rules! enabled_admins {
    ($tx:expr) => {
        staff_users::table
            .filter(staff_users::role.eq(super::Role::Admin))
            .filter(staff_users::disabled.eq(false))
            .count()
            .get_result::<i64>($tx)
            .await?
    };
}

/// The columns `update_user` may change; `None` leaves one as it is.
#[derive(AsChangeset)]
#[diesel(table_name = staff_users)]
struct UserChange<'a> {
    password_hash: Option<&'a str>,
    role: Option<Role>,
    disabled: Option<bool>,
}

/// Changes a user's password hash, role or disabled flag (each when given), in one statement.
/// Disabling or a new password ends the user's sessions in the same transaction.
pub async fn update_user(
    db: &Db,
    id: i64,
    password_hash: Option<&str>,
    role: Option<Role>,
    disabled: Option<bool>,
) -> StorageResult<StaffUser> {
    let change = UserChange {
        password_hash,
        role,
        disabled,
    };
    let nothing = password_hash.is_none() && role.is_none() && disabled.is_none();
    let postgres = db.backend_name() == "postgres";
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            lock_admins!(postgres, &mut *tx);
            let user = if nothing {
                // diesel refuses an UPDATE without columns; there is nothing to change anyway.
                staff_users::table
                    .find(id)
                    .select(StaffUser::as_select())
                    .first(tx)
                    .await
                    .optional()?
            } else {
                diesel::update(staff_users::table.find(id))
                    .set(&change)
                    .returning(StaffUser::as_returning())
                    .get_result(tx)
                    .await
                    .optional()?
            };
            let user = user.ok_or(StorageError::NotFound)?;
            if enabled_admins!(&mut *tx) == 0 {
                return Err(StorageError::Conflict(LAST_ADMIN.into()));
            }
            if password_hash.is_some() || disabled == Some(true) {
                diesel::delete(staff_sessions::table.filter(staff_sessions::user_id.eq(id)))
                    .execute(tx)
                    .await?;
            }
            Ok(user)
        })
        .await
    })
}

/// Deletes a user, their sessions and API tokens, unless they are the last enabled admin.
pub async fn delete_user(db: &Db, id: i64) -> StorageResult<()> {
    let postgres = db.backend_name() == "postgres";
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            lock_admins!(postgres, &mut *tx);
            if diesel::delete(staff_users::table.find(id)).execute(tx).await? == 0 {
                return Err(StorageError::NotFound);
            }
            if enabled_admins!(&mut *tx) == 0 {
                return Err(StorageError::Conflict(LAST_ADMIN.into()));
            }
            Ok(())
        })
        .await
    })
}

/// Keeps a one-time password reset for `user_id` (only the token's hash), replacing any
/// earlier one of theirs.
pub async fn create_password_reset(
    db: &Db,
    user_id: i64,
    token_hash: &str,
    at: UtcTime,
    expires_at: UtcTime,
) -> StorageResult<()> {
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            diesel::delete(
                password_resets::table.filter(
                    password_resets::user_id
                        .eq(user_id)
                        .or(password_resets::expires_at.le(at)),
                ),
            )
            .execute(tx)
            .await?;
            diesel::insert_into(password_resets::table)
                .values((
                    password_resets::token_hash.eq(token_hash),
                    password_resets::user_id.eq(user_id),
                    password_resets::created_at.eq(at),
                    password_resets::expires_at.eq(expires_at),
                ))
                .execute(tx)
                .await?;
            Ok(())
        })
        .await
    })
}

/// The enabled user a live reset token is for, without using it (the page asks for the new
/// password first).
pub async fn password_reset_user(db: &Db, token_hash: &str, at: UtcTime) -> StorageResult<Option<StaffUser>> {
    db_run!(db, |conn| {
        Ok(password_resets::table
            .inner_join(staff_users::table)
            .filter(password_resets::token_hash.eq(token_hash))
            .filter(password_resets::expires_at.gt(at))
            .filter(staff_users::disabled.eq(false))
            .select(StaffUser::as_select())
            .first(conn)
            .await
            .optional()?)
    })
}

/// Uses a reset token once: deletes it and, when it was live, sets the new password hash and
/// ends the user's sessions, in one transaction (two tabs, or two replicas, cannot both use
/// it). `NotFound`: unknown, used or expired.
pub async fn use_password_reset(
    db: &Db,
    token_hash: &str,
    password_hash: &str,
    at: UtcTime,
) -> StorageResult<StaffUser> {
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            let used: Option<(i64, UtcTime)> =
                diesel::delete(password_resets::table.filter(password_resets::token_hash.eq(token_hash)))
                    .returning((password_resets::user_id, password_resets::expires_at))
                    .get_result(tx)
                    .await
                    .optional()?;
            let Some((user_id, _)) = used.filter(|(_, expires)| expires.0 > at.0) else {
                return Err(StorageError::NotFound);
            };
            let user = diesel::update(
                staff_users::table
                    .find(user_id)
                    .filter(staff_users::disabled.eq(false)),
            )
            .set(staff_users::password_hash.eq(password_hash))
            .returning(StaffUser::as_returning())
            .get_result(tx)
            .await
            .optional()?
            .ok_or(StorageError::NotFound)?;
            diesel::delete(staff_sessions::table.filter(staff_sessions::user_id.eq(user_id)))
                .execute(tx)
                .await?;
            Ok(user)
        })
        .await
    })
}

/// Sets a user's password hash, leaving their sessions (the caller ends the ones it should).
pub async fn set_password(db: &Db, user_id: i64, password_hash: &str) -> StorageResult<()> {
    db_run!(db, |conn| {
        match diesel::update(staff_users::table.find(user_id))
            .set(staff_users::password_hash.eq(password_hash))
            .execute(conn)
            .await?
        {
            0 => Err(StorageError::NotFound),
            _ => Ok(()),
        }
    })
}

/// Ends every session of `user_id` except `keep` (the one asking), e.g. after a password change.
pub async fn end_other_sessions(db: &Db, user_id: i64, keep: Option<&str>) -> StorageResult<usize> {
    db_run!(db, |conn| {
        let mut query = diesel::delete(staff_sessions::table)
            .filter(staff_sessions::user_id.eq(user_id))
            .into_boxed();
        if let Some(keep) = keep {
            query = query.filter(staff_sessions::token_hash.ne(keep));
        }
        Ok(query.execute(conn).await?)
    })
}

pub async fn record_login(db: &Db, user_id: i64, at: UtcTime) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::update(staff_users::table.find(user_id))
            .set(staff_users::last_login_at.eq(at))
            .execute(conn)
            .await?;
        Ok(())
    })
}

/// Opens a session. Expired sessions are deleted on the way, so the table holds live sessions
/// plus those that lapsed since the last sign-in, without a job of its own.
pub async fn create_session(
    db: &Db,
    user_id: i64,
    token_hash: &str,
    csrf_token: &str,
    at: UtcTime,
    expires_at: UtcTime,
) -> StorageResult<StaffSession> {
    db_run!(db, |conn| {
        diesel::delete(staff_sessions::table.filter(staff_sessions::expires_at.le(at)))
            .execute(conn)
            .await?;
        Ok(diesel::insert_into(staff_sessions::table)
            .values((
                staff_sessions::token_hash.eq(token_hash),
                staff_sessions::user_id.eq(user_id),
                staff_sessions::csrf_token.eq(csrf_token),
                staff_sessions::created_at.eq(at),
                staff_sessions::expires_at.eq(expires_at),
                staff_sessions::last_seen_at.eq(at),
            ))
            .returning(StaffSession::as_returning())
            .get_result(conn)
            .await?)
    })
}

/// The live session with this token hash and its (enabled) user.
pub async fn session(
    db: &Db,
    token_hash: &str,
    at: UtcTime,
) -> StorageResult<Option<(StaffSession, StaffUser)>> {
    db_run!(db, |conn| {
        Ok(staff_sessions::table
            .inner_join(staff_users::table)
            .filter(staff_sessions::token_hash.eq(token_hash))
            .filter(staff_sessions::expires_at.gt(at))
            .filter(staff_users::disabled.eq(false))
            .select((StaffSession::as_select(), StaffUser::as_select()))
            .first(conn)
            .await
            .optional()?)
    })
}

/// How many sessions are stored, live or not (for tests and the settings page).
pub async fn session_count(db: &Db) -> StorageResult<i64> {
    db_run!(db, |conn| Ok(staff_sessions::table
        .count()
        .get_result(conn)
        .await?))
}

pub async fn delete_session(db: &Db, token_hash: &str) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::delete(staff_sessions::table.filter(staff_sessions::token_hash.eq(token_hash)))
            .execute(conn)
            .await?;
        Ok(())
    })
}

pub async fn create_api_token(
    db: &Db,
    user_id: i64,
    name: &str,
    token_hash: &str,
    at: UtcTime,
) -> StorageResult<ApiToken> {
    db_run!(db, |conn| {
        Ok(diesel::insert_into(api_tokens::table)
            .values((
                api_tokens::user_id.eq(user_id),
                api_tokens::name.eq(name),
                api_tokens::token_hash.eq(token_hash),
                api_tokens::created_at.eq(at),
            ))
            .returning(ApiToken::as_returning())
            .get_result(conn)
            .await?)
    })
}

/// The unexpired API token with this hash and its (enabled) owner; notes its use.
pub async fn api_token(
    db: &Db,
    token_hash: &str,
    at: UtcTime,
) -> StorageResult<Option<(ApiToken, StaffUser)>> {
    db_run!(db, |conn| {
        let found: Option<(ApiToken, StaffUser)> = api_tokens::table
            .inner_join(staff_users::table)
            .filter(api_tokens::token_hash.eq(token_hash))
            .filter(api_tokens::expires_at.is_null().or(api_tokens::expires_at.gt(at)))
            .filter(staff_users::disabled.eq(false))
            .select((ApiToken::as_select(), StaffUser::as_select()))
            .first(conn)
            .await
            .optional()?;
        if let Some((token, _)) = &found {
            diesel::update(api_tokens::table.find(token.id))
                .set(api_tokens::last_used_at.eq(at))
                .execute(conn)
                .await?;
        }
        Ok(found)
    })
}

pub async fn api_token_exists(db: &Db, token_hash: &str) -> StorageResult<bool> {
    db_run!(db, |conn| {
        let count: i64 = api_tokens::table
            .filter(api_tokens::token_hash.eq(token_hash))
            .count()
            .get_result(conn)
            .await?;
        Ok(count > 0)
    })
}

pub async fn list_api_tokens(db: &Db) -> StorageResult<Vec<ApiToken>> {
    db_run!(db, |conn| {
        Ok(api_tokens::table
            .select(ApiToken::as_select())
            .order(api_tokens::id)
            .load(conn)
            .await?)
    })
}

pub async fn delete_api_token(db: &Db, id: i64) -> StorageResult<()> {
    db_run!(db, |conn| {
        match diesel::delete(api_tokens::table.find(id)).execute(conn).await? {
            0 => Err(StorageError::NotFound),
            _ => Ok(()),
        }
    })
}
