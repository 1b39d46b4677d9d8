//! The schema cannot drift unseen, on either backend: `storage/schema.rs` matches the migrated
//! database table by table and column by column (type and nullability); every migration runs
//! up, down and up again and leaves exactly the schema it left the first time; every foreign
//! key has an index that starts with its column (or deleting a parent scans the child table).

use std::collections::BTreeMap;

use diesel::QueryableByName;
use diesel::sql_types::{Integer, Text};
use diesel_async::RunQueryDsl;
use telltale::db_run;
use telltale::storage::{DatabaseTarget, Db, StorageResult, migrate};
use telltale_e2e::{Backend, TestDb, both_backends};

both_backends!(
    schema_rs_matches_the_database_column_by_column,
    every_migration_runs_up_down_and_up_again,
    every_foreign_key_has_an_index,
);

#[derive(QueryableByName, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Column {
    #[diesel(sql_type = Text)]
    tbl: String,
    #[diesel(sql_type = Text)]
    col: String,
    #[diesel(sql_type = Text)]
    ty: String,
    #[diesel(sql_type = Integer)]
    nullable: i32,
}

#[derive(QueryableByName, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Named {
    #[diesel(sql_type = Text)]
    tbl: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    definition: String,
}

const MIGRATIONS_TABLE: &str = "__diesel_schema_migrations";

async fn columns(db: &Db, backend: Backend) -> Vec<Column> {
    let sql = match backend {
        Backend::Postgres => format!(
            "SELECT table_name::text AS tbl, column_name::text AS col, data_type::text AS ty, \
             CASE WHEN is_nullable = 'YES' THEN 1 ELSE 0 END AS nullable \
             FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> '{MIGRATIONS_TABLE}' \
             ORDER BY table_name, ordinal_position"
        ),
        // A column that is the INTEGER PRIMARY KEY is the rowid: never NULL, whatever it says.
        Backend::Sqlite => format!(
            "SELECT m.name AS tbl, p.name AS col, p.type AS ty, \
             CASE WHEN p.\"notnull\" = 0 AND p.pk = 0 THEN 1 ELSE 0 END AS nullable \
             FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '{MIGRATIONS_TABLE}' \
             ORDER BY m.name, p.cid"
        ),
    };
    let result: StorageResult<Vec<Column>> =
        async { db_run!(db, |conn| Ok(diesel::sql_query(sql).load(conn).await?)) }.await;
    result.unwrap()
}

/// Everything a migration can create besides columns: indexes, constraints, triggers, views.
async fn objects(db: &Db, backend: Backend) -> Vec<Named> {
    let sql = match backend {
        Backend::Postgres => "SELECT tablename::text AS tbl, indexname::text AS name, indexdef AS definition \
             FROM pg_indexes WHERE schemaname = 'public' \
             UNION ALL SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) \
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace \
             UNION ALL SELECT c.relname::text, c.relname::text, \
             c.relkind::text || ' ' || COALESCE(array_to_string(c.reloptions, ','), '') \
             FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'S') \
             ORDER BY 1, 2"
            .to_owned(),
        Backend::Sqlite => "SELECT tbl_name AS tbl, name, COALESCE(sql, '') AS definition FROM sqlite_master \
             WHERE name NOT LIKE 'sqlite_%' ORDER BY tbl_name, name"
            .to_owned(),
    };
    let result: StorageResult<Vec<Named>> =
        async { db_run!(db, |conn| Ok(diesel::sql_query(sql).load(conn).await?)) }.await;
    let mut found: Vec<Named> = result
        .unwrap()
        .into_iter()
        .filter(|o| !o.tbl.contains(MIGRATIONS_TABLE))
        .collect();
    // A primary key's constraint and its index share a name: order fully, not just by name.
    found.sort();
    found
}

