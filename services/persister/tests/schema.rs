//! Which databases the persister migrates: a new one gets the baseline; one
//! made by the pre-release migrations (0001_metrics … 0010, folded into the
//! baseline before the first release), as a developer's `just up` left it,
//! is refused with an error that says what to do, before anything runs, and
//! the persister stops on it instead of retrying. On a real PostgreSQL.

mod common;

use std::time::Duration;

use common::*;
use sqlx::PgPool;
use sysmonstm_persister::store::SchemaError;
use sysmonstm_persister::{Storage, migrate_with};
use sysmonstm_testkit::{NatsServer, TestDb};

/// The rows sqlx recorded for the pre-release migrations: version,
/// description (from the file name) and checksum (SHA-384 of the file).
const PRE_RELEASE: [(i64, &str, &str); 10] = [
    (
        1,
        "metrics",
        "19bdc0b46e75033c980bcdfd43ced22404c76d09482c1f19fcb577bb4f0857bc9d18ac17ba65011845fe0d53fb389260",
    ),
    (
        2,
        "full schema",
        "355647c273535e09dd2a9779666802dd3259fc965f2e341bb3c8c57b2d3a623fe746264c6bee05b900e7046115a1c732",
    ),
    (
        3,
        "detail arrays",
        "0c319c262b86d51b3b46c6826d0d03187943114d4336c704abdf8061850a5347ad29cc12f13b03df476d9f6c8d3013da",
    ),
    (
        4,
        "rollup 5m",
        "4b4f07f5f07fd7269013f3c7969db078204dd95f7db22388ab98d713aa2e401d93aeed897c342b9e2108535394b37ea2",
    ),
    (
        5,
        "history same width",
        "a315bb2c641fbbdbe87f0f03bdcd825a2fd78fcd84ba4bdd7bc00be5e87035de830c71105dff347eaa16b4acc338eedd",
    ),
    (
        6,
        "ts brin",
        "39a3e3366286db7653ae5b1bdcec90161327dd5c5dd35d1463380b888c3606b4cc1a87717cf645bd035a9cd4f70aca96",
    ),
    (
        7,
        "rollup fillfactor",
        "47b6c21c38f8e0ac6d5ac301c9f3c53983a344bc1867270185ac5dfc3ddf550988e85d4a74958de348bd132842226af8",
    ),
    (
        8,
        "rollup settle",
        "c79f17fab3f7c186302621af83c927ae85b7e801cfd312926237b328b461eb942aa749fe6afe5eeab4c40e82f9d917ef",
    ),
    (
        9,
        "detail json",
        "e23bab02096bb64c8c57c5b158c76af650ed066f5441a51451751cbb9e4a5ba65ddce80adc072ac760e94b17b18249e7",
    ),
    (
        10,
        "rollup 1m settled",
        "ad36d70f4298613a53e77b94bf59bb277dfac77c91df534e715b672a003734cc91db87025c5a13ad057d629edd07b1d2",
    ),
];

/// A database as the pre-release migrations left it, in the parts that
/// matter here: sqlx's record of them, and `metrics` with one of the array
/// columns the baseline dropped, holding a row.
async fn pre_release_db() -> (TestDb, PgPool) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    // sqlx's own table, as sqlx 0.8 creates it.
    sqlx::query(
        "CREATE TABLE _sqlx_migrations (
             version BIGINT PRIMARY KEY,
             description TEXT NOT NULL,
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
             success BOOLEAN NOT NULL,
             checksum BYTEA NOT NULL,
             execution_time BIGINT NOT NULL
         )",
    )
    .execute(&pool)
    .await
    .expect("_sqlx_migrations");
    for (version, description, checksum) in PRE_RELEASE {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES ($1, $2, true, decode($3, 'hex'), 1000000)",
        )
        .bind(version)
        .bind(description)
        .bind(checksum)
        .execute(&pool)
        .await
        .expect("migration row");
    }
    for sql in [
        "CREATE TABLE sysmon_storage (only_row boolean PRIMARY KEY DEFAULT true, mode text NOT NULL)",
        "INSERT INTO sysmon_storage (mode) VALUES ('plain')",
        "CREATE TABLE metrics (machine_id text NOT NULL, ts timestamptz NOT NULL, seq bigint NOT NULL,
                               fs_mount text[], detail text, PRIMARY KEY (machine_id, ts))",
        "INSERT INTO metrics VALUES ('old', now(), 1, ARRAY['/'], NULL)",
    ] {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    (db, pool)
}

