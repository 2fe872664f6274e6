//! The proxy is transparent on the wire: for the same requests, a client gets the same bytes through
//! shardgate as straight from the primary (extended and simple protocol, text and binary results,
//! pipelines with errors, named statements and portals, notices, large values), and real clients
//! see the same results. COPY and psql are in `wire_copy`, startup and SSL in `wire_startup`.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use bytes::Bytes;
use shardgate::localcluster::{APP_DATABASE, APP_PASSWORD, APP_USER, Instance};

use crate::harness::{Ctx, ProxyUnderTest, block_on, proxy_setting, tests};
use crate::rawclient::{
    self, Frames, Message, RawClient, command_tag, data_row, ensure_same, ensure_same_bytes,
    error_field, tags, text_row, with_tag,
};

tests![
    result_bytes_identical_text_and_binary,
    simple_protocol_bytes_identical,
    pipeline_with_error_mid_way,
    named_statements_and_portals,
    unnamed_statement_across_sync,
    tokio_postgres_prepared_binary,
    large_row_passes_through,
];

/// Startup settings both connections of a comparison use, so session-dependent text (timestamptz,
/// dates, intervals) comes out the same.
pub(crate) const SESSION: &[(&str, &str)] = &[
    ("application_name", "wiretest"),
    ("TimeZone", "Europe/Paris"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "iso_8601"),
];

/// A raw client straight to the shared primary.
pub(crate) async fn direct_raw(ctx: &Ctx, extra: &[(&str, &str)]) -> anyhow::Result<RawClient> {
    RawClient::connect(
        ctx.primary()?.addr(),
        APP_USER,
        APP_PASSWORD,
        APP_DATABASE,
        extra,
    )
    .await
    .context("raw client to the primary")
}

/// A raw client through `proxy`.
pub(crate) async fn proxied_raw(
    proxy: &ProxyUnderTest,
    extra: &[(&str, &str)],
) -> anyhow::Result<RawClient> {
    RawClient::connect(proxy.addr(), APP_USER, APP_PASSWORD, APP_DATABASE, extra)
        .await
        .context("raw client through the proxy")
}

/// Sends `frames` on both clients and reads each up to its `ready`th ReadyForQuery.
pub(crate) async fn exchange(
    direct: &mut RawClient,
    proxied: &mut RawClient,
    frames: &[u8],
    ready: usize,
) -> anyhow::Result<(Vec<Message>, Vec<Message>)> {
    direct.send(frames).await?;
    let d = direct.read_until_ready_n(ready).await.context("direct")?;
    proxied.send(frames).await?;
    let p = proxied
        .read_until_ready_n(ready)
        .await
        .context("through the proxy")?;
    Ok((d, p))
}

/// Sends `frames` both ways and returns the exact bytes of each answer, up to ReadyForQuery.
pub(crate) async fn exchange_bytes(
    direct: &mut RawClient,
    proxied: &mut RawClient,
    frames: &[u8],
) -> anyhow::Result<(Bytes, Bytes)> {
    direct.send(frames).await?;
    let d = direct.raw_bytes_until_ready().await.context("direct")?;
    proxied.send(frames).await?;
    let p = proxied
        .raw_bytes_until_ready()
        .await
        .context("through the proxy")?;
    Ok((d, p))
}

/// `postgres://app:secret@<primary>/app`, for psql straight to the primary.
pub(crate) fn direct_url(ctx: &Ctx) -> anyhow::Result<String> {
    Ok(format!(
        "postgres://{APP_USER}:{APP_PASSWORD}@{}/{APP_DATABASE}",
        ctx.primary()?.addr()
    ))
}

/// Drops the listed tables when dropped, also when the test panics.
pub(crate) struct DropTables<'a> {
    pub(crate) primary: &'a Instance,
    pub(crate) tables: Vec<String>,
}

impl Drop for DropTables<'_> {
    fn drop(&mut self) {
        let sql = format!("DROP TABLE IF EXISTS {}", self.tables.join(", "));
        // A lock left behind (a proxy bug, say) fails the cleanup instead of hanging the suite.
        if let Err(e) = self
            .primary
            .psql(APP_DATABASE, &["SET lock_timeout = '5s'", &sql])
        {
            eprintln!("wire: cleanup failed: {e}");
        }
    }
}