/// `schema.rs`'s tables and columns, read from its `table!` blocks.
fn schema_rs() -> BTreeMap<String, Vec<(String, String)>> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../backend/src/storage/schema.rs"
    ))
    .unwrap();
    let mut tables = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some((name, _)) = line.split_once(" (")
            && line.ends_with('{')
            && !name.contains(' ')
        {
            current = Some(name.to_owned());
            tables.insert(name.to_owned(), Vec::new());
        } else if line == "}" {
            current = None;
        } else if let (Some(table), Some((column, ty))) = (&current, line.split_once(" -> ")) {
            let entry: &mut Vec<(String, String)> = tables.get_mut(table).unwrap();
            entry.push((column.to_owned(), ty.trim_end_matches(',').to_owned()));
        }
    }
    assert!(tables.len() > 10, "could not read schema.rs: {tables:?}");
    tables
}

/// Whether the database's type is the one the diesel type is stored as on this backend.
fn type_matches(backend: Backend, diesel_type: &str, database_type: &str) -> bool {
    let db = database_type.to_ascii_lowercase();
    match (backend, diesel_type) {
        (Backend::Postgres, "BigInt") => db == "bigint",
        (Backend::Postgres, "Integer") => db == "integer",
        (Backend::Postgres, "Text") => db == "text",
        (Backend::Postgres, "Binary") => db == "bytea",
        (Backend::Postgres, "Bool") => db == "boolean",
        (Backend::Postgres, "UtcTimestamp") => db == "timestamp with time zone",
        (Backend::Sqlite, "BigInt" | "Integer") => db.contains("int"),
        // Fixed-width UTC text (see storage/fields.rs), so text order is time order.
        (Backend::Sqlite, "Text" | "UtcTimestamp") => db == "text",
        (Backend::Sqlite, "Binary") => db == "blob",
        (Backend::Sqlite, "Bool") => db == "boolean",
        _ => false,
    }
}

