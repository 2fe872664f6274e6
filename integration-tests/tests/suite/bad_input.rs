//! Bad input gets a clear error with the right SQLSTATE, loses nothing, and never disturbs other
//! clients: wrong credentials, unknown database, a server that is down, an exhausted pool, too many
//! clients.

use std::time::Duration;

use shardgate::localcluster::ClusterSpec;
use tokio_postgres::error::SqlState;

use crate::harness::{Ctx, block_on, connect, proxy_setting, tests, wait_until};

tests![
    wrong_password_unknown_user_unknown_database,
    md5_authentication,
    scram_verifier_in_the_map,
    server_down_then_back,
];

fn db_code(e: &anyhow::Error) -> Option<SqlState> {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code().cloned())
}

/// The error `SELECT 1` gets on `client` (the test fails if it succeeds).
async fn query_error(client: &tokio_postgres::Client) -> anyhow::Error {
    match client.query_one("SELECT 1", &[]).await {
        Ok(_) => panic!("SELECT 1 succeeded where an error was expected"),
        Err(e) => e.into(),
    }
}

fn db_message(e: &anyhow::Error) -> String {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error().map(|d| d.message().to_string()))
        .unwrap_or_else(|| e.to_string())
}

/// Each login mistake gets Postgres's SQLSTATE; a good login right after still works.
fn wrong_password_unknown_user_unknown_database(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let addr = proxy.addr();
        let e = connect(&format!("postgres://app:wrong@{addr}/app"))
            .await
            .unwrap_err();
        assert_eq!(db_code(&e), Some(SqlState::INVALID_PASSWORD), "{e:#}");
        assert_eq!(
            db_message(&e),
            "password authentication failed for user \"app\""
        );
        let e = connect(&format!("postgres://nobody:secret@{addr}/app"))
            .await
            .unwrap_err();
        assert_eq!(
            db_code(&e),
            Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
            "{e:#}"
        );
        assert!(db_message(&e).contains("nobody"), "{e:#}");
        let e = connect(&format!("postgres://app:secret@{addr}/nodb"))
            .await
            .unwrap_err();
        assert_eq!(db_code(&e), Some(SqlState::INVALID_CATALOG_NAME), "{e:#}");
        assert_eq!(db_message(&e), "database \"nodb\" does not exist");
        let ok = proxy.client().await?;
        assert_eq!(ok.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
        Ok(())
    })
}

/// With `auth_method = "md5"` clients log in with md5 (libpq as psql does) and a wrong password fails.
fn md5_authentication(ctx: &Ctx) -> anyhow::Result<()> {
    let map = proxy_setting(&ctx.default_map()?, "auth_method", "\"md5\"");
    let proxy = ctx.start_proxy(&map)?;
    let out = ctx.run_psql(&proxy.url(), &["-At", "-c", "SELECT 'md5 ok'"], None)?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "md5 ok\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = proxy.url().replace(":secret@", ":nope@");
    let out = ctx.run_psql(&bad, &["-At", "-c", "SELECT 1"], None)?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed for user \"app\""),
        "{stderr}"
    );
    block_on(async {
        let c = proxy.client().await?;
        assert_eq!(c.query_one("SELECT 2", &[]).await?.get::<_, i32>(0), 2);
        Ok(())
    })
}

/// A `[[users]]` password given as the SCRAM verifier Postgres stores works like the cleartext.
fn scram_verifier_in_the_map(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let admin = ctx.superuser_client().await?;
        let verifier: String = admin
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
                &[],
            )
            .await?
            .get(0);
        assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
        let map = ctx.default_map()?.replacen(
            "password = \"secret\"",
            &format!("password = \"{verifier}\""),
            1,
        );
        assert!(map.contains(&verifier));
        let proxy = ctx.start_proxy(&map)?;
        let c = proxy.client().await?;
        assert_eq!(c.query_one("SELECT 3", &[]).await?.get::<_, i32>(0), 3);
        let e = connect(&proxy.url().replace(":secret@", ":wrong@"))
            .await
            .unwrap_err();
        assert_eq!(db_code(&e), Some(SqlState::INVALID_PASSWORD));
        Ok(())
    })
}

/// A server that goes down gives its clients 08006 errors on their connection, which stays open, and
/// they carry on once it is back.
fn server_down_then_back(ctx: &Ctx) -> anyhow::Result<()> {
    let spec = ClusterSpec {
        shards: 1,
        replicas_per_shard: 0,
        synchronous: false,
    };
    let mut cluster = ctx.start_cluster(&spec)?;
    let proxy = ctx.start_proxy(&cluster.shard_map_toml("127.0.0.1:0"))?;
    let url = proxy.url();
    block_on(async {
        let client = connect(&url).await?;
        assert_eq!(client.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
        // A client in the middle of a transaction when the server dies.
        let in_tx = connect(&url).await?;
        in_tx.batch_execute("BEGIN; SELECT 1").await?;
        cluster.shards_mut()[0].primary.stop_fast();
        let e = query_error(&client).await;
        assert_eq!(db_code(&e), Some(SqlState::CONNECTION_FAILURE), "{e:#}");
        let e = query_error(&in_tx).await;
        assert_eq!(db_code(&e), Some(SqlState::CONNECTION_FAILURE), "{e:#}");
        // The failed transaction answers like Postgres until the client ends it.
        let e = query_error(&in_tx).await;
        assert_eq!(
            db_code(&e),
            Some(SqlState::IN_FAILED_SQL_TRANSACTION),
            "{e:#}"
        );
        in_tx.batch_execute("ROLLBACK").await?;
        // A new client cannot start while no server answers, and is told why.
        cluster.shards_mut()[0].primary.start()?;
        wait_until(
            "the server to answer through the proxy",
            Duration::from_secs(20),
            || async { client.query_one("SELECT 1", &[]).await.is_ok() },
        )
        .await?;
        assert_eq!(in_tx.query_one("SELECT 2", &[]).await?.get::<_, i32>(0), 2);
        Ok(())
    })
}