/// Removes the listed files when dropped.
pub(crate) struct RemoveFiles(pub(crate) Vec<PathBuf>);

impl Drop for RemoveFiles {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// One row over many types; `$1` is an int8 parameter.
const MANY_TYPES_SQL: &str = r#"SELECT $1::int8 AS param, 32767::int2 AS i2, (-2147483648)::int4 AS i4,
 9223372036854775807::int8 AS i8, 'NaN'::numeric AS n_nan,
 '-123456789012345678901234567890.0123456789'::numeric AS n_big, 0.50::numeric AS n_half,
 1234.5678::float8 AS f8, '-Infinity'::float8 AS f8_inf,
 'héllo wörld ✓ 日本語'::text AS t, '\x00ff10'::bytea AS b, true AS yes, false AS no,
 '{"a": [1, 2.5, null], "b": "é"}'::json AS j, '{"b": 1, "a": [true, null]}'::jsonb AS jb,
 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
 '2024-02-29 13:45:56.123456+02'::timestamptz AS ts, '2024-02-29'::date AS d,
 '1 year 2 mons 3 days 04:05:06.789'::interval AS iv,
 ARRAY[1, NULL, 3]::int4[] AS ai, ARRAY['x', NULL, 'with space', 'quo"te']::text[] AS at,
 NULL::int4 AS null_i4, NULL::text AS null_t"#;

/// The text of [`MANY_TYPES_SQL`]'s row under [`SESSION`] with `$1` = 42.
const MANY_TYPES_TEXT: &[Option<&str>] = &[
    Some("42"),
    Some("32767"),
    Some("-2147483648"),
    Some("9223372036854775807"),
    Some("NaN"),
    Some("-123456789012345678901234567890.0123456789"),
    Some("0.50"),
    Some("1234.5678"),
    Some("-Infinity"),
    Some("héllo wörld ✓ 日本語"),
    Some("\\x00ff10"),
    Some("t"),
    Some("f"),
    Some(r#"{"a": [1, 2.5, null], "b": "é"}"#),
    Some(r#"{"a": [true, null], "b": 1}"#),
    Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    Some("2024-02-29 12:45:56.123456+01"),
    Some("2024-02-29"),
    Some("P1Y2M3DT4H5M6.789S"),
    Some("{1,NULL,3}"),
    Some(r#"{x,NULL,"with space","quo\"te"}"#),
    None,
    None,
];

/// Extended protocol over many types, text and binary results, a binary parameter: the proxy's
/// response bytes equal the primary's.
fn result_bytes_identical_text_and_binary(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let mut direct = direct_raw(ctx, SESSION).await?;
        let mut proxied = proxied_raw(&proxy, SESSION).await?;
        let param = 42i64.to_be_bytes();
        for (format, name) in [(0i16, "text"), (1, "binary")] {
            let frames = Frames::new()
                .parse("", MANY_TYPES_SQL, &[20])
                .bind("", "", &[1], &[Some(&param[..])], &[format])
                .describe(b'P', "")
                .execute("", 0)
                .sync()
                .finish();
            let (d, p) = exchange_bytes(&mut direct, &mut proxied, &frames).await?;
            ensure_same_bytes(&format!("{name} results"), &d, &p)?;

            let msgs = rawclient::split_frames(&p);
            assert_eq!(tags(&msgs), "12TDCZ", "{name}: {}", rawclient::show(&msgs));
            let row = &with_tag(&msgs, b'D')[0];
            assert_eq!(command_tag(&with_tag(&msgs, b'C')[0]), "SELECT 1");
            if format == 0 {
                let got = text_row(row)?;
                let want: Vec<Option<String>> = MANY_TYPES_TEXT
                    .iter()
                    .map(|v| v.map(str::to_string))
                    .collect();
                assert_eq!(got, want, "text row");
            } else {
                let cols = data_row(row)?;
                assert_eq!(cols.len(), MANY_TYPES_TEXT.len());
                assert_eq!(cols[0].as_deref(), Some(&42i64.to_be_bytes()[..]), "param");
                assert_eq!(
                    cols[1].as_deref(),
                    Some(&32767i16.to_be_bytes()[..]),
                    "int2"
                );
                assert_eq!(
                    cols[2].as_deref(),
                    Some(&i32::MIN.to_be_bytes()[..]),
                    "int4"
                );
                assert_eq!(
                    cols[3].as_deref(),
                    Some(&i64::MAX.to_be_bytes()[..]),
                    "int8"
                );
                assert_eq!(
                    cols[7].as_deref(),
                    Some(&1234.5678f64.to_be_bytes()[..]),
                    "float8"
                );
                assert_eq!(
                    cols[9].as_deref(),
                    Some("héllo wörld ✓ 日本語".as_bytes()),
                    "text"
                );
                assert_eq!(cols[10].as_deref(), Some(&[0x00, 0xff, 0x10][..]), "bytea");
                assert_eq!(cols[11].as_deref(), Some(&[1u8][..]), "true");
                assert_eq!(cols[12].as_deref(), Some(&[0u8][..]), "false");
                assert_eq!(cols[21], None);
                assert_eq!(cols[22], None);
            }
        }
        Ok(())
    })
}

/// A multi-statement simple Query (rows, an INSERT, an error last): same bytes through the proxy,
/// and like on the server it is one implicit transaction, so the INSERT is rolled back.
fn simple_protocol_bytes_identical(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let table = ctx.unique("wire_simple");
        let _cleanup = DropTables {
            primary: ctx.primary()?,
            tables: vec![table.clone()],
        };
        let admin = ctx.direct_client().await?;
        admin
            .batch_execute(&format!(
                "CREATE TABLE {table} (id int PRIMARY KEY, v text)"
            ))
            .await?;
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let mut direct = direct_raw(ctx, SESSION).await?;
        let mut proxied = proxied_raw(&proxy, SESSION).await?;
        let sql = format!(
            "SELECT 1::int4 AS a, 'é'::text AS b, NULL::int8 AS c, 2.50::numeric AS d, now() IS NOT NULL AS e; \
             INSERT INTO {table} VALUES (1, 'one'), (2, 'two'); SELECT 1/0"
        );
        let frames = Frames::new().query(&sql).finish();
        let (d, p) = exchange_bytes(&mut direct, &mut proxied, &frames).await?;
        ensure_same_bytes("multi-statement Query", &d, &p)?;

        let msgs = rawclient::split_frames(&p);
        assert_eq!(tags(&msgs), "TDCCEZ", "{}", rawclient::show(&msgs));
        assert_eq!(
            text_row(&with_tag(&msgs, b'D')[0])?,
            vec![
                Some("1".to_string()),
                Some("é".to_string()),
                None,
                Some("2.50".to_string()),
                Some("t".to_string())
            ]
        );
        let tags_cc: Vec<String> = with_tag(&msgs, b'C')
            .iter()
            .map(|b| command_tag(b))
            .collect();
        assert_eq!(tags_cc, ["SELECT 1", "INSERT 0 2"]);
        let err = &with_tag(&msgs, b'E')[0];
        assert_eq!(error_field(err, b'C').as_deref(), Some("22012"));
        assert_eq!(error_field(err, b'M').as_deref(), Some("division by zero"));
        assert_eq!(with_tag(&msgs, b'Z')[0].as_ref(), b"I");
        let rows: i64 = admin
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        assert_eq!(
            rows, 0,
            "the error rolled back the implicit transaction, INSERT included"
        );
        Ok(())
    })
}

