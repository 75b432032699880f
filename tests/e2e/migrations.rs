//! Schema migrations (versioned `.sql` files run by refinery): an applied
//! migration edited afterwards stops start-up with a message naming it;
//! replicas starting together apply each migration once; a database migrated
//! by the earlier hand-rolled runner is adopted and keeps working.

use cpis_runtime::db::DbPool;
use cpis_runtime::migrate::{Migration, Migrations, Runner};
use cpis_testkit::*;
use std::time::Duration;

fn pool(url: &str) -> DbPool {
    cpis_runtime::db::pool(url, 4).expect("pool")
}

/// `cpis migrate SERVICE` against `url`, as a Kubernetes init step runs it.
fn cpis_migrate(service: &str, url: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cpis"))
        .args(["migrate", service])
        .env_remove("DATABASE_URL_FILE")
        .env("DATABASE_URL", url)
        .output()
        .expect("running cpis")
}

/// The Registry's migrations with `V2__retention` edited after the fact.
fn registry_with_edited_retention() -> Runner {
    let mut edited: Vec<Migration> = (cpis_registry::MIGRATIONS.runner)().get_migrations().clone();
    let v2 = edited.iter_mut().find(|m| m.version() == 2).expect("V2 exists");
    let sql =
        format!("{}\nCREATE INDEX purges_by_time ON registry.purges (purged_at);\n", v2.sql().unwrap_or_default());
    *v2 = Migration::unapplied("V2__retention", &sql).expect("a migration name");
    Runner::new(&edited)
}

#[tokio::test]
async fn an_edited_applied_migration_stops_start_up_naming_it() {
    let url = fresh_database().await;
    cpis_registry::MIGRATIONS.run(&pool(&url)).await.expect("first start-up migrates");

    // The file edited after it was applied: start-up refuses, naming it, and applies nothing.
    let edited = Migrations { runner: registry_with_edited_retention, ..cpis_registry::MIGRATIONS };
    let err = format!("{:#}", edited.run(&pool(&url)).await.expect_err("an edited migration must stop start-up"));
    assert!(err.contains("V2__retention") && err.contains("changed after it was applied"), "{err}");
    let db = cpis_runtime::db::connect(&url).await.unwrap();
    let index: Option<String> =
        db.query_one("SELECT to_regclass('registry.purges_by_time')::text", &[]).await.unwrap().get(0);
    assert_eq!(index, None, "nothing of the edited migration is applied");

    // The history edited in the database: the service's start-up and `cpis migrate` both refuse.
    db.execute("UPDATE registry.schema_migrations SET checksum = '12345' WHERE version = 3", &[]).await.unwrap();
    let err = cpis_registry::Registry::new(cpis_registry::Settings::default(), pool(&url))
        .await
        .map(|_| ())
        .expect_err("the Registry must not start");
    let err = format!("{err:#}");
    assert!(err.contains("V3__sync_uploads") && err.contains("registry.schema_migrations"), "{err}");
    let out = cpis_migrate("registry", &url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("V3__sync_uploads"), "{stderr}");

    // Put right, the same database starts again.
    let frozen = cpis_registry::MIGRATIONS.frozen.iter().find(|f| f.version == 3).expect("V3 frozen");
    db.execute(
        "UPDATE registry.schema_migrations SET checksum = $1 WHERE version = 3",
        &[&frozen.checksum.to_string()],
    )
    .await
    .unwrap();
    let out = cpis_migrate("registry", &url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn replicas_starting_together_apply_each_migration_once() {
    let url = fresh_database().await;
    // Four replicas of each service start at once on an empty database.
    let mut starts = Vec::new();
    for _ in 0..4 {
        for m in [cpis_registry::MIGRATIONS, cpis_attendance::MIGRATIONS, cpis_notification::MIGRATIONS] {
            let url = url.clone();
            starts.push(tokio::spawn(async move { m.run(&pool(&url)).await.map_err(|e| format!("{e:#}")) }));
        }
    }
    for start in starts {
        start.await.unwrap().expect("every replica starts");
    }
    let db = cpis_runtime::db::connect(&url).await.unwrap();
    for m in [cpis_registry::MIGRATIONS, cpis_attendance::MIGRATIONS, cpis_notification::MIGRATIONS] {
        let files = (m.runner)().get_migrations().len() as i64;
        let row = db
            .query_one(&format!("SELECT count(*), count(DISTINCT version) FROM {}.schema_migrations", m.schema), &[])
            .await
            .unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (files, files), "{}", m.schema);
    }

    // A replica waits while another holds the schema's migration lock.
    let fresh = fresh_database().await;
    let holder = cpis_runtime::db::connect(&fresh).await.unwrap();
    holder.execute("SELECT pg_advisory_lock(hashtext('cpis-migrate-attendance'))", &[]).await.unwrap();
    let waiting = {
        let fresh = fresh.clone();
        tokio::spawn(async move { cpis_attendance::MIGRATIONS.run(&pool(&fresh)).await.map_err(|e| format!("{e:#}")) })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "a second replica must wait for the first one's migrations");
    let table: Option<String> =
        holder.query_one("SELECT to_regclass('attendance.schema_migrations')::text", &[]).await.unwrap().get(0);
    assert_eq!(table, None);
    holder.execute("SELECT pg_advisory_unlock(hashtext('cpis-migrate-attendance'))", &[]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), waiting).await.expect("it goes on once released").unwrap().unwrap();
}

