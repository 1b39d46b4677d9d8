//! The one schema both backends share. Keep it in step with `migrations/{postgres,sqlite}`;
//! the storage tests run every query here against freshly migrated databases of both kinds.

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    webhook_sources (id) {
        id -> BigInt,
        name -> Text,
        webhook_uuid -> Nullable<Text>,
        secret -> Nullable<Binary>,
        period_secs -> BigInt,
        grace_secs -> BigInt,
        verified_at -> Nullable<UtcTimestamp>,
        last_event_at -> Nullable<UtcTimestamp>,
        last_system_notice -> Nullable<Text>,
        last_system_notice_at -> Nullable<UtcTimestamp>,
        created_at -> UtcTimestamp,
        updated_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    devices (id) {
        id -> BigInt,
        source_id -> Nullable<BigInt>,
        sn -> Text,
        dev_eui -> Nullable<Text>,
        mdp_device_id -> Nullable<Text>,
        name -> Nullable<Text>,
        model -> Nullable<Text>,
        status -> Text,
        last_seen_at -> Nullable<UtcTimestamp>,
        last_event_type -> Nullable<Text>,
        last_payload -> Nullable<Text>,
        battery -> Nullable<Integer>,
        expected_interval_secs -> Nullable<BigInt>,
        offline_after -> Nullable<UtcTimestamp>,
        created_at -> UtcTimestamp,
        updated_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    webhook_events (id) {
        id -> BigInt,
        source_id -> BigInt,
        event_id -> Text,
        event_type -> Text,
        device_id -> Nullable<BigInt>,
        event_time -> Nullable<UtcTimestamp>,
        received_at -> UtcTimestamp,
        payload -> Text,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    webhook_rejections (id) {
        id -> BigInt,
        source_name -> Nullable<Text>,
        reason -> Text,
        status -> Integer,
        remote_addr -> Nullable<Text>,
        headers -> Text,
        body_excerpt -> Text,
        body_size -> BigInt,
        received_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    accounts (id) {
        id -> BigInt,
        name -> Text,
        email -> Nullable<Text>,
        created_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    connections (id) {
        id -> BigInt,
        account_id -> BigInt,
        provider -> Text,
        name -> Text,
        base_url -> Nullable<Text>,
        settings -> Text,
        credentials -> Nullable<Binary>,
        access_token -> Nullable<Binary>,
        refresh_token -> Nullable<Binary>,
        token_fingerprint -> Nullable<Text>,
        expires_at -> Nullable<UtcTimestamp>,
        refresh_expires_at -> Nullable<UtcTimestamp>,
        status -> Text,
        consecutive_failures -> Integer,
        last_error -> Nullable<Text>,
        last_refresh_attempt_at -> Nullable<UtcTimestamp>,
        last_refresh_success_at -> Nullable<UtcTimestamp>,
        last_sync_at -> Nullable<UtcTimestamp>,
        next_refresh_at -> Nullable<UtcTimestamp>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<UtcTimestamp>,
        created_at -> UtcTimestamp,
        updated_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    refresh_log (id) {
        id -> BigInt,
        connection_id -> Nullable<BigInt>,
        provider -> Text,
        trigger -> Text,
        actor -> Nullable<Text>,
        dry_run -> Bool,
        success -> Bool,
        error -> Nullable<Text>,
        old_expires_at -> Nullable<UtcTimestamp>,
        new_expires_at -> Nullable<UtcTimestamp>,
        duration_ms -> BigInt,
        attempted_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    poll_endpoint_state (id) {
        id -> BigInt,
        connection_id -> BigInt,
        endpoint -> Text,
        enabled -> Bool,
        schedule -> Nullable<Text>,
        next_due_at -> Nullable<UtcTimestamp>,
        last_run_at -> Nullable<UtcTimestamp>,
        last_success_at -> Nullable<UtcTimestamp>,
        last_status -> Nullable<Text>,
        consecutive_failures -> Integer,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<UtcTimestamp>,
        last_error -> Nullable<Text>,
        last_items -> Nullable<BigInt>,
        last_pages -> Nullable<Integer>,
        last_http_status -> Nullable<Integer>,
        last_content_hash -> Nullable<Text>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    poll_runs (id) {
        id -> BigInt,
        connection_id -> BigInt,
        endpoint -> Text,
        trigger -> Text,
        success -> Bool,
        items -> BigInt,
        pages -> Integer,
        http_status -> Nullable<Integer>,
        error -> Nullable<Text>,
        duration_ms -> BigInt,
        started_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    platform_data (id) {
        id -> BigInt,
        connection_id -> BigInt,
        endpoint -> Text,
        item_count -> BigInt,
        content_hash -> Text,
        payload -> Text,
        fetched_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    alerts (id) {
        id -> BigInt,
        alert_key -> Text,
        rule -> Text,
        subject -> Text,
        severity -> Text,
        state -> Text,
        summary -> Text,
        details -> Text,
        occurrences -> BigInt,
        first_seen_at -> UtcTimestamp,
        last_seen_at -> UtcTimestamp,
        resolved_at -> Nullable<UtcTimestamp>,
        acknowledged_at -> Nullable<UtcTimestamp>,
        acknowledged_by -> Nullable<Text>,
        last_notified_at -> Nullable<UtcTimestamp>,
        notify_count -> Integer,
        updated_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    alert_events (id) {
        id -> BigInt,
        alert_id -> BigInt,
        kind -> Text,
        detail -> Nullable<Text>,
        at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    silences (id) {
        id -> BigInt,
        matcher -> Text,
        reason -> Text,
        created_by -> Nullable<Text>,
        starts_at -> UtcTimestamp,
        ends_at -> UtcTimestamp,
        created_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    outbox (id) {
        id -> BigInt,
        alert_id -> Nullable<BigInt>,
        kind -> Text,
        recipients -> Text,
        subject -> Text,
        body_text -> Text,
        body_html -> Text,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        next_attempt_at -> UtcTimestamp,
        sent_at -> Nullable<UtcTimestamp>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<UtcTimestamp>,
        created_at -> UtcTimestamp,
        channel -> Text,
        failed_at -> Nullable<UtcTimestamp>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    job_state (name) {
        name -> Text,
        enabled -> Bool,
        schedule -> Text,
        timezone -> Text,
        last_run_at -> Nullable<UtcTimestamp>,
        last_result -> Nullable<Text>,
        last_error -> Nullable<Text>,
        next_run_at -> Nullable<UtcTimestamp>,
        updated_at -> UtcTimestamp,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<UtcTimestamp>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    staff_users (id) {
        id -> BigInt,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        disabled -> Bool,
        last_login_at -> Nullable<UtcTimestamp>,
        created_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    api_tokens (id) {
        id -> BigInt,
        user_id -> BigInt,
        name -> Text,
        token_hash -> Text,
        last_used_at -> Nullable<UtcTimestamp>,
        expires_at -> Nullable<UtcTimestamp>,
        created_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    staff_sessions (id) {
        id -> BigInt,
        token_hash -> Text,
        user_id -> BigInt,
        csrf_token -> Text,
        created_at -> UtcTimestamp,
        expires_at -> UtcTimestamp,
        last_seen_at -> UtcTimestamp,
    }
}

diesel::table! {
    api_usage (provider, day) {
        provider -> Text,
        day -> Text,
        requests -> BigInt,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    app_settings (key) {
        key -> Text,
        value -> Text,
        updated_at -> UtcTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    consent_callbacks (state_hash) {
        state_hash -> Text,
        connection_id -> BigInt,
        used_at -> UtcTimestamp,
        succeeded -> Nullable<Bool>,
        message -> Nullable<Text>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    audit_log (id) {
        id -> BigInt,
        at -> UtcTimestamp,
        actor -> Text,
        client -> Nullable<Text>,
        action -> Text,
        target -> Nullable<Text>,
        route -> Text,
        status -> Integer,
        details -> Nullable<Text>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::storage::fields::UtcTimestamp;

    password_resets (token_hash) {
        token_hash -> Text,
        user_id -> BigInt,
        created_at -> UtcTimestamp,
        expires_at -> UtcTimestamp,
    }
}

diesel::joinable!(devices -> webhook_sources (source_id));
diesel::joinable!(webhook_events -> webhook_sources (source_id));
diesel::joinable!(webhook_events -> devices (device_id));
diesel::joinable!(connections -> accounts (account_id));
diesel::joinable!(refresh_log -> connections (connection_id));
diesel::joinable!(poll_endpoint_state -> connections (connection_id));
diesel::joinable!(poll_runs -> connections (connection_id));
diesel::joinable!(platform_data -> connections (connection_id));
diesel::joinable!(alert_events -> alerts (alert_id));
diesel::joinable!(outbox -> alerts (alert_id));
diesel::joinable!(api_tokens -> staff_users (user_id));
diesel::joinable!(staff_sessions -> staff_users (user_id));
diesel::joinable!(password_resets -> staff_users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    webhook_sources,
    devices,
    webhook_events,
    webhook_rejections,
    accounts,
    connections,
    refresh_log,
    poll_endpoint_state,
    poll_runs,
    platform_data,
    alerts,
    alert_events,
    silences,
    outbox,
    job_state,
    staff_users,
    api_tokens,
    staff_sessions,
    api_usage,
    app_settings,
    consent_callbacks,
    audit_log,
    password_resets,
);
