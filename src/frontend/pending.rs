//! What a server connection still owes the client, in order: one entry per forwarded request that gets
//! an answer, plus the answers the proxy makes up itself (a ParseComplete for a statement the
//! connection already holds, a CloseComplete for a statement name that only the proxy knows, an error
//! the proxy raised). Entries are popped as the server's answers arrive; made-up answers are sent when
//! they reach the front, so the client sees everything in the order it asked.

use bytes::Bytes;

#[derive(Debug)]
pub enum Pending {
    /// ParseComplete. `swallow`: the proxy injected this Parse, the client must not see its answer.
    Parse {
        stmt: Option<u64>,
        client_name: Option<Bytes>,
        swallow: bool,
    },
    /// A ParseComplete the proxy sends itself (the connection already holds the statement).
    SynthParseComplete,
    Bind,
    /// Describe: ends with RowDescription or NoData (after a ParameterDescription for a statement).
    Describe,
    /// Execute: ends with CommandComplete, EmptyQueryResponse or PortalSuspended. `copy_ends`: how
    /// many COPY data streams the client had ended when it sent this (see `Sync`).
    Execute {
        copy_ends: u32,
    },
    Close,
    /// A CloseComplete the proxy sends itself (a statement close, which never reaches a server).
    SynthCloseComplete,
    /// An ErrorResponse the proxy raised; the rest of the segment is skipped as a server would.
    LocalError(Bytes),
    /// Sync: ends with ReadyForQuery. A Sync the client sends while a server is in COPY FROM STDIN
    /// (started by an Execute) is ignored by the server; `copy_ends` tells which those are.
    Sync {
        copy_ends: u32,
    },
    /// A simple Query: ends with ReadyForQuery.
    SimpleQuery,
    /// FunctionCall: ends with ReadyForQuery.
    FunctionCall,
    /// A query the proxy sent itself (the WAL position after a write, a deferred BEGIN): its whole
    /// answer, through ReadyForQuery, is kept from the client.
    Internal {
        wal_position: bool,
    },
    /// Answers the proxy makes up for a statement it runs itself (`SET shardgate.*`).
    Synth(Bytes),
    /// A ReadyForQuery the proxy makes up, with the transaction status at the time it is sent.
    SynthReady,
}

impl Pending {
    /// Answers the proxy makes up: sent as soon as they reach the front.
    #[inline]
    pub fn is_synthetic(&self) -> bool {
        matches!(
            self,
            Pending::SynthParseComplete
                | Pending::SynthCloseComplete
                | Pending::LocalError(_)
                | Pending::Synth(_)
                | Pending::SynthReady
        )
    }

    /// Entries whose answer ends with ReadyForQuery.
    #[inline]
    pub fn ends_with_ready(&self) -> bool {
        matches!(
            self,
            Pending::Sync { .. } | Pending::SimpleQuery | Pending::FunctionCall
        )
    }
}