/// Four pipelined segments in one write: ok, error (the rest of that segment skipped), a Bind of the
/// first segment's named statement, and a Flush-terminated one answered before its Sync is sent.
fn pipeline_with_error_mid_way(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let frames = Frames::new()
            .parse("pipe_a", "SELECT $1::int4 + 1 AS next", &[0])
            .bind("", "pipe_a", &[], &[Some(b"1")], &[])
            .execute("", 0)
            .sync()
            .parse("", "SELECT 1/0 AS boom", &[])
            .bind("", "", &[], &[], &[])
            .execute("", 0)
            .parse("", "SELECT 'skipped'::text", &[])
            .bind("", "", &[], &[], &[])
            .execute("", 0)
            .sync()
            .bind("", "pipe_a", &[], &[Some(b"3")], &[])
            .execute("", 0)
            .sync()
            .parse("", "SELECT 'flushed'::text AS f", &[])
            .bind("", "", &[], &[], &[])
            .execute("", 0)
            .flush()
            .finish();
        let mut runs = Vec::new();
        for mut client in [
            direct_raw(ctx, SESSION).await?,
            proxied_raw(&proxy, SESSION).await?,
        ] {
            client.send(&frames).await?;
            let mut msgs = client.read_until_ready_n(3).await?;
            // The Flush makes the last segment's results come without a Sync.
            loop {
                let msg = client.read_message().await.with_context(|| {
                    format!(
                        "waiting for the flushed results after{}",
                        rawclient::show(&msgs)
                    )
                })?;
                let done = msg.0 == b'C' || msg.0 == b'E';
                msgs.push(msg);
                if done {
                    break;
                }
            }
            client.send(&Frames::new().sync().finish()).await?;
            msgs.extend(client.read_until_ready().await?);
            runs.push(msgs);
        }
        let (d, p) = (&runs[0], &runs[1]);
        ensure_same("pipeline", d, p)?;
        assert_eq!(tags(p), "12DCZ1EZ2DCZ12DCZ", "{}", rawclient::show(p));
        let rows: Vec<Vec<Option<String>>> = with_tag(p, b'D')
            .iter()
            .map(|b| text_row(b))
            .collect::<Result<_, _>>()?;
        assert_eq!(
            rows,
            vec![
                vec![Some("2".to_string())],
                vec![Some("4".to_string())],
                vec![Some("flushed".to_string())]
            ],
            "the segment after the error still runs"
        );
        let err = &with_tag(p, b'E')[0];
        assert_eq!(error_field(err, b'C').as_deref(), Some("22012"));
        let statuses: Vec<Bytes> = with_tag(p, b'Z');
        assert_eq!(statuses, [&b"I"[..]; 4]);
        Ok(())
    })
}

