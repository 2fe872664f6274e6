//! COPY in both protocols and through psql, and psql's own output, the same through shardgate as
//! straight from the primary.

use anyhow::{Context, ensure};
use bytes::Bytes;
use futures::{SinkExt, TryStreamExt, pin_mut};

use crate::harness::{Ctx, ProxyUnderTest, block_on, tests};
use crate::rawclient::{self, Frames, command_tag, ensure_same, tags, with_tag};
use crate::wire::{DropTables, RemoveFiles, byte_diff, direct_raw, direct_url, proxied_raw};

tests![
    copy_round_trip_5000_rows,
    sync_during_copy_in_is_ignored,
    psql_multi_statement_and_errors,
];

/// 5,000 rows of COPY text with escapes, NULLs and non-ASCII.
fn copy_rows(n: i32) -> String {
    let mut out = String::new();
    for i in 1..=n {
        let line = match i % 4 {
            0 => format!("{i}\t\\N\n"),
            1 => format!("{i}\tplain row {i}\n"),
            2 => format!("{i}\twith\\ttab and \\\\ backslash é {i}\n"),
            _ => format!("{i}\tline\\nbreak ✓ {i}\n"),
        };
        out.push_str(&line);
    }
    out
}

/// COPY FROM STDIN and TO STDOUT through the proxy, with tokio-postgres and with psql's \copy: what
/// comes out is byte for byte what went in. Both halves run; a failure names each that failed.
fn copy_round_trip_5000_rows(ctx: &Ctx) -> anyhow::Result<()> {
    let t1 = ctx.unique("wire_copy");
    let t2 = ctx.unique("wire_copy_psql");
    let _cleanup = DropTables {
        primary: ctx.primary()?,
        tables: vec![t1.clone(), t2.clone()],
    };
    block_on(async {
        let sql = format!(
            "CREATE TABLE {t1} (id int PRIMARY KEY, v text); CREATE TABLE {t2} (id int PRIMARY KEY, v text)"
        );
        ctx.direct_client().await?.batch_execute(&sql).await?;
        Ok(())
    })?;
    let data = copy_rows(5000);
    let proxy = ctx.start_proxy(&ctx.default_map()?)?;
    let via_tokio = block_on(copy_with_tokio_postgres(ctx, &proxy, &t1, &data))
        .context("tokio-postgres copy_in / copy_out");
    let via_psql = copy_with_psql(ctx, &proxy, &t2, &data).context("psql \\copy");
    match (via_tokio, via_psql) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(anyhow::anyhow!("{a:#}\n  and also: {b:#}")),
    }
}

/// Count, sum of ids and non-NULL values of a table COPY filled with [`copy_rows`]`(5000)`, read on
/// the primary.
async fn check_copied(ctx: &Ctx, table: &str) -> anyhow::Result<()> {
    let row = ctx
        .direct_client()
        .await?
        .query_one(
            &format!("SELECT count(*), sum(id), count(v) FROM {table}"),
            &[],
        )
        .await?;
    let got: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    ensure!(
        got == (5000, 12_502_500, 3750),
        "count, sum(id), non-null v in {table} on the primary: {got:?}, expected (5000, 12502500, 3750)"
    );
    Ok(())
}

async fn copy_with_tokio_postgres(
    ctx: &Ctx,
    proxy: &ProxyUnderTest,
    table: &str,
    data: &str,
) -> anyhow::Result<()> {
    let client = proxy.client().await?;
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {table} (id, v) FROM STDIN"))
        .await
        .context("starting COPY FROM STDIN through the proxy")?;
    pin_mut!(sink);
    for chunk in data.as_bytes().chunks(8000) {
        sink.send(Bytes::copy_from_slice(chunk))
            .await
            .context("sending COPY data")?;
    }
    let copied = sink.finish().await.context("finishing COPY FROM STDIN")?;
    ensure!(
        copied == 5000,
        "COPY FROM reported {copied} rows, expected 5000"
    );
    check_copied(ctx, table).await?;

    let stream = client
        .copy_out(&format!(
            "COPY (SELECT id, v FROM {table} ORDER BY id) TO STDOUT"
        ))
        .await
        .context("starting COPY TO STDOUT through the proxy")?;
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.try_next().await.context("reading COPY data")? {
        out.extend_from_slice(&chunk);
    }
    ensure!(
        out == data.as_bytes(),
        "COPY TO STDOUT: {}",
        byte_diff(data.as_bytes(), &out)
    );
    // The connection is fine afterwards.
    let n: i64 = client.query_one("SELECT 5000::int8", &[]).await?.get(0);
    ensure!(n == 5000, "SELECT after the COPYs gave {n}");
    Ok(())
}

