//! Opens N authenticated client connections, runs one query on each, then holds them idle until its
//! stdin closes. `scripts/bench.sh` uses it to measure what 1,000 idle clients cost the proxy in RSS.
//!
//!     idle_clients postgres://app:secret@127.0.0.1:6432/app 1000

use std::io::Read;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or("usage: idle_clients URL COUNT")?;
    let count: usize = args
        .next()
        .ok_or("usage: idle_clients URL COUNT")?
        .parse()?;
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("client {i}: {e}"))?;
        tokio::spawn(conn);
        client.simple_query("SELECT 1").await?;
        clients.push(client);
    }
    println!("READY {count}");
    // Hold the connections until stdin closes.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    drop(clients);
    Ok(())
}