/// A named statement and a named portal inside a transaction: Describe, partial Execute
/// (PortalSuspended), the rest, Close; a Bind to the closed statement fails with 26000. Two clients
/// may use the same statement name for different queries.
fn named_statements_and_portals(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        // One server connection: the two clients at the end share it.
        let map = proxy_setting(&ctx.default_map()?, "pool_size", "1");
        let proxy = ctx.start_proxy(&map)?;
        let mut direct = direct_raw(ctx, SESSION).await?;
        let mut proxied = proxied_raw(&proxy, SESSION).await?;
        let sql = "SELECT g, $1::text AS label FROM generate_series(1, 5) g";
        let steps: Vec<(&str, Bytes, &str)> = vec![
            ("BEGIN", Frames::new().query("BEGIN").finish(), "CZ"),
            (
                "Parse, Describe, Bind, Execute 2",
                Frames::new()
                    .parse("st4", sql, &[0])
                    .describe(b'S', "st4")
                    .bind("p4", "st4", &[], &[Some(b"v")], &[])
                    .execute("p4", 2)
                    .sync()
                    .finish(),
                "1tT2DDsZ",
            ),
            (
                "Execute the rest",
                Frames::new().execute("p4", 0).sync().finish(),
                "DDDCZ",
            ),
            (
                "Close portal and statement",
                Frames::new()
                    .close(b'P', "p4")
                    .close(b'S', "st4")
                    .sync()
                    .finish(),
                "33Z",
            ),
            (
                "Bind the closed statement",
                Frames::new()
                    .bind("", "st4", &[], &[Some(b"v")], &[])
                    .execute("", 0)
                    .sync()
                    .finish(),
                "EZ",
            ),
            ("COMMIT", Frames::new().query("COMMIT").finish(), "CZ"),
        ];
        let mut all = Vec::new();
        for (what, frames, want) in &steps {
            let (d, p) = exchange(&mut direct, &mut proxied, frames, 1).await?;
            ensure_same(what, &d, &p)?;
            assert_eq!(tags(&p), *want, "{what}: {}", rawclient::show(&p));
            all.push(p);
        }
        // ParameterDescription: one text parameter.
        assert_eq!(with_tag(&all[1], b't')[0].as_ref(), &[0, 1, 0, 0, 0, 25]);
        let rows: Vec<Vec<Option<String>>> = all[1..=2]
            .iter()
            .flat_map(|m| with_tag(m, b'D'))
            .map(|b| text_row(&b))
            .collect::<Result<_, _>>()?;
        let want: Vec<Vec<Option<String>>> = (1..=5)
            .map(|g| vec![Some(g.to_string()), Some("v".to_string())])
            .collect();
        assert_eq!(rows, want);
        assert_eq!(command_tag(&with_tag(&all[2], b'C')[0]), "SELECT 3");
        let err = &with_tag(&all[4], b'E')[0];
        assert_eq!(error_field(err, b'C').as_deref(), Some("26000"));
        assert_eq!(
            error_field(err, b'M').as_deref(),
            Some("prepared statement \"st4\" does not exist")
        );
        assert_eq!(
            with_tag(&all[4], b'Z')[0].as_ref(),
            b"E",
            "in a failed transaction"
        );
        assert_eq!(command_tag(&with_tag(&all[5], b'C')[0]), "ROLLBACK");

        // Same name, different queries, two clients on the one server connection.
        let mut a = proxied_raw(&proxy, &[]).await?;
        let mut b = proxied_raw(&proxy, &[]).await?;
        for (client, text) in [(&mut a, "from a"), (&mut b, "from b")] {
            let frames = Frames::new()
                .parse("dup", &format!("SELECT '{text}'::text"), &[])
                .sync()
                .finish();
            client.send(&frames).await?;
            let got = client.read_until_ready().await?;
            assert_eq!(tags(&got), "1Z", "{}", rawclient::show(&got));
        }
        for (which, text) in [(0, "from a"), (1, "from b"), (0, "from a")] {
            let client = if which == 0 { &mut a } else { &mut b };
            let frames = Frames::new()
                .bind("", "dup", &[], &[], &[])
                .execute("", 0)
                .sync()
                .finish();
            client.send(&frames).await?;
            let got = client.read_until_ready().await?;
            assert_eq!(tags(&got), "2DCZ", "{}", rawclient::show(&got));
            assert_eq!(
                text_row(&with_tag(&got, b'D')[0])?,
                vec![Some(text.to_string())]
            );
        }
        // Parsing an existing name again fails as on the server. The proxy answers this one itself
        // (server-side names are shared), so only the fields a client acts on are compared, not the
        // server's source location (F, L, R).
        let frames = Frames::new().parse("dup", "SELECT 1", &[]).sync().finish();
        let mut direct2 = direct_raw(ctx, &[]).await?;
        direct2
            .send(&Frames::new().parse("dup", "SELECT 2", &[]).sync().finish())
            .await?;
        direct2.read_until_ready().await?;
        let (d, p) = exchange(&mut direct2, &mut a, &frames, 1).await?;
        assert_eq!(tags(&p), tags(&d), "{}", rawclient::show(&p));
        assert_eq!(tags(&p), "EZ");
        let client_fields = |m: &[Message]| {
            rawclient::error_fields(&with_tag(m, b'E')[0])
                .into_iter()
                .filter(|(f, _)| !matches!(f, b'F' | b'L' | b'R'))
                .collect::<Vec<_>>()
        };
        assert_eq!(client_fields(&p), client_fields(&d), "42P05 error fields");
        assert_eq!(
            error_field(&with_tag(&p, b'E')[0], b'C').as_deref(),
            Some("42P05")
        );
        assert_eq!(with_tag(&p, b'Z'), with_tag(&d, b'Z'));
        Ok(())
    })
}