async fn schema_rs_matches_the_database_column_by_column(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let mut in_database: BTreeMap<String, Vec<Column>> = BTreeMap::new();
    for column in columns(&db, backend).await {
        in_database.entry(column.tbl.clone()).or_default().push(column);
    }
    let declared = schema_rs();
    assert_eq!(
        declared.keys().collect::<Vec<_>>(),
        in_database.keys().collect::<Vec<_>>(),
        "the tables in schema.rs and in the migrated database differ"
    );
    let mut problems = Vec::new();
    for (table, columns) in &declared {
        let actual = &in_database[table];
        let names = |c: &[(String, String)]| c.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let mut declared_names = names(columns);
        let mut actual_names: Vec<String> = actual.iter().map(|c| c.col.clone()).collect();
        declared_names.sort();
        actual_names.sort();
        if declared_names != actual_names {
            problems.push(format!(
                "{table}: columns {declared_names:?} in schema.rs, {actual_names:?} in the database"
            ));
            continue;
        }
        for (name, ty) in columns {
            let Some(column) = actual.iter().find(|c| &c.col == name) else {
                continue;
            };
            let (nullable, inner) = match ty.strip_prefix("Nullable<").and_then(|t| t.strip_suffix('>')) {
                Some(inner) => (true, inner),
                None => (false, ty.as_str()),
            };
            if nullable != (column.nullable == 1) {
                problems.push(format!(
                    "{table}.{name}: {} in schema.rs, {} in the database",
                    if nullable { "nullable" } else { "NOT NULL" },
                    if column.nullable == 1 {
                        "nullable"
                    } else {
                        "NOT NULL"
                    }
                ));
            }
            if !type_matches(backend, inner, &column.ty) {
                problems.push(format!(
                    "{table}.{name}: {inner} in schema.rs, {} in the database",
                    column.ty
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "schema.rs has drifted:\n{}",
        problems.join("\n")
    );
}

type Snapshot = (Vec<Column>, Vec<Named>);

/// What one snapshot has that the other lacks, both ways.
fn differences(expected: &Snapshot, actual: &Snapshot) -> String {
    let only = |a: &Snapshot, b: &Snapshot| -> Vec<String> {
        let mut out: Vec<String> =
            a.0.iter()
                .filter(|c| !b.0.contains(c))
                .map(|c| format!("{c:?}"))
                .collect();
        out.extend(a.1.iter().filter(|o| !b.1.contains(o)).map(|o| format!("{o:?}")));
        out
    };
    format!(
        "expected but missing {:?}; unexpected {:?}",
        only(expected, actual),
        only(actual, expected)
    )
}

async fn every_migration_runs_up_down_and_up_again(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let target = DatabaseTarget::parse(test_db.url()).unwrap();
    let db = test_db.open().await;
    let snapshot = async |db: &Db| (columns(db, backend).await, objects(db, backend).await);
    let empty = snapshot(&db).await;
    let mut before = empty.clone();
    let mut versions = Vec::new();
    while let Some(version) = migrate::apply_next(&target).await.unwrap() {
        // Some migrations only move data, so the schema may stay as it was.
        let after_up = snapshot(&db).await;
        assert_eq!(migrate::revert_last(&target).await.unwrap(), version);
        let after_down = snapshot(&db).await;
        assert!(
            after_down == before,
            "{version}: down.sql does not undo up.sql exactly: {}",
            differences(&before, &after_down)
        );
        assert_eq!(
            migrate::apply_next(&target).await.unwrap().as_deref(),
            Some(version.as_str())
        );
        let again = snapshot(&db).await;
        assert!(
            again == after_up,
            "{version}: up.sql gives another schema the second time: {}",
            differences(&after_up, &again)
        );
        before = after_up;
        versions.push(version);
    }
    assert!(versions.len() >= 8, "{versions:?}");
    // And all the way down: nothing of ours is left.
    for version in versions.iter().rev() {
        assert_eq!(&migrate::revert_last(&target).await.unwrap(), version);
    }
    let left = snapshot(&db).await;
    assert!(
        left == empty,
        "reverting every migration leaves something behind: {}",
        differences(&empty, &left)
    );
}

async fn every_foreign_key_has_an_index(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let sql = match backend {
        Backend::Postgres => {
            "SELECT c.conrelid::regclass::text AS tbl, a.attname::text AS name, \
             pg_get_constraintdef(c.oid) AS definition \
             FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
             WHERE c.contype = 'f' AND NOT EXISTS (SELECT 1 FROM pg_index i \
             WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1])"
        }
        Backend::Sqlite => {
            "SELECT m.name AS tbl, f.\"from\" AS name, f.\"table\" AS definition \
             FROM sqlite_master m JOIN pragma_foreign_key_list(m.name) f \
             WHERE m.type = 'table' AND NOT EXISTS (SELECT 1 FROM pragma_index_list(m.name) il \
             JOIN pragma_index_info(il.name) ii WHERE ii.seqno = 0 AND ii.name = f.\"from\") \
             AND NOT EXISTS (SELECT 1 FROM pragma_table_info(m.name) p WHERE p.name = f.\"from\" AND p.pk = 1)"
        }
    };
    let count_sql = match backend {
        Backend::Postgres => {
            "SELECT 'all' AS tbl, count(*)::text AS name, '' AS definition FROM pg_constraint WHERE contype = 'f'"
        }
        Backend::Sqlite => {
            "SELECT 'all' AS tbl, CAST(count(*) AS TEXT) AS name, '' AS definition \
             FROM sqlite_master m JOIN pragma_foreign_key_list(m.name) f WHERE m.type = 'table'"
        }
    };
    let result: StorageResult<(Vec<Named>, Vec<Named>)> = async {
        db_run!(&db, |conn| {
            let unindexed = diesel::sql_query(sql).load(conn).await?;
            let all = diesel::sql_query(count_sql).load(conn).await?;
            Ok((unindexed, all))
        })
    }
    .await;
    let (unindexed, all) = result.unwrap();
    assert!(
        all[0].name.parse::<u32>().unwrap() > 5,
        "the query finds the foreign keys: {all:?}"
    );
    let missing: Vec<String> = unindexed
        .iter()
        .map(|f| format!("{}.{} ({})", f.tbl, f.name, f.definition))
        .collect();
    assert!(
        missing.is_empty(),
        "foreign keys without an index on their column: {missing:?}"
    );
}
