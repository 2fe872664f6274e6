//! Messages besides rows: a NOTICE and a ParameterStatus reach the client as the server sends them,
//! and a FunctionCall is answered as the server answers it.

use crate::harness::{Ctx, block_on, proxy_setting, tests};
use crate::rawclient::{
    self, Frames, command_tag, ensure_same, error_field, tags, text_row, with_tag,
};
use crate::wire::{SESSION, direct_raw, exchange, proxied_raw};

tests![
    notice_and_parameter_status,
    function_call_is_answered_like_the_server
];

/// A NOTICE reaches the client as on the server; SET gives a ParameterStatus before ReadyForQuery,
/// the setting sticks for this client and does not leak to another one on the same server connection.
fn notice_and_parameter_status(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = proxy_setting(&ctx.default_map()?, "pool_size", "1");
        let proxy = ctx.start_proxy(&map)?;
        let mut direct = direct_raw(ctx, SESSION).await?;
        let mut proxied = proxied_raw(&proxy, SESSION).await?;

        let frames = Frames::new()
            .query("DO $$BEGIN RAISE NOTICE 'hello %', 42; END$$")
            .finish();
        let (d, p) = exchange(&mut direct, &mut proxied, &frames, 1).await?;
        ensure_same("RAISE NOTICE", &d, &p)?;
        assert_eq!(tags(&p), "NCZ", "{}", rawclient::show(&p));
        let notice = &with_tag(&p, b'N')[0];
        assert_eq!(error_field(notice, b'M').as_deref(), Some("hello 42"));
        assert_eq!(error_field(notice, b'C').as_deref(), Some("00000"));
        assert_eq!(error_field(notice, b'S').as_deref(), Some("NOTICE"));
        assert_eq!(command_tag(&with_tag(&p, b'C')[0]), "DO");

        let frames = Frames::new().query("SET application_name = 'x'").finish();
        let (d, p) = exchange(&mut direct, &mut proxied, &frames, 1).await?;
        ensure_same("SET application_name", &d, &p)?;
        // Postgres 14+ reports changed settings just before ReadyForQuery, after CommandComplete.
        assert_eq!(tags(&p), "CSZ", "{}", rawclient::show(&p));
        assert_eq!(with_tag(&p, b'S')[0].as_ref(), b"application_name\0x\0");
        assert_eq!(command_tag(&with_tag(&p, b'C')[0]), "SET");

        let shown = proxied.simple_query("SHOW application_name").await?;
        assert_eq!(tags(&shown), "TDCZ");
        assert_eq!(
            text_row(&with_tag(&shown, b'D')[0])?,
            vec![Some("x".to_string())]
        );
        let other = proxy.client().await?;
        let name: String = other.query_one("SHOW application_name", &[]).await?.get(0);
        assert_ne!(name, "x", "another client sees the first one's SET");
        let shown = proxied.simple_query("SHOW application_name").await?;
        assert_eq!(
            text_row(&with_tag(&shown, b'D')[0])?,
            vec![Some("x".to_string())]
        );
        Ok(())
    })
}

/// A FunctionCall ('F', what libpq's `PQfn` and large-object calls send) is forwarded and answered as
/// the server answers it: `int4pl(2, 40)` in binary, and an unknown function OID's error.
fn function_call_is_answered_like_the_server(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let mut direct = direct_raw(ctx, SESSION).await?;
        let mut proxied = proxied_raw(&proxy, SESSION).await?;
        let call = |oid: i32| {
            let mut body = Vec::new();
            body.extend_from_slice(&oid.to_be_bytes());
            body.extend_from_slice(&1i16.to_be_bytes()); // one argument format code:
            body.extend_from_slice(&1i16.to_be_bytes()); // binary for all
            body.extend_from_slice(&2i16.to_be_bytes()); // two arguments
            for v in [2i32, 40] {
                body.extend_from_slice(&4i32.to_be_bytes());
                body.extend_from_slice(&v.to_be_bytes());
            }
            body.extend_from_slice(&1i16.to_be_bytes()); // binary result
            let mut frame = vec![b'F'];
            frame.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            frame.extend_from_slice(&body);
            frame
        };
        // 177 is int4pl in pg_proc.
        let (d, p) = exchange(&mut direct, &mut proxied, &call(177), 1).await?;
        ensure_same("FunctionCall int4pl", &d, &p)?;
        assert_eq!(tags(&p), "VZ");
        assert_eq!(&p[0].1[..], &[0, 0, 0, 4, 0, 0, 0, 42][..]);
        let (d, p) = exchange(&mut direct, &mut proxied, &call(0), 1).await?;
        assert_eq!(tags(&p), "EZ");
        assert_eq!(error_field(&p[0].1, b'C'), error_field(&d[0].1, b'C'));
        Ok(())
    })
}