/// The unnamed statement outlives a Sync: Parse + Sync, then (on another server connection, as the
/// first is held by someone else's transaction) Bind + Execute + Sync still runs it.
fn unnamed_statement_across_sync(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = proxy_setting(&ctx.default_map()?, "pool_size", "2");
        let map = proxy_setting(&map, "workers", "1");
        let proxy = ctx.start_proxy(&map)?;
        let admin = ctx.direct_client().await?;
        let marker = ctx.unique("wire_unnamed_marker");
        let sql = format!(
            "SELECT $1::int4 * 2 AS doubled, pg_backend_pid() AS pid, '{marker}'::text AS marker"
        );

        let mut a = proxied_raw(&proxy, &[]).await?;
        a.send(&Frames::new().parse("", &sql, &[0]).sync().finish())
            .await?;
        let parsed = a.read_until_ready().await?;
        assert_eq!(tags(&parsed), "1Z", "{}", rawclient::show(&parsed));
        // Which server process parsed it (if the proxy parsed it at all before the Bind).
        let parsed_on: Option<i32> = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE position($1 in query) > 0 AND pid <> pg_backend_pid()",
                &[&marker],
            )
            .await?
            .map(|r| r.get(0));

        // Two other clients take both server connections, then the one not holding the
        // connection that parsed the statement lets go.
        let b = proxy.client().await?;
        let c = proxy.client().await?;
        b.batch_execute("BEGIN").await?;
        let pid_b: i32 = b.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        c.batch_execute("BEGIN").await?;
        let pid_c: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        assert_ne!(pid_b, pid_c, "two transactions, two server connections");
        let (holder, held_pid, other) = if parsed_on == Some(pid_c) {
            (c, pid_c, b)
        } else {
            (b, pid_b, c)
        };
        other.batch_execute("COMMIT").await?;

        let frames = Frames::new()
            .bind("", "", &[], &[Some(b"21")], &[])
            .execute("", 0)
            .sync()
            .finish();
        a.send(&frames).await?;
        let got = a.read_until_ready().await?;
        assert_eq!(
            tags(&got),
            "2DCZ",
            "Bind of the unnamed statement after Sync: {}",
            rawclient::show(&got)
        );
        let row = text_row(&with_tag(&got, b'D')[0])?;
        assert_eq!(row[0].as_deref(), Some("42"));
        assert_eq!(row[2].as_deref(), Some(marker.as_str()));
        let ran_on: i32 = row[1].as_deref().context("pid")?.parse()?;
        assert_ne!(ran_on, held_pid, "the held connection cannot have run it");
        if let Some(pid) = parsed_on {
            assert_ne!(
                ran_on, pid,
                "the statement ran on another connection than the one that parsed it"
            );
        }
        holder.batch_execute("COMMIT").await?;
        Ok(())
    })
}

