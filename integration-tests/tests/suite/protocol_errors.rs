//! Malformed, unknown and oversized messages get a FATAL error with the right SQLSTATE (as Postgres
//! sends them), end only that session, and never disturb other clients.

use crate::harness::{Ctx, block_on, proxy_setting, tests};
use crate::rawclient::{Frames, RawClient, error_field};

tests![
    unknown_message_type_is_08p01,
    bad_length_is_08p01,
    oversized_message_is_54000,
    violation_mid_transaction_rolls_it_back,
];

/// Logs in through `proxy` as app.
async fn login(addr: std::net::SocketAddr) -> anyhow::Result<RawClient> {
    RawClient::connect(addr, "app", "secret", "app", &[]).await
}

/// Sends `bytes` and expects a FATAL ErrorResponse with `code`, then the connection closed.
async fn expect_fatal(client: &mut RawClient, bytes: &[u8], code: &str) -> anyhow::Result<String> {
    client.send(bytes).await?;
    let (tag, body) = client.read_message().await?;
    anyhow::ensure!(
        tag == b'E',
        "expected an ErrorResponse, got {:?}",
        tag as char
    );
    assert_eq!(error_field(&body, b'S').as_deref(), Some("FATAL"));
    assert_eq!(error_field(&body, b'C').as_deref(), Some(code));
    let closed = client.read_message().await;
    assert!(
        closed.is_err(),
        "the connection is closed after a FATAL error: {closed:?}"
    );
    Ok(error_field(&body, b'M').unwrap_or_default())
}

/// Another client of the same proxy still works.
async fn others_unaffected(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut other = login(addr).await?;
    let msgs = other.simple_query("SELECT 41 + 1").await?;
    let rows = crate::rawclient::with_tag(&msgs, b'D');
    assert_eq!(rows.len(), 1);
    assert_eq!(
        crate::rawclient::text_row(&rows[0])?,
        vec![Some("42".to_string())]
    );
    Ok(())
}

fn unknown_message_type_is_08p01(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let mut keep = login(proxy.addr()).await?;
        let mut client = login(proxy.addr()).await?;
        let message = expect_fatal(&mut client, b"x\0\0\0\x04", "08P01").await?;
        assert!(
            message.contains("invalid frontend message type"),
            "{message}"
        );
        // A client that was connected all along is not disturbed either.
        let msgs = keep.simple_query("SELECT 1").await?;
        assert_eq!(crate::rawclient::tags(&msgs), "TDCZ");
        others_unaffected(proxy.addr()).await
    })
}

fn bad_length_is_08p01(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let mut client = login(proxy.addr()).await?;
        let message = expect_fatal(&mut client, b"Q\0\0\0\x02", "08P01").await?;
        assert!(message.contains("invalid message length"), "{message}");
        others_unaffected(proxy.addr()).await
    })
}

fn oversized_message_is_54000(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = proxy_setting(&ctx.default_map()?, "max_message_size", "4096");
        let proxy = ctx.start_proxy(&map)?;
        let mut client = login(proxy.addr()).await?;
        // Only the header goes out: the proxy must refuse on the length alone, before the body.
        let message = expect_fatal(&mut client, b"Q\x00\x10\x00\x00", "54000").await?;
        assert!(message.contains("max_message_size"), "{message}");
        // A message under the limit is fine.
        let mut ok = login(proxy.addr()).await?;
        let sql = format!("SELECT length('{}')", "y".repeat(3000));
        let msgs = ok.simple_query(&sql).await?;
        let rows = crate::rawclient::with_tag(&msgs, b'D');
        assert_eq!(
            crate::rawclient::text_row(&rows[0])?,
            vec![Some("3000".to_string())]
        );
        others_unaffected(proxy.addr()).await
    })
}

/// A protocol violation inside a transaction ends the session and its transaction: the row it
/// inserted is never committed.
fn violation_mid_transaction_rolls_it_back(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let table = ctx.unique("proto_tx");
        let direct = ctx.direct_client().await?;
        direct
            .batch_execute(&format!("CREATE TABLE {table} (id int)"))
            .await?;
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let mut client = login(proxy.addr()).await?;
        client
            .send(
                &Frames::new()
                    .query(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
                    .finish(),
            )
            .await?;
        let msgs = client.read_until_ready().await?;
        assert_eq!(msgs.last().map(|m| m.1[0]), Some(b'T'), "in a transaction");
        expect_fatal(&mut client, b"\x01\0\0\0\x04", "08P01").await?;
        let n: i64 = direct
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        assert_eq!(n, 0);
        others_unaffected(proxy.addr()).await
    })
}
