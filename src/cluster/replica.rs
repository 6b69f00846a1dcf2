//! The pure rule every replica applies to the replicated audit log topic (one partition, so one
//! order for all): which messages join the chain and which a deposed leader wrote in vain.
//!
//! A leader of epoch `e` (its Lease's `leaseTransitions`) first produces a [`Message::Marker`]
//! of epoch `e`, then reads the topic up to and including its own marker, folding what it reads
//! like any follower, and only then appends [`Message::Batch`]es of epoch `e`, each continuing
//! the chain exactly where the accepted log ends (`first_seq`, `prev`).
//!
//! Every reader, the leader included, applies [`Reader::read`] in topic order:
//! - a message of an epoch **older** than the newest epoch seen is dropped: once a marker of
//!   epoch `e + 1` is in the topic, nothing of epoch `e` after it counts;
//! - a marker of a **newer** epoch is accepted: from it on, only that epoch's batches count;
//! - a batch of the current epoch is accepted if it continues the chain (its `first_seq` is the
//!   next seq and its `prev` the hash of the last accepted line); one that does not is a gap,
//!   which a correct leader never produces (it is reported, not applied).
//!
//! Why no acknowledged record is lost: a leader answers a sender only when the broker has
//! committed the batch **and** its lease is still valid by its margin at that moment. A
//! successor takes over only after the lease expired by its own clock, which is later, and writes
//! its marker after that; so every acknowledged batch precedes the successor's marker in the
//! topic and is accepted by every reader. A batch the deposed leader got committed after its
//! validity ended was not acknowledged: if it lands before the marker it is kept (harmless, in
//! the chain), if after it, it is dropped by everyone alike.

use crate::digest::sha256_hex;

/// One message of the replicated audit log topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A leader of `epoch` has taken over; the chain goes on from what precedes this marker.
    Marker { epoch: u32, leader: String },
    /// A group-commit batch: the records' exact lines, the first with seq `first_seq`, whose
    /// `prev` is the hash of the line before it (of the log's first record: the audit log's
    /// `GENESIS`).
    Batch { epoch: u32, leader: String, first_seq: u64, prev: String, lines: Vec<String> },
    /// Where a new replica with an empty disk may start: the leader's guard state (`state`, the
    /// snapshot file's JSON) as of the record `seq`, the `checkpoint` line that starts a segment
    /// and anchors the chain there (`line`, hashing to `hash`). Published right after the batch
    /// of that one line, before any other.
    Snapshot { epoch: u32, leader: String, seq: u64, hash: String, line: String, state: Vec<u8> },
}

/// What a reader does with one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// Append these lines to the local log (in this order, byte for byte).
    Append(Vec<String>),
    /// A new epoch begins with `leader`.
    Epoch { epoch: u32, leader: String },
    /// A deposed leader's message: not part of the log.
    Stale { epoch: u32, current: u32 },
    /// A batch that does not continue the chain: not applied.
    Gap { expected_seq: u64, expected_prev: String, first_seq: u64, prev: String },
    /// A snapshot, for replicas that start with an empty disk (nothing to apply).
    Snapshot,
}

/// A replica's position in the replicated log.
#[derive(Debug, Clone, PartialEq)]
pub struct Reader {
    /// The newest epoch seen (None before any message).
    pub epoch: Option<u32>,
    /// The seq the next accepted record must have.
    pub next_seq: u64,
    /// The hash of the last accepted line (`GENESIS` before any).
    pub last_hash: String,
}

impl Default for Reader {
    /// At the start of an empty log: the first record has seq 1 and no `prev`.
    fn default() -> Reader {
        Reader { epoch: None, next_seq: 1, last_hash: crate::audit::GENESIS.to_string() }
    }
}

impl Reader {
    /// A reader whose local log already ends at `next_seq - 1` with a line hashing to
    /// `last_hash`, in `epoch`.
    pub fn at(epoch: Option<u32>, next_seq: u64, last_hash: impl Into<String>) -> Reader {
        Reader { epoch, next_seq, last_hash: last_hash.into() }
    }

    /// Apply the next message of the topic.
    pub fn read(&mut self, message: &Message) -> Read {
        let epoch = message.epoch();
        if let Some(current) = self.epoch
            && epoch < current
        {
            return Read::Stale { epoch, current };
        }
        match message {
            Message::Marker { leader, .. } => {
                self.epoch = Some(epoch);
                Read::Epoch { epoch, leader: leader.clone() }
            }
            Message::Batch { first_seq, prev, lines, .. } => {
                if self.epoch != Some(epoch) || *first_seq != self.next_seq || *prev != self.last_hash {
                    // A batch of a newer epoch without its marker, or one off the chain.
                    return Read::Gap {
                        expected_seq: self.next_seq,
                        expected_prev: self.last_hash.clone(),
                        first_seq: *first_seq,
                        prev: prev.clone(),
                    };
                }
                if let Some(last) = lines.last() {
                    self.last_hash = sha256_hex(last.as_bytes());
                    self.next_seq += lines.len() as u64;
                }
                Read::Append(lines.clone())
            }
            Message::Snapshot { .. } => Read::Snapshot,
        }
    }
}