fn copy_with_psql(
    ctx: &Ctx,
    proxy: &ProxyUnderTest,
    table: &str,
    data: &str,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir();
    let src = dir.join(format!("{}.tsv", ctx.unique("wire_copy_in")));
    let dst = dir.join(format!("{}.tsv", ctx.unique("wire_copy_out")));
    let _files = RemoveFiles(vec![src.clone(), dst.clone()]);
    std::fs::write(&src, data)?;
    let copy_in = ctx.run_psql(
        &proxy.url(),
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("\\copy {table} FROM '{}'", src.display()),
        ],
        None,
    )?;
    let (out, err) = (
        String::from_utf8_lossy(&copy_in.stdout),
        String::from_utf8_lossy(&copy_in.stderr),
    );
    ensure!(
        copy_in.status.success() && out == "COPY 5000\n",
        "\\copy from: {:?}, stdout {out:?}, stderr {err:?}",
        copy_in.status
    );
    let copy_out = ctx.run_psql(
        &proxy.url(),
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!(
                "\\copy (SELECT id, v FROM {table} ORDER BY id) TO '{}'",
                dst.display()
            ),
        ],
        None,
    )?;
    let (out, err) = (
        String::from_utf8_lossy(&copy_out.stdout),
        String::from_utf8_lossy(&copy_out.stderr),
    );
    ensure!(
        copy_out.status.success() && out == "COPY 5000\n",
        "\\copy to: {:?}, stdout {out:?}, stderr {err:?}",
        copy_out.status
    );
    let written = std::fs::read(&dst)?;
    ensure!(
        written == data.as_bytes(),
        "\\copy to file: {}",
        byte_diff(data.as_bytes(), &written)
    );
    block_on(check_copied(ctx, table))
}

/// Drivers (tokio-postgres among them) send Bind, Execute and Sync for COPY FROM STDIN and only
/// then the data. The server ignores a Sync that arrives in copy-in mode, so the copy ends with one
/// ReadyForQuery, for the Sync after CopyDone; what the client sends next in the same write must be
/// answered as the server answers it.
fn sync_during_copy_in_is_ignored(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let table = ctx.unique("wire_copy_sync");
        let _cleanup = DropTables {
            primary: ctx.primary()?,
            tables: vec![table.clone()],
        };
        ctx.direct_client()
            .await?
            .batch_execute(&format!("CREATE TABLE {table} (id int, v text)"))
            .await?;
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let copy = format!("COPY {table} (id, v) FROM STDIN");
        let cases = [
            // What tokio-postgres sends when the COPY statement is dropped.
            (
                "Close + Sync",
                Frames::new().close(b'S', "cp").sync(),
                "CZ3Z",
            ),
            (
                "Parse/Bind/Execute + Sync",
                Frames::new()
                    .parse("", "SELECT 'next'::text", &[])
                    .bind("", "", &[], &[], &[])
                    .execute("", 0)
                    .sync(),
                "CZ12DCZ",
            ),
            (
                "simple Query",
                Frames::new().query("SELECT 'next'::text"),
                "CZTDCZ",
            ),
        ];
        let mut failures = Vec::new();
        for (what, next, want) in cases {
            let next = next.finish();
            let mut runs = Vec::new();
            for mut client in [direct_raw(ctx, &[]).await?, proxied_raw(&proxy, &[]).await?] {
                let prepare = Frames::new()
                    .parse("cp", &copy, &[])
                    .describe(b'S', "cp")
                    .sync()
                    .finish();
                client.send(&prepare).await?;
                let got = client.read_until_ready().await?;
                assert_eq!(
                    tags(&got),
                    "1tnZ",
                    "{what}: prepare: {}",
                    rawclient::show(&got)
                );
                client
                    .send(
                        &Frames::new()
                            .bind("", "cp", &[], &[], &[])
                            .execute("", 0)
                            .sync()
                            .finish(),
                    )
                    .await?;
                let started = vec![client.read_message().await?, client.read_message().await?];
                assert_eq!(
                    tags(&started),
                    "2G",
                    "{what}: {}",
                    rawclient::show(&started)
                );
                let mut tail = Frames::new()
                    .copy_data(b"1\tone\n2\ttwo\n")
                    .copy_done()
                    .sync()
                    .finish()
                    .to_vec();
                tail.extend_from_slice(&next);
                client.send(&tail).await?;
                runs.push(
                    client
                        .read_until_ready_n(2)
                        .await
                        .with_context(|| what.to_string())?,
                );
            }
            assert_eq!(
                tags(&runs[0]),
                want,
                "{what}, direct: {}",
                rawclient::show(&runs[0])
            );
            assert_eq!(command_tag(&with_tag(&runs[0], b'C')[0]), "COPY 2");
            // Every case is tried, so one run reports them all.
            if let Err(e) = ensure_same(&format!("after a COPY, {what}"), &runs[0], &runs[1]) {
                failures.push(format!("{e:#}"));
            }
        }
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        let rows: i64 = ctx
            .direct_client()
            .await?
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        assert_eq!(rows, 12, "three cases, two connections, two rows each");
        Ok(())
    })
}

