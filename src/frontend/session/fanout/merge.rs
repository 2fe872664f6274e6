//! The answers of several shards to one group, merged into the one answer a single server would
//! give: descriptions and notices from the first shard, rows from every shard in shard order,
//! CommandComplete counts summed (or counted once for a table every shard holds a copy of), the
//! first error.

use bytes::{Bytes, BytesMut};

use crate::protocol::backend as be;

/// One shard's answer to a group, frame by frame (without its ReadyForQuery).
pub(super) type Answer = Vec<(u8, Bytes)>;

/// Merges the answers of several shards to one group into the client's answer. Returns false when
/// the group failed (the first error was sent).
pub(super) fn merge(answers: &[Answer], out: &mut BytesMut, sum: bool) -> bool {
    // Each answer is a sequence of results, each ended by CommandComplete, EmptyQueryResponse,
    // PortalSuspended or ErrorResponse (an error ends the answer).
    let mut cursors = vec![0usize; answers.len()];
    let Some(first) = answers.first() else {
        return true;
    };
    let ends = |tag: u8| {
        matches!(
            tag,
            be::COMMAND_COMPLETE
                | be::EMPTY_QUERY_RESPONSE
                | be::PORTAL_SUSPENDED
                | be::ERROR_RESPONSE
        )
    };
    loop {
        // Any error among the shards at this point wins.
        for (i, a) in answers.iter().enumerate() {
            let mut c = cursors[i];
            while c < a.len() && !ends(a[c].0) {
                c += 1;
            }
            if c < a.len() && a[c].0 == be::ERROR_RESPONSE {
                // What came before the error on the first shard (descriptions, rows) still goes.
                write_frame(out, be::ERROR_RESPONSE, &a[c].1);
                return false;
            }
        }
        if cursors[0] >= first.len() {
            return true;
        }
        // Descriptions and notices from the first shard, rows from all, counts summed.
        let mut total: u64 = 0;
        let mut end: Option<&(u8, Bytes)> = None;
        for (i, a) in answers.iter().enumerate() {
            while cursors[i] < a.len() {
                let (tag, body) = &a[cursors[i]];
                cursors[i] += 1;
                if ends(*tag) {
                    if let Some(n) = be::command_count(body)
                        && (sum || i == 0)
                    {
                        total += n;
                    }
                    if i == 0 {
                        end = Some(&a[cursors[i] - 1]);
                    }
                    break;
                }
                if i == 0 || (*tag == be::DATA_ROW && sum) {
                    write_frame(out, *tag, body);
                }
            }
        }
        match end {
            Some((be::COMMAND_COMPLETE, body)) => {
                let tag = be::command_tag(body);
                match be::with_count(tag, total) {
                    Some(t) => be::write_command_complete(out, &t),
                    None => write_frame(out, be::COMMAND_COMPLETE, body),
                }
            }
            Some((tag, body)) => write_frame(out, *tag, body),
            None => return true,
        }
    }
}

pub(super) fn write_frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> (u8, Bytes) {
        (tag, Bytes::copy_from_slice(body))
    }

    fn tags(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        let mut off = 0;
        while off < out.len() {
            let len = u32::from_be_bytes(out[off + 1..off + 5].try_into().unwrap()) as usize;
            v.push((out[off], out[off + 5..off + 1 + len].to_vec()));
            off += 1 + len;
        }
        v
    }

    fn select(rows: &[&[u8]], n: &str) -> Answer {
        let mut a = vec![frame(be::ROW_DESCRIPTION, b"desc")];
        a.extend(rows.iter().map(|r| frame(be::DATA_ROW, r)));
        a.push(frame(
            be::COMMAND_COMPLETE,
            format!("SELECT {n}\0").as_bytes(),
        ));
        a
    }

    #[test]
    fn rows_of_every_shard_one_description_summed_count() {
        let mut out = BytesMut::new();
        assert!(merge(
            &[select(&[b"a", b"b"], "2"), select(&[b"c"], "1")],
            &mut out,
            true
        ));
        let got = tags(&out);
        assert_eq!(
            got,
            vec![
                (be::ROW_DESCRIPTION, b"desc".to_vec()),
                (be::DATA_ROW, b"a".to_vec()),
                (be::DATA_ROW, b"b".to_vec()),
                (be::DATA_ROW, b"c".to_vec()),
                (be::COMMAND_COMPLETE, b"SELECT 3\0".to_vec()),
            ]
        );
    }

    #[test]
    fn a_copy_on_every_shard_counts_once() {
        let mut out = BytesMut::new();
        let insert = |n: &str| {
            vec![frame(
                be::COMMAND_COMPLETE,
                format!("INSERT 0 {n}\0").as_bytes(),
            )]
        };
        assert!(merge(&[insert("2"), insert("2")], &mut out, false));
        assert_eq!(
            tags(&out),
            vec![(be::COMMAND_COMPLETE, b"INSERT 0 2\0".to_vec())]
        );
        let mut out = BytesMut::new();
        assert!(merge(
            &[select(&[b"a"], "1"), select(&[b"a"], "1")],
            &mut out,
            false
        ));
        assert_eq!(
            tags(&out)
                .iter()
                .filter(|(t, _)| *t == be::DATA_ROW)
                .count(),
            1
        );
    }

    #[test]
    fn the_first_error_wins_and_ends_the_answer() {
        let mut out = BytesMut::new();
        let failed = vec![frame(be::ERROR_RESPONSE, b"SERROR\0")];
        assert!(!merge(&[select(&[b"a"], "1"), failed], &mut out, true));
        assert_eq!(tags(&out), vec![(be::ERROR_RESPONSE, b"SERROR\0".to_vec())]);
    }

    #[test]
    fn several_results_are_merged_one_by_one() {
        let mut out = BytesMut::new();
        let two = |x: &'static [u8]| {
            let mut a = select(&[x], "1");
            a.extend(select(&[x, x], "2"));
            a
        };
        assert!(merge(&[two(b"a"), two(b"b")], &mut out, true));
        let completes: Vec<Vec<u8>> = tags(&out)
            .into_iter()
            .filter(|(t, _)| *t == be::COMMAND_COMPLETE)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(
            completes,
            vec![b"SELECT 2\0".to_vec(), b"SELECT 4\0".to_vec()]
        );
        assert_eq!(
            tags(&out)
                .iter()
                .filter(|(t, _)| *t == be::ROW_DESCRIPTION)
                .count(),
            2
        );
    }
}
