//! What went through each server: statements, transactions, bytes, errors, time; and the latency
//! histograms `/metrics` and `SHOW STATS` report. Atomics only (relaxed): sessions on every worker
//! add to them once per answer, never per row.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds (Prometheus `le`, in seconds).
pub const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram: counts per bucket (not cumulative), the sum and the count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    /// Above the last bound.
    over: AtomicU64,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        match BUCKETS_US.iter().position(|b| us <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is +Inf), the sum in seconds, the count.
    pub fn snapshot(&self) -> (Vec<(Option<f64>, u64)>, f64, u64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(BUCKETS_US.len() + 1);
        for (b, n) in BUCKETS_US.iter().zip(&self.buckets) {
            total += n.load(Ordering::Relaxed);
            out.push((Some(*b as f64 / 1e6), total));
        }
        total += self.over.load(Ordering::Relaxed);
        out.push((None, total));
        (
            out,
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            self.count.load(Ordering::Relaxed),
        )
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }
}

/// How a request was routed (`shardgate_queries_total{route}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// One shard.
    Single = 0,
    /// Some of the shards.
    Multi = 1,
    /// Every shard.
    Broadcast = 2,
}

impl RouteKind {
    pub const ALL: [RouteKind; 3] = [RouteKind::Single, RouteKind::Multi, RouteKind::Broadcast];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Single => "single",
            RouteKind::Multi => "multi",
            RouteKind::Broadcast => "broadcast",
        }
    }
}

/// One server's counters.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Answers completed (each ReadyForQuery), by [`RouteKind`].
    queries: [AtomicU64; 3],
    /// Answers that left no transaction open (autocommit statements and COMMIT/ROLLBACK).
    transactions: AtomicU64,
    /// Bytes written to the server and read from it.
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    /// ErrorResponses the server sent.
    errors: AtomicU64,
    /// From the request's first byte written to its ReadyForQuery.
    pub latency: Histogram,
}

impl ServerStats {
    /// One answer completed: `took` since its request was written, `idle` whether no transaction
    /// is left open.
    pub fn answered(&self, route: RouteKind, took: Option<Duration>, idle: bool) {
        self.queries[route as usize].fetch_add(1, Ordering::Relaxed);
        if idle {
            self.transactions.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = took {
            self.latency.record(t);
        }
    }

    pub fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn queries(&self, route: RouteKind) -> u64 {
        self.queries[route as usize].load(Ordering::Relaxed)
    }

    pub fn total_queries(&self) -> u64 {
        RouteKind::ALL.iter().map(|r| self.queries(*r)).sum()
    }

    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}
