//! The startup: ParameterStatus and BackendKeyData as the server sends them, SSLRequest refused
//! cleanly.

use anyhow::Context;
use bytes::Bytes;
use shardgate::localcluster::{APP_DATABASE, APP_PASSWORD, APP_USER};

use crate::harness::{Ctx, block_on, tests};
use crate::rawclient::{
    self, Frames, GSSENC_REQUEST_CODE, Message, RawClient, SSL_REQUEST_CODE, ensure_same, tags,
    text_row, with_tag,
};
use crate::wire::{direct_raw, direct_url, exchange, proxied_raw};

tests![
    startup_parameters_match_direct,
    ssl_request_is_refused_cleanly,
];

/// The startup ParameterStatus set and BackendKeyData equal a direct connection's with the same
/// startup parameters, and the settings are in effect.
fn startup_parameters_match_direct(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let params: &[(&str, &str)] = &[
            ("application_name", "rawtest"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, DMY"),
            ("TimeZone", "Europe/Paris"),
        ];
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let mut direct = direct_raw(ctx, params).await?;
        let mut proxied = proxied_raw(&proxy, params).await?;
        let sorted = |c: &RawClient| {
            let mut p = c.parameters.clone();
            p.sort();
            p
        };
        let (d, p) = (sorted(&direct), sorted(&proxied));
        let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&p),
            names(&d),
            "ParameterStatus names through the proxy vs direct"
        );
        let values = |v: &[(String, String)]| {
            v.iter()
                .filter(|(n, _)| n != "in_hot_standby")
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            values(&p),
            values(&d),
            "ParameterStatus values through the proxy vs direct"
        );
        let get = |v: &[(String, String)], name: &str| {
            v.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&p, "DateStyle").as_deref(), Some("ISO, DMY"));
        assert_eq!(get(&p, "TimeZone").as_deref(), Some("Europe/Paris"));
        assert_eq!(get(&p, "application_name").as_deref(), Some("rawtest"));
        assert_eq!(get(&p, "client_encoding").as_deref(), Some("UTF8"));
        assert_eq!(get(&p, "session_authorization").as_deref(), Some("app"));
        assert_eq!(direct.backend_key.as_ref().map(Bytes::len), Some(8));
        assert_eq!(
            proxied.backend_key.as_ref().map(Bytes::len),
            Some(8),
            "BackendKeyData through the proxy"
        );
        // The startup ends with BackendKeyData then ReadyForQuery(idle), as on the server.
        let tail = |m: &[Message]| tags(m).trim_start_matches('S').to_string();
        assert_eq!(
            tail(&proxied.startup_messages),
            tail(&direct.startup_messages)
        );
        assert_eq!(
            proxied.startup_messages.last().map(|m| m.1.clone()),
            Some(Bytes::from_static(b"I"))
        );

        // The settings are in effect for queries.
        let q = "SHOW DateStyle; SHOW TimeZone; SELECT '01/02/2024'::date::text, \
                 '2024-07-01 12:00:00+00'::timestamptz::text, current_setting('application_name')";
        let (d, p) = exchange(
            &mut direct,
            &mut proxied,
            &Frames::new().query(q).finish(),
            1,
        )
        .await?;
        ensure_same("settings in effect", &d, &p)?;
        let rows: Vec<Vec<Option<String>>> = with_tag(&p, b'D')
            .iter()
            .map(|b| text_row(b))
            .collect::<Result<_, _>>()?;
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            rows,
            vec![
                vec![s("ISO, DMY")],
                vec![s("Europe/Paris")],
                vec![s("2024-02-01"), s("2024-07-01 14:00:00+02"), s("rawtest")],
            ]
        );
        Ok(())
    })
}

/// SSLRequest (and GSSENCRequest) get 'N' and nothing else; the startup on the same socket then
/// works. psql with sslmode=require fails as against a server without SSL; sslmode=prefer works.
fn ssl_request_is_refused_cleanly(ctx: &Ctx) -> anyhow::Result<()> {
    let proxy = ctx.start_proxy(&ctx.default_map()?)?;
    block_on(async {
        for codes in [
            &[SSL_REQUEST_CODE][..],
            &[GSSENC_REQUEST_CODE, SSL_REQUEST_CODE],
        ] {
            let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await?;
            for &code in codes {
                let answer = rawclient::encryption_request(&mut stream, code).await?;
                assert_eq!(answer, b'N', "answer to request code {code}");
            }
            let mut client = RawClient::startup(stream, APP_USER, APP_PASSWORD, APP_DATABASE, &[])
                .await
                .with_context(|| format!("startup after encryption requests {codes:?}"))?;
            let got = client.simple_query("SELECT 'after ssl'::text").await?;
            assert_eq!(tags(&got), "TDCZ", "{}", rawclient::show(&got));
            assert_eq!(
                text_row(&with_tag(&got, b'D')[0])?,
                vec![Some("after ssl".to_string())]
            );
        }
        Ok(())
    })?;

    let args = ["-A", "-t", "-c", "SELECT 'ok'"];
    let require = ctx.run_psql(&format!("{}?sslmode=require", proxy.url()), &args, None)?;
    let stderr = String::from_utf8_lossy(&require.stderr);
    assert_eq!(
        require.status.code(),
        Some(2),
        "psql sslmode=require exit code; stderr: {stderr}"
    );
    assert!(
        stderr.contains("server does not support SSL, but SSL was required"),
        "stderr: {stderr}"
    );
    let direct = ctx.run_psql(
        &format!("{}?sslmode=require", direct_url(ctx)?),
        &args,
        None,
    )?;
    assert_eq!(
        direct.status.code(),
        Some(2),
        "the server has no SSL either"
    );

    let prefer = ctx.run_psql(&format!("{}?sslmode=prefer", proxy.url()), &args, None)?;
    assert!(
        prefer.status.success(),
        "psql sslmode=prefer: {}",
        String::from_utf8_lossy(&prefer.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&prefer.stdout), "ok\n");
    Ok(())
}