/// Records in the topic after the record `next_seq - 1` when `last` is its newest message: a
/// batch ends at its last line's seq, a snapshot at its checkpoint's; a marker says nothing
/// (None).
pub fn records_behind(last: &Message, next_seq: u64) -> Option<u64> {
    match last {
        Message::Batch { first_seq, lines, .. } => Some((first_seq + lines.len() as u64).saturating_sub(next_seq)),
        Message::Snapshot { seq, .. } => Some((seq + 1).saturating_sub(next_seq)),
        Message::Marker { .. } => None,
    }
}

/// A new replica's first pass over the topic, from its oldest retained message to its end:
/// which snapshot to start from. Messages are read with the same rule as [`Reader::read`]; a
/// snapshot counts only if it is of the newest epoch seen and, when the chain before it is known,
/// continues it exactly. The latest that counts wins: the replica starts after it and applies
/// only what follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// The chain as read so far: known from the topic's first message (offset 0), or from the
    /// first snapshot when older messages were deleted.
    reader: Option<Reader>,
    /// The newest epoch seen, whether or not the chain is known.
    epoch: Option<u32>,
    /// The snapshot to start from: its offset, the message, and the reader after it.
    found: Option<(i64, Message, Reader)>,
}

impl Bootstrap {
    /// `from_start`: the topic's first message is its first ever (offset 0), so the chain is
    /// known from the genesis.
    pub fn new(from_start: bool) -> Bootstrap {
        Bootstrap { reader: from_start.then(Reader::default), epoch: None, found: None }
    }

    pub fn read(&mut self, offset: i64, message: &Message) {
        let epoch = message.epoch();
        if self.epoch.is_some_and(|e| epoch < e) {
            return;
        }
        if let Message::Marker { .. } = message {
            self.epoch = Some(epoch);
        }
        if let Some(reader) = &mut self.reader {
            reader.read(message);
        }
        if let Message::Snapshot { seq, hash, .. } = message {
            let continues = match &self.reader {
                Some(r) => r.epoch == Some(epoch) && r.next_seq == seq + 1 && r.last_hash == *hash,
                None => true,
            };
            if continues {
                let reader = Reader::at(Some(epoch), seq + 1, hash.clone());
                self.epoch = Some(epoch);
                self.reader = Some(reader.clone());
                self.found = Some((offset, message.clone(), reader));
            }
        }
    }

    /// The snapshot to start from (its offset, the message, the reader after it), if any.
    pub fn found(&self) -> Option<&(i64, Message, Reader)> {
        self.found.as_ref()
    }
}

/// Header names of a replicated log message (the Kafka record's headers).
pub const HEADER_KIND: &str = "backstop-kind";
pub const HEADER_EPOCH: &str = "backstop-epoch";
pub const HEADER_LEADER: &str = "backstop-leader";
pub const HEADER_FIRST_SEQ: &str = "backstop-first-seq";
pub const HEADER_PREV: &str = "backstop-prev";

/// A message that is not one of the replicated log's: which header, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("replicated log message: header {header}: {problem}")]
pub struct DecodeError {
    pub header: &'static str,
    pub problem: String,
}

impl Message {
    pub fn epoch(&self) -> u32 {
        match self {
            Message::Marker { epoch, .. } | Message::Batch { epoch, .. } | Message::Snapshot { epoch, .. } => *epoch,
        }
    }