/// psql through the proxy prints exactly what it prints against the primary: multi-statement -c,
/// an error mid-script without ON_ERROR_STOP, and an aborted transaction.
fn psql_multi_statement_and_errors(ctx: &Ctx) -> anyhow::Result<()> {
    let proxy = ctx.start_proxy(&ctx.default_map()?)?;
    let direct = direct_url(ctx)?;

    let args = ["-A", "-t", "-c", "SELECT 1; SELECT 2"];
    let p = ctx.run_psql(&proxy.url(), &args, None)?;
    let d = ctx.run_psql(&direct, &args, None)?;
    assert_eq!(
        String::from_utf8_lossy(&p.stderr),
        "",
        "psql -c stderr through the proxy"
    );
    assert_eq!(String::from_utf8_lossy(&p.stdout), "1\n2\n");
    assert_eq!(p.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&d.stdout), "1\n2\n");

    let script = "SELECT 1 AS one;\n\
                  SELECT 1/0;\n\
                  SELECT 'after error' AS still_running;\n\
                  BEGIN;\n\
                  SELECT 2 AS two;\n\
                  SELECT 1/0;\n\
                  SELECT 3 AS three;\n\
                  ROLLBACK;\n\
                  SELECT 'done' AS done, repeat('é', 3) AS accents;\n";
    let p = ctx.run_psql(&proxy.url(), &[], Some(script))?;
    let d = ctx.run_psql(&direct, &[], Some(script))?;
    let (p_out, p_err) = (
        String::from_utf8_lossy(&p.stdout),
        String::from_utf8_lossy(&p.stderr),
    );
    let (d_out, d_err) = (
        String::from_utf8_lossy(&d.stdout),
        String::from_utf8_lossy(&d.stderr),
    );
    assert_eq!(p_err, d_err, "psql stderr through the proxy vs direct");
    assert_eq!(p_out, d_out, "psql stdout through the proxy vs direct");
    assert_eq!(p.status.code(), d.status.code());
    assert_eq!(
        p.status.code(),
        Some(0),
        "without ON_ERROR_STOP psql carries on"
    );
    assert_eq!(
        p_err,
        "ERROR:  division by zero\n\
         ERROR:  division by zero\n\
         ERROR:  current transaction is aborted, commands ignored until end of transaction block\n"
    );
    assert!(p_out.contains(" after error\n"), "stdout: {p_out}");
    assert!(p_out.contains(" done | ééé\n"), "stdout: {p_out}");
    assert!(!p_out.contains("three"), "stdout: {p_out}");
    Ok(())
}
