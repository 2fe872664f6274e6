//! What went through each server: statements, transactions, bytes, errors, time; and the latency
//! histograms `/metrics` and `SHOW STATS` report. Atomics only (relaxed), added to once per answer
//! or per socket read/write, never per row. Each worker writes its own cache-line-aligned slot
//! (by worker index), so the workers never contend for a counter; readers sum the slots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds (Prometheus `le`, in seconds).
pub const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// What a histogram holds at one moment: cumulative counts per upper bound in seconds (None:
/// +Inf), the sum in seconds, the count.
pub type Snapshot = (Vec<(Option<f64>, u64)>, f64, u64);

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
    pub fn snapshot(&self) -> Snapshot {
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

/// Slots per counter set: workers beyond this share slots (still correct, only contended).
pub const SLOTS: usize = 16;

/// A histogram per worker.
#[derive(Debug, Default)]
pub struct WorkerHistograms {
    slots: [Padded<Histogram>; SLOTS],
}

/// Keeps a slot on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl WorkerHistograms {
    pub fn record(&self, worker: usize, took: Duration) {
        self.slots[worker % SLOTS].0.record(took);
    }

    /// The slots summed: cumulative counts per bound (the last is +Inf), sum in seconds, count.
    pub fn snapshot(&self) -> Snapshot {
        let mut total: Option<Snapshot> = None;
        for slot in &self.slots {
            let (b, sum, count) = slot.0.snapshot();
            total = Some(match total {
                None => (b, sum, count),
                Some((mut tb, tsum, tcount)) => {
                    for (t, x) in tb.iter_mut().zip(&b) {
                        t.1 += x.1;
                    }
                    (tb, tsum + sum, tcount + count)
                }
            });
        }
        total.unwrap_or_default()
    }

    pub fn count(&self) -> u64 {
        self.slots.iter().map(|s| s.0.count()).sum()
    }

    pub fn sum_us(&self) -> u64 {
        self.slots.iter().map(|s| s.0.sum_us()).sum()
    }
}

/// One worker's counters of one server.
#[derive(Debug, Default)]
struct Counters {
    /// Answers completed (each ReadyForQuery), by [`RouteKind`].
    queries: [AtomicU64; 3],
    /// Answers that left no transaction open (autocommit statements and COMMIT/ROLLBACK).
    transactions: AtomicU64,
    /// Bytes written to the server and read from it.
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    /// ErrorResponses the server sent.
    errors: AtomicU64,
}

/// One server's counters.
#[derive(Debug, Default)]
pub struct ServerStats {
    slots: [Padded<Counters>; SLOTS],
    /// From the request's first byte written to its ReadyForQuery.
    pub latency: WorkerHistograms,
}

impl ServerStats {
    fn slot(&self, worker: usize) -> &Counters {
        &self.slots[worker % SLOTS].0
    }

    fn sum(&self, f: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.slots
            .iter()
            .map(|s| f(&s.0).load(Ordering::Relaxed))
            .sum()
    }

    /// One answer completed on `worker`: `took` since its request was written, `idle` whether no
    /// transaction is left open.
    pub fn answered(&self, worker: usize, route: RouteKind, took: Option<Duration>, idle: bool) {
        let c = self.slot(worker);
        c.queries[route as usize].fetch_add(1, Ordering::Relaxed);
        if idle {
            c.transactions.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = took {
            self.latency.record(worker, t);
        }
    }

    pub fn sent(&self, worker: usize, bytes: usize) {
        self.slot(worker)
            .bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn received(&self, worker: usize, bytes: usize) {
        self.slot(worker)
            .bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn error(&self, worker: usize) {
        self.slot(worker).errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn queries(&self, route: RouteKind) -> u64 {
        self.sum(|c| &c.queries[route as usize])
    }

    pub fn total_queries(&self) -> u64 {
        RouteKind::ALL.iter().map(|r| self.queries(*r)).sum()
    }

    pub fn transactions(&self) -> u64 {
        self.sum(|c| &c.transactions)
    }

    pub fn bytes_sent(&self) -> u64 {
        self.sum(|c| &c.bytes_sent)
    }

    pub fn bytes_received(&self) -> u64 {
        self.sum(|c| &c.bytes_received)
    }

    pub fn errors(&self) -> u64 {
        self.sum(|c| &c.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_sum_and_buckets_are_cumulative() {
        let s = ServerStats::default();
        s.answered(0, RouteKind::Single, Some(Duration::from_micros(300)), true);
        s.answered(1, RouteKind::Single, Some(Duration::from_millis(3)), false);
        s.answered(
            17,
            RouteKind::Broadcast,
            Some(Duration::from_secs(30)),
            true,
        );
        s.sent(0, 10);
        s.sent(5, 5);
        s.error(3);
        assert_eq!(s.queries(RouteKind::Single), 2);
        assert_eq!(s.total_queries(), 3);
        assert_eq!(s.transactions(), 2);
        assert_eq!(s.bytes_sent(), 15);
        assert_eq!(s.errors(), 1);
        let (buckets, sum, count) = s.latency.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 30.0033).abs() < 1e-9, "{sum}");
        // <= 0.5 ms: 1; <= 5 ms: 2; +Inf: 3.
        assert_eq!(buckets[0], (Some(0.0005), 1));
        assert_eq!(buckets[3], (Some(0.005), 2));
        assert_eq!(buckets.last(), Some(&(None, 3)));
        assert_eq!(buckets[buckets.len() - 2].1, 2, "30 s is above every bound");
    }
}