#[tokio::test]
async fn a_database_migrated_by_the_earlier_runner_is_adopted() {
    let url = fresh_database().await;
    let db = cpis_runtime::db::connect(&url).await.unwrap();
    // What the earlier runner left: its own history table (no checksums) and
    // the first two migrations of the attendance schema applied.
    db.batch_execute(
        "CREATE SCHEMA attendance;
         CREATE TABLE attendance.schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await
    .unwrap();
    let runner = (cpis_attendance::MIGRATIONS.runner)();
    let mut migrations = runner.get_migrations().to_vec();
    migrations.sort_by_key(|m| m.version());
    for (m, old_name) in
        migrations.iter().zip(["episodes, accesses, check-in requests, outbox", "trace context of outbox rows"])
    {
        db.batch_execute(m.sql().unwrap()).await.unwrap();
        db.execute(
            "INSERT INTO attendance.schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version(), &old_name],
        )
        .await
        .unwrap();
    }
    db.execute(
        "INSERT INTO attendance.episodes (episode_id, nhs_number, setting_code, setting_type, arrived_at)
         VALUES (gen_random_uuid(), $1, $2, 1, now())",
        &[&nhs(1), &ALDER_HEY],
    )
    .await
    .unwrap();

    let out = cpis_migrate("attendance", &url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = db
        .query("SELECT version, name, checksum FROM attendance.schema_migrations ORDER BY version", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), migrations.len(), "the remaining migrations are applied");
    for (row, m) in rows.iter().zip(&migrations) {
        assert_eq!(row.get::<_, i32>(0), m.version());
        assert_eq!(row.get::<_, String>(1), m.name());
        assert_eq!(row.get::<_, String>(2), m.checksum().to_string(), "{m}");
    }
    let kept: i64 = db.query_one("SELECT count(*) FROM attendance.episodes", &[]).await.unwrap().get(0);
    assert_eq!(kept, 1, "the data is untouched");
    let again = cpis_migrate("attendance", &url);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));

    // A version the earlier runner applied that this build does not know is refused.
    let other = fresh_database().await;
    let db = cpis_runtime::db::connect(&other).await.unwrap();
    db.batch_execute(
        "CREATE SCHEMA notification;
         CREATE TABLE notification.schema_migrations (
             version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO notification.schema_migrations (version, name) VALUES (99, 'from the future');",
    )
    .await
    .unwrap();
    let out = cpis_migrate("notification", &other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("migration 99"), "{stderr}");
}