/// A tokio-postgres prepared statement (binary parameters and results) run 10 times with different
/// parameters gives the same rows through the proxy as directly.
fn tokio_postgres_prepared_binary(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let sql = "SELECT $1::int2, $2::int4, $3::int8, $4::float8, $5::text, $6::bytea, $7::bool, \
                   $8::int4, length($5), $2::int4 / 2";
        let texts = [
            "",
            "plain",
            "héllo ✓",
            "tab\tnew\nline",
            "quote ' and \" and \\",
        ];
        let floats = [0.1, -1e300, f64::INFINITY, f64::MIN_POSITIVE, -0.0];
        let params: Vec<Typed> = (0..10i32)
            .map(|i| {
                let text = texts[i as usize % texts.len()].repeat(1 + i as usize);
                let bytes: Vec<u8> = (0..=255u8)
                    .cycle()
                    .skip(i as usize * 7)
                    .take(i as usize * 50)
                    .collect();
                (
                    if i == 0 {
                        i16::MIN
                    } else {
                        (i * 3000 - 5000) as i16
                    },
                    if i == 1 { i32::MAX } else { i * -70_000 },
                    if i == 2 { i64::MAX } else { i64::from(i) << 40 },
                    floats[i as usize % floats.len()] * f64::from(i + 1),
                    text.clone(),
                    bytes,
                    i % 3 == 0,
                    (i % 2 == 0).then_some(i * 11),
                    text.chars().count() as i32,
                    if i == 1 { i32::MAX / 2 } else { i * -35_000 },
                )
            })
            .collect();
        let mut results = Vec::new();
        for client in [ctx.direct_client().await?, proxy.client().await?] {
            let stmt = client.prepare(sql).await?;
            let mut rows: Vec<Typed> = Vec::new();
            for p in &params {
                let row = client
                    .query_one(&stmt, &[&p.0, &p.1, &p.2, &p.3, &p.4, &p.5, &p.6, &p.7])
                    .await?;
                rows.push((
                    row.get(0),
                    row.get(1),
                    row.get(2),
                    row.get(3),
                    row.get(4),
                    row.get(5),
                    row.get(6),
                    row.get(7),
                    row.get(8),
                    row.get(9),
                ));
            }
            results.push(rows);
        }
        let bits = |rows: &[Typed]| rows.iter().map(|r| r.3.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&results[1]),
            bits(&params),
            "float8 bits through the proxy"
        );
        assert_eq!(results[0], params, "direct");
        assert_eq!(results[1], params, "through the proxy");
        Ok(())
    })
}