    /// The record as written to the topic: its headers, and its value (a batch's lines, each
    /// ending in a newline, exactly as in the local segments; nothing for a marker).
    pub fn encode(&self) -> (Vec<(&'static str, Vec<u8>)>, Vec<u8>) {
        match self {
            Message::Marker { epoch, leader } => (
                vec![
                    (HEADER_KIND, b"marker".to_vec()),
                    (HEADER_EPOCH, epoch.to_string().into_bytes()),
                    (HEADER_LEADER, leader.clone().into_bytes()),
                ],
                Vec::new(),
            ),
            Message::Batch { epoch, leader, first_seq, prev, lines } => {
                let mut value = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
                for line in lines {
                    value.extend_from_slice(line.as_bytes());
                    value.push(b'\n');
                }
                (
                    vec![
                        (HEADER_KIND, b"batch".to_vec()),
                        (HEADER_EPOCH, epoch.to_string().into_bytes()),
                        (HEADER_LEADER, leader.clone().into_bytes()),
                        (HEADER_FIRST_SEQ, first_seq.to_string().into_bytes()),
                        (HEADER_PREV, prev.clone().into_bytes()),
                    ],
                    value,
                )
            }
            Message::Snapshot { epoch, leader, seq, hash, line, state } => {
                // The value is the checkpoint's line, a newline, then the state's JSON.
                let mut value = Vec::with_capacity(line.len() + 1 + state.len());
                value.extend_from_slice(line.as_bytes());
                value.push(b'\n');
                value.extend_from_slice(state);
                (
                    vec![
                        (HEADER_KIND, b"snapshot".to_vec()),
                        (HEADER_EPOCH, epoch.to_string().into_bytes()),
                        (HEADER_LEADER, leader.clone().into_bytes()),
                        (HEADER_FIRST_SEQ, seq.to_string().into_bytes()),
                        (HEADER_PREV, hash.clone().into_bytes()),
                    ],
                    value,
                )
            }
        }
    }

    /// The message a record carries, from its headers (by name, in any order) and value.
    pub fn decode(headers: &[(&str, &[u8])], value: &[u8]) -> Result<Message, DecodeError> {
        let text = |header: &'static str| -> Result<String, DecodeError> {
            let (_, bytes) = headers
                .iter()
                .find(|(name, _)| *name == header)
                .ok_or(DecodeError { header, problem: "missing".into() })?;
            String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError { header, problem: "not UTF-8".into() })
        };
        let number = |header: &'static str| -> Result<u64, DecodeError> {
            let t = text(header)?;
            t.parse().map_err(|_| DecodeError { header, problem: format!("`{t}` is not a number") })
        };
        let epoch = u32::try_from(number(HEADER_EPOCH)?)
            .map_err(|_| DecodeError { header: HEADER_EPOCH, problem: "out of range".into() })?;
        let leader = text(HEADER_LEADER)?;
        match text(HEADER_KIND)?.as_str() {
            "marker" => Ok(Message::Marker { epoch, leader }),
            "batch" => {
                let body = std::str::from_utf8(value)
                    .map_err(|_| DecodeError { header: "value", problem: "not UTF-8".into() })?;
                let Some(body) = body.strip_suffix('\n') else {
                    return Err(DecodeError { header: "value", problem: "a batch's lines end in a newline".into() });
                };
                Ok(Message::Batch {
                    epoch,
                    leader,
                    first_seq: number(HEADER_FIRST_SEQ)?,
                    prev: text(HEADER_PREV)?,
                    lines: body.split('\n').map(str::to_string).collect(),
                })
            }
            "snapshot" => {
                let Some(newline) = value.iter().position(|b| *b == b'\n') else {
                    return Err(DecodeError {
                        header: "value",
                        problem: "a snapshot starts with its checkpoint's line".into(),
                    });
                };
                let line = std::str::from_utf8(&value[..newline])
                    .map_err(|_| DecodeError { header: "value", problem: "not UTF-8".into() })?;
                let hash = text(HEADER_PREV)?;
                if sha256_hex(line.as_bytes()) != hash {
                    return Err(DecodeError {
                        header: HEADER_PREV,
                        problem: "not the hash of the checkpoint's line".into(),
                    });
                }
                Ok(Message::Snapshot {
                    epoch,
                    leader,
                    seq: number(HEADER_FIRST_SEQ)?,
                    hash,
                    line: line.to_string(),
                    state: value[newline + 1..].to_vec(),
                })
            }
            other => Err(DecodeError {
                header: HEADER_KIND,
                problem: format!("`{other}` is not a marker, a batch or a snapshot"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::GENESIS;

    fn batch(epoch: u32, leader: &str, first_seq: u64, prev: &str, lines: &[&str]) -> Message {
        Message::Batch {
            epoch,
            leader: leader.into(),
            first_seq,
            prev: prev.into(),
            lines: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    fn marker(epoch: u32, leader: &str) -> Message {
        Message::Marker { epoch, leader: leader.into() }
    }

    fn h(line: &str) -> String {
        sha256_hex(line.as_bytes())
    }

    /// The topic of a takeover: a's batches, a's late batch after b's marker, b's batches.
    fn topic() -> Vec<Message> {
        vec![
            marker(0, "a"),
            batch(0, "a", 1, GENESIS, &["r1", "r2"]),
            batch(0, "a", 3, &h("r2"), &["r3"]),
            marker(1, "b"),
            // a, paused past its lease, wakes and produces once more: too late.
            batch(0, "a", 4, &h("r3"), &["late"]),
            batch(1, "b", 4, &h("r3"), &["r4"]),
        ]
    }

    #[test]
    fn every_reader_keeps_the_same_chain_and_drops_the_deposed_leaders_late_batch() {
        let mut reader = Reader::default();
        let reads: Vec<Read> = topic().iter().map(|m| reader.read(m)).collect();
        assert_eq!(
            reads,
            vec![
                Read::Epoch { epoch: 0, leader: "a".into() },
                Read::Append(vec!["r1".into(), "r2".into()]),
                Read::Append(vec!["r3".into()]),
                Read::Epoch { epoch: 1, leader: "b".into() },
                Read::Stale { epoch: 0, current: 1 },
                Read::Append(vec!["r4".into()]),
            ]
        );
        assert_eq!((reader.epoch, reader.next_seq, reader.last_hash.clone()), (Some(1), 5, h("r4")));
    }

    #[test]
    fn a_batch_the_deposed_leader_landed_before_the_marker_is_kept_by_everyone() {
        // a's validity ended, but its batch landed before b's marker: not acknowledged, yet in
        // the chain for every reader; b, reading up to its marker, continues after it.
        let topic = [
            marker(0, "a"),
            batch(0, "a", 1, GENESIS, &["r1"]),
            batch(0, "a", 2, &h("r1"), &["unacknowledged"]),
            marker(1, "b"),
            batch(1, "b", 3, &h("unacknowledged"), &["r3"]),
        ];
        let mut reader = Reader::default();
        let appended: Vec<String> = topic
            .iter()
            .filter_map(|m| match reader.read(m) {
                Read::Append(lines) => Some(lines),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(appended, ["r1", "unacknowledged", "r3"]);
    }

    #[test]
    fn a_batch_off_the_chain_or_without_its_marker_is_a_gap_not_applied() {
        let mut reader = Reader::default();
        reader.read(&marker(0, "a"));
        reader.read(&batch(0, "a", 1, GENESIS, &["r1"]));
        let skipped = reader.read(&batch(0, "a", 3, &h("r2"), &["r3"]));
        assert_eq!(skipped, Read::Gap { expected_seq: 2, expected_prev: h("r1"), first_seq: 3, prev: h("r2") });
        let unannounced = reader.read(&batch(2, "c", 2, &h("r1"), &["x"]));
        assert!(matches!(unannounced, Read::Gap { .. }), "a newer epoch's batch before its marker");
        assert_eq!((reader.next_seq, reader.epoch), (2, Some(0)), "nothing applied");
    }

    #[test]
    fn a_reader_must_resume_where_it_left_the_topic_not_only_where_its_log_ends() {
        // A reader whose log ends at r3 but that skips b's marker (resuming past it) would take
        // a's late batch: the epoch comes from the markers, so a replica saves its Reader with
        // the topic offset it has read up to, and resumes from that offset.
        let mut reader = Reader::at(Some(0), 4, h("r3"));
        let reads: Vec<Read> = topic()[4..].iter().map(|m| reader.read(m)).collect();
        assert_eq!(reads[0], Read::Append(vec!["late".into()]));
        assert!(matches!(reads[1], Read::Gap { .. }), "b's batch then does not continue the chain");
        // Resumed at the marker instead, it keeps the same chain as everyone.
        let mut reader = Reader::at(Some(0), 4, h("r3"));
        let reads: Vec<Read> = topic()[3..].iter().map(|m| reader.read(m)).collect();
        assert_eq!(reads[1], Read::Stale { epoch: 0, current: 1 });
        assert_eq!(reads[2], Read::Append(vec!["r4".into()]));
    }

    fn round_trip(m: &Message) -> Result<Message, DecodeError> {
        let (headers, value) = m.encode();
        let borrowed: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        Message::decode(&borrowed, &value)
    }

    #[test]
    fn messages_round_trip_through_headers_and_value() {
        for m in topic() {
            assert_eq!(round_trip(&m), Ok(m.clone()));
        }
        let (_, value) = batch(0, "a", 1, GENESIS, &["{\"seq\":1}", "{\"seq\":2}"]).encode();
        assert_eq!(value, b"{\"seq\":1}\n{\"seq\":2}\n", "the lines as in the segments");
    }

    #[test]
    fn a_record_that_is_not_a_replicated_message_is_refused_naming_the_header() {
        let err = Message::decode(&[(HEADER_KIND, b"batch"), (HEADER_EPOCH, b"x")], b"").unwrap_err();
        assert_eq!(err.to_string(), "replicated log message: header backstop-epoch: `x` is not a number");
        let err = Message::decode(&[(HEADER_EPOCH, b"1"), (HEADER_LEADER, b"a")], b"").unwrap_err();
        assert_eq!((err.header, err.problem.as_str()), (HEADER_KIND, "missing"));
        let headers: &[(&str, &[u8])] = &[
            (HEADER_KIND, b"batch"),
            (HEADER_EPOCH, b"1"),
            (HEADER_LEADER, b"a"),
            (HEADER_FIRST_SEQ, b"1"),
            (HEADER_PREV, b""),
        ];
        assert_eq!(Message::decode(headers, b"torn").unwrap_err().header, "value");
    }

    fn snapshot(epoch: u32, seq: u64, line: &str) -> Message {
        Message::Snapshot { epoch, leader: "a".into(), seq, hash: h(line), line: line.into(), state: b"{}".to_vec() }
    }

    #[test]
    fn a_snapshot_round_trips_and_one_whose_line_does_not_hash_as_said_is_refused() {
        let m = snapshot(3, 7, r#"{"seq":7,"kind":"checkpoint"}"#);
        let (pairs, value) = m.encode();
        let headers: Vec<(&str, &[u8])> = pairs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        assert_eq!(Message::decode(&headers, &value), Ok(m));
        let mut forged = value.clone();
        forged[0] = b' ';
        assert_eq!(Message::decode(&headers, &forged).unwrap_err().header, HEADER_PREV);
        assert_eq!(Reader::default().read(&snapshot(0, 1, "x")), Read::Snapshot, "nothing to apply");
    }

    #[test]
    fn a_new_replica_starts_from_the_latest_snapshot_that_continues_the_chain() {
        let c1 = "checkpoint at 2";
        let c2 = "checkpoint at 4";
        let topic = [
            marker(0, "a"),
            batch(0, "a", 1, GENESIS, &["r1"]),
            batch(0, "a", 2, &h("r1"), &[c1]),
            snapshot(0, 2, c1),
            batch(0, "a", 3, &h(c1), &["r3"]),
            batch(0, "a", 4, &h("r3"), &[c2]),
            snapshot(0, 4, c2),
            // Off the chain (says seq 4 again, but the chain is at 5 by now): ignored.
            snapshot(0, 4, "another line"),
            batch(0, "a", 5, &h(c2), &["r5"]),
        ];
        let mut b = Bootstrap::new(true);
        for (offset, m) in topic.iter().enumerate() {
            b.read(offset as i64, m);
        }
        let (offset, m, reader) = b.found().unwrap();
        assert_eq!((*offset, m), (6, &topic[6]));
        assert_eq!(*reader, Reader::at(Some(0), 5, h(c2)), "the reader resumes after the checkpoint");
    }

    #[test]
    fn a_replica_whose_topic_lost_its_oldest_messages_starts_from_a_snapshot_never_a_deposed_leaders() {
        let c1 = "checkpoint at 10";
        let late = "a's checkpoint after b took over";
        let topic = [
            // The messages before offset 20 are gone (retention).
            batch(0, "a", 9, &h("r8"), &["r9"]),
            batch(0, "a", 10, &h("r9"), &[c1]),
            snapshot(0, 10, c1),
            marker(1, "b"),
            // a, paused past its lease, wakes and publishes once more: too late.
            batch(0, "a", 11, &h(c1), &[late]),
            snapshot(0, 11, late),
            batch(1, "b", 11, &h(c1), &["r11"]),
        ];
        let mut b = Bootstrap::new(false);
        for (offset, m) in topic.iter().enumerate() {
            b.read(20 + offset as i64, m);
        }
        let (offset, _, reader) = b.found().unwrap();
        assert_eq!(*offset, 22);
        assert_eq!(reader.next_seq, 11);
        // Without any snapshot there is nowhere to start.
        let mut none = Bootstrap::new(false);
        none.read(20, &topic[0]);
        assert!(none.found().is_none());
    }

    #[test]
    fn the_records_behind_are_counted_from_the_newest_message() {
        let last = batch(2, "b", 41, "h", &["r41", "r42", "r43"]);
        assert_eq!(records_behind(&last, 31), Some(13), "applied up to 30; the topic ends at 43");
        assert_eq!(records_behind(&last, 44), Some(0), "caught up");
        assert_eq!(records_behind(&snapshot(2, 50, "c"), 44), Some(7));
        assert_eq!(records_behind(&marker(3, "c"), 44), None);
    }
}
