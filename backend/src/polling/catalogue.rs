//! What can be polled: each platform's endpoints, declared as data (URL, items, pagination,
//! default schedule), so the poller is written once and adding an endpoint is one entry.
//! Request and response shapes follow each platform's public API reference.

use crate::storage::connections::Connection;

/// How the next page is found.
#[derive(Debug, Clone, Copy)]
pub enum Pagination {
    None,
    /// An absolute URL of the next page in a response field (Spotify `next`).
    NextUrl(&'static str),
    /// A token in a response field, sent back as a query parameter (Google `nextPageToken`).
    PageToken {
        field: &'static str,
        param: &'static str,
    },
    /// RFC 8288 `Link: <…>; rel="next"` (GitHub).
    LinkHeader,
    /// Pages of `limit` items, each starting after the previous page's last id (Discord).
    AfterLastId {
        param: &'static str,
        id: &'static str,
        limit: usize,
    },
    /// Pages numbered from 0 while a response flag says there are more (ThingsBoard).
    PageNumber {
        param: &'static str,
        has_next: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `X-Authorization: Bearer <token>` (ThingsBoard).
    XAuthorization,
}

/// A request made for each listed item, its answer attached to the item.
#[derive(Debug, Clone, Copy)]
pub struct PerItem {
    /// Path with `{id}` replaced by the item's id.
    pub path: &'static str,
    pub query: &'static [(&'static str, &'static str)],
    /// JSON pointer of the id inside an item.
    pub id: &'static str,
    /// The field the answer is stored under.
    pub field: &'static str,
    /// Items detailed per poll at most (the rest are stored as listed).
    pub max_items: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub platform: &'static str,
    pub name: &'static str,
    /// Six-field cron, UTC unless `scheduler.timezone` says otherwise.
    pub default_schedule: &'static str,
    /// The API's base URL; empty means the connection's own `base_url` (ThingsBoard).
    pub default_base: &'static str,
    /// Path, with `{login}` / `{customer_id}` filled from the connection.
    pub path: &'static str,
    /// Query parameters; the value `{now}` becomes the current time (RFC 3339).
    pub query: &'static [(&'static str, &'static str)],
    /// JSON pointer of the item array; empty when the body is the array.
    pub items: &'static str,
    pub pagination: Pagination,
    pub auth: Auth,
    pub per_item: Option<PerItem>,
}

const GOOGLE_PAGES: Pagination = Pagination::PageToken {
    field: "/nextPageToken",
    param: "pageToken",
};

pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        platform: "spotify",
        name: "recently_played",
        default_schedule: "0 */15 * * * *",
        default_base: "https://api.spotify.com",
        path: "/v1/me/player/recently-played",
        query: &[("limit", "50")],
        items: "/items",
        pagination: Pagination::NextUrl("/next"),
        auth: Auth::Bearer,
        per_item: None,
    },
    Endpoint {
        platform: "spotify",
        name: "top_tracks",
        default_schedule: "0 0 */6 * * *",
        default_base: "https://api.spotify.com",
        path: "/v1/me/top/tracks",
        query: &[("limit", "50")],
        items: "/items",
        pagination: Pagination::NextUrl("/next"),
        auth: Auth::Bearer,
        per_item: None,
    },
    Endpoint {
        platform: "google",
        name: "youtube_liked",
        default_schedule: "0 0 * * * *",
        default_base: "https://www.googleapis.com",
        path: "/youtube/v3/videos",
        query: &[("part", "snippet"), ("myRating", "like"), ("maxResults", "50")],
        items: "/items",
        pagination: GOOGLE_PAGES,
        auth: Auth::Bearer,
        per_item: None,
    },
    Endpoint {
        platform: "google",
        name: "gmail_messages",
        default_schedule: "0 */15 * * * *",
        default_base: "https://gmail.googleapis.com",
        path: "/gmail/v1/users/me/messages",
        query: &[("maxResults", "50")],
        items: "/messages",
        pagination: GOOGLE_PAGES,
        auth: Auth::Bearer,
        // The listing has ids only; the metadata (headers, labels, snippet) is one call each.
        per_item: Some(PerItem {
            path: "/gmail/v1/users/me/messages/{id}",
            query: &[("format", "metadata")],
            id: "/id",
            field: "metadata",
            max_items: 50,
        }),
    },
    Endpoint {
        platform: "google",
        name: "calendar_events",
        default_schedule: "0 */30 * * * *",
        default_base: "https://www.googleapis.com",
        path: "/calendar/v3/calendars/primary/events",
        query: &[
            ("timeMin", "{now}"),
            ("singleEvents", "true"),
            ("orderBy", "startTime"),
            ("maxResults", "250"),
        ],
        items: "/items",
        pagination: GOOGLE_PAGES,
        auth: Auth::Bearer,
        per_item: None,
    },
    Endpoint {
        platform: "github",
        name: "user_events",
        default_schedule: "0 */10 * * * *",
        default_base: "https://api.github.com",
        path: "/users/{login}/events",
        query: &[("per_page", "100")],
        items: "",
        pagination: Pagination::LinkHeader,
        auth: Auth::Bearer,
        per_item: None,
    },
    Endpoint {
        platform: "github",
        name: "repos",
        default_schedule: "0 0 * * * *",
        default_base: "https://api.github.com",
        path: "/user/repos",
        query: &[("per_page", "100")],
        items: "",
        pagination: Pagination::LinkHeader,
        auth: Auth::Bearer,
        per_item: None,
    },
    Endpoint {
        platform: "discord",
        name: "guilds",
        default_schedule: "0 0 * * * *",
        default_base: "https://discord.com",
        path: "/api/v10/users/@me/guilds",
        query: &[("limit", "200")],
        items: "",
        pagination: Pagination::AfterLastId {
            param: "after",
            id: "/id",
            limit: 200,
        },
        auth: Auth::Bearer,
        per_item: None,
    },
    Endpoint {
        platform: "thingsboard",
        name: "devices",
        default_schedule: "0 */5 * * * *",
        default_base: "",
        path: "/api/customer/{customer_id}/devices",
        query: &[("pageSize", "100")],
        items: "/data",
        pagination: Pagination::PageNumber {
            param: "page",
            has_next: "/hasNext",
        },
        auth: Auth::XAuthorization,
        per_item: Some(PerItem {
            path: "/api/plugins/telemetry/DEVICE/{id}/values/timeseries",
            query: &[],
            id: "/id/id",
            field: "latest_telemetry",
            max_items: 100,
        }),
    },
];

/// The platform a connection's data comes from: `settings.platform`, else the OAuth preset,
/// else the provider kind. `None` when nothing is pollable for it.
pub fn platform_of(connection: &Connection) -> Option<&'static str> {
    let settings = &connection.settings;
    let named = settings
        .get("platform")
        .or_else(|| settings.get("preset"))
        .and_then(|v| v.as_str())
        .unwrap_or(&connection.provider);
    ENDPOINTS.iter().find(|e| e.platform == named).map(|e| e.platform)
}

pub fn endpoints_of(platform: &str) -> impl Iterator<Item = &'static Endpoint> + '_ {
    ENDPOINTS.iter().filter(move |e| e.platform == platform)
}

pub fn find(platform: &str, name: &str) -> Option<&'static Endpoint> {
    ENDPOINTS
        .iter()
        .find(|e| e.platform == platform && e.name == name)
}

/// Whether `target` names a platform or a `platform/endpoint` (schedule overrides).
pub fn is_target(target: &str) -> bool {
    match target.split_once('/') {
        Some((platform, name)) => find(platform, name).is_some(),
        None => ENDPOINTS.iter().any(|e| e.platform == target),
    }
}