/// A 5 MB text and a 5 MB bytea come back whole through the proxy, and go up whole as parameters;
/// the raw bytes of the response equal the primary's in text and binary.
fn large_row_passes_through(ctx: &Ctx) -> anyhow::Result<()> {
    const N: usize = 5_000_000;
    let big =
        "SELECT repeat('x', 5000000) AS t, decode(repeat('0123456789abcdef', 625000), 'hex') AS b";
    block_on(async {
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let client = proxy.client().await?;
        let row = client.query_one(big, &[]).await?;
        let text: String = row.get(0);
        let bytea: Vec<u8> = row.get(1);
        assert_eq!(text.len(), N);
        assert!(text == "x".repeat(N), "the text is all 'x'");
        let pattern = [0x01u8, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        let want: Vec<u8> = pattern.iter().copied().cycle().take(N).collect();
        assert_eq!(bytea.len(), N);
        ensure!(bytea == want, "the bytea: {}", byte_diff(&want, &bytea));

        let admin = ctx.direct_client().await?;
        let md5s = "SELECT md5(repeat('x', 5000000)), md5(decode(repeat('0123456789abcdef', 625000), 'hex'))";
        let row = admin.query_one(md5s, &[]).await?;
        let direct_md5: (String, String) = (row.get(0), row.get(1));
        let row = client
            .query_one(
                "SELECT md5($1::text), md5($2::bytea), length($1::text), length($2::bytea)",
                &[&text, &bytea],
            )
            .await?;
        let up: (String, String, i32, i32) = (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(
            up,
            (direct_md5.0, direct_md5.1, N as i32, N as i32),
            "md5 and length of 5 MB parameters sent through the proxy"
        );

        let mut direct = direct_raw(ctx, SESSION).await?;
        let mut proxied = proxied_raw(&proxy, SESSION).await?;
        for format in [0i16, 1] {
            let frames = Frames::new()
                .parse("", big, &[])
                .bind("", "", &[], &[], &[format])
                .execute("", 0)
                .sync()
                .finish();
            direct.send(&frames).await?;
            let d = direct.raw_bytes_until_ready().await?;
            proxied.send(&frames).await?;
            let p = proxied.raw_bytes_until_ready().await?;
            ensure_same_bytes(&format!("5 MB row, result format {format}"), &d, &p)?;
            assert!(p.len() > 2 * N, "{} bytes", p.len());
        }
        Ok(())
    })
}

/// One row of [`tokio_postgres_prepared_binary`]'s statement.
type Typed = (
    i16,
    i32,
    i64,
    f64,
    String,
    Vec<u8>,
    bool,
    Option<i32>,
    i32,
    i32,
);

/// Where two byte strings first differ, for a failure message that does not print megabytes.
pub(crate) fn byte_diff(want: &[u8], got: &[u8]) -> String {
    let at = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    let around = |b: &[u8]| {
        b[at.saturating_sub(20).min(b.len())..(at + 40).min(b.len())]
            .escape_ascii()
            .to_string()
    };
    format!(
        "{} bytes expected, {} got; first difference at byte {at}: expected …{}…, got …{}…",
        want.len(),
        got.len(),
        around(want),
        around(got)
    )
}