/// What a refused database must still hold: everything as it was.
async fn unchanged(pool: &PgPool) {
    let record: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT version, description, encode(checksum, 'hex') FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .expect("record");
    let want: Vec<(i64, String, String)> = PRE_RELEASE
        .iter()
        .map(|(v, d, c)| (*v, (*d).to_owned(), (*c).to_owned()))
        .collect();
    assert_eq!(record, want, "the migration record is as it was");
    let (rows, baseline): (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM metrics WHERE fs_mount = ARRAY['/']),
                to_regclass('sysmon_metric') IS NOT NULL OR to_regclass('metrics_fs') IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .expect("state");
    assert_eq!((rows, baseline), (1, false), "no part of the baseline ran");
}

#[tokio::test]
async fn a_pre_release_database_is_refused_with_what_to_do_and_left_as_it_was() {
    let (db, pool) = pre_release_db().await;
    let name: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&pool)
        .await
        .expect("name");
    for storage in [Storage::Auto, Storage::Plain] {
        let err = migrate_with(&pool, storage)
            .await
            .expect_err("a pre-release database is refused");
        assert!(
            matches!(&err, SchemaError::PreRelease(n) if *n == name),
            "{err:?}"
        );
        assert!(err.is_permanent());
        let text = err.to_string();
        for part in [
            "pre-release schema",
            "migrations 1..10",
            &format!("DROP DATABASE {name}"),
            "DATABASE_URL",
        ] {
            assert!(text.contains(part), "{part:?} missing in: {text}");
        }
        unchanged(&pool).await;
    }

    // The persister stops on it with that error instead of retrying.
    let nats = NatsServer::start();
    let persister = spawn(config(&nats.url(), db.url()));
    let ended = tokio::time::timeout(WAIT, persister.task)
        .await
        .expect("the persister stops instead of retrying")
        .expect("task not panicked");
    let err = ended.expect_err("run ends with an error");
    assert!(format!("{err:#}").contains("pre-release schema"), "{err:#}");
    unchanged(&pool).await;
}

#[tokio::test]
async fn persister_tables_without_a_migration_record_are_refused() {
    let (_db, pool) = pre_release_db().await;
    sqlx::query("DROP TABLE _sqlx_migrations")
        .execute(&pool)
        .await
        .expect("drop record");
    let err = migrate_with(&pool, Storage::Plain)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, SchemaError::Unrecorded(_)) && err.is_permanent(),
        "{err:?}"
    );
    let baseline: bool = sqlx::query_scalar(
        "SELECT to_regclass('sysmon_metric') IS NOT NULL OR to_regclass('_sqlx_migrations') IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .expect("state");
    assert!(!baseline, "nothing ran");
}

/// A database the baseline made migrates again without a change, and a new
/// one gets exactly one recorded migration.
#[tokio::test]
async fn the_baseline_is_one_migration_and_runs_once() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(60), migrate_with(&pool, Storage::Plain))
            .await
            .expect("in time")
            .expect("migrates");
    }
    let record: Vec<(i64, String, bool)> =
        sqlx::query_as("SELECT version, description, success FROM _sqlx_migrations")
            .fetch_all(&pool)
            .await
            .expect("record");
    assert_eq!(record, vec![(1, "baseline".to_owned(), true)]);
    // The detail is one JSON text column; none of the pre-release arrays.
    let arrays: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = 'metrics'::regclass AND attnum > 0 AND NOT attisdropped
           AND format_type(atttypid, atttypmod) LIKE '%[]' ORDER BY attnum",
    )
    .fetch_all(&pool)
    .await
    .expect("columns");
    assert_eq!(arrays, ["cpu_per_core"]);
}

/// A database an earlier version of the baseline made (the baseline is
/// edited in place before the first release, so its recorded checksum
/// differs) is refused with what to do, unchanged, and the persister stops
/// on it instead of retrying for ever.
#[tokio::test]
async fn a_database_of_an_earlier_baseline_is_refused_with_what_to_do() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    migrate_with(&pool, Storage::Plain).await.expect("migrates");
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 1")
        .execute(&pool)
        .await
        .expect("an earlier checksum");
    let err = migrate_with(&pool, Storage::Plain)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, SchemaError::EarlierBaseline(_)) && err.is_permanent(),
        "{err:?}"
    );
    assert!(err.to_string().contains("DROP DATABASE"), "{err}");
    let checksum: String = sqlx::query_scalar(
        "SELECT encode(checksum, 'hex') FROM _sqlx_migrations WHERE version = 1",
    )
    .fetch_one(&pool)
    .await
    .expect("record");
    assert_eq!(checksum, "00", "the record is as it was");

    let nats = NatsServer::start();
    let persister = spawn(config(&nats.url(), db.url()));
    let ended = tokio::time::timeout(WAIT, persister.task)
        .await
        .expect("the persister stops instead of retrying")
        .expect("task not panicked");
    let err = ended.expect_err("run ends with an error");
    assert!(
        format!("{err:#}").contains("earlier pre-release version"),
        "{err:#}"
    );
}
