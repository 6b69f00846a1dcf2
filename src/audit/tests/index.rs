//! The segment indexes: a read through them gives exactly what a scan of the log gives, for the
//! kinds they hold, also when an index is missing, torn, or has a gap.

use super::*;
use crate::audit::index;

/// A log over many small segments: intake (received, with and without a target), matches,
/// held and applied records of two targets, controls.
async fn mixed_log(dir: &std::path::Path) {
    let log = AuditLog::open(dir, AuditOptions { segment_max_bytes: 2_000, ..AuditOptions::default() }).unwrap();
    for i in 0..120 {
        let event = format!("e{i}");
        let target = if i % 3 == 0 { "ns/a" } else { "ns/b" };
        let mut batch = vec![
            Entry::new(Kind::Received).event_id(&event).source("alertmanager").detail(json!({"alert": {"n": i}})),
            Entry::new(Kind::Received).event_id(format!("f{i}")).target(target).source("http"),
        ];
        if i % 2 == 0 {
            batch.push(Entry::new(Kind::Matched).event_id(&event).rule(if i % 4 == 0 { "r1" } else { "r2" }));
        }
        if i % 4 == 0 {
            let action = format!("act-{i}");
            batch.push(Entry::new(Kind::Decided).event_id(&event).rule("r1").target(target).action_id(&action));
            batch.push(
                Entry::new(Kind::Applied)
                    .event_id(&event)
                    .rule("r1")
                    .target(target)
                    .action_id(&action)
                    .before(json!(1)),
            );
        } else if i % 2 == 0 {
            batch.push(Entry::new(Kind::Held).event_id(&event).rule("r2").target(target).reason("cooldown"));
        }
        if i == 77 {
            batch.push(Entry::new(Kind::Control).target("ns/a").actor("on-call").reason("pause"));
        }
        // Some batches one record at a time, some whole.
        if i % 5 == 0 {
            for e in batch {
                log.append(vec![e]).await.unwrap();
            }
        } else {
            log.append(batch).await.unwrap();
        }
    }
    log.close().await.unwrap();
}

fn filters() -> Vec<Filter> {
    let t = |s: &str| Some(s.to_string());
    vec![
        Filter::default(),
        Filter { target: t("ns/a"), ..Default::default() },
        Filter { target: t("ns/b"), limit: Some(7), ..Default::default() },
        Filter { action_id: t("act-40"), ..Default::default() },
        Filter { event_id: t("e44"), ..Default::default() },
        Filter { rule: t("r2"), kinds: vec![Kind::Held], ..Default::default() },
        Filter { target: t("ns/a"), after_seq: Some(200), ..Default::default() },
    ]
}

/// What a scan of the whole log gives for the indexed kinds.
fn scanned(dir: &std::path::Path, f: &Filter) -> Vec<u64> {
    let mut all = query(dir, &Filter { limit: None, ..f.clone() }).unwrap();
    all.retain(|r| index::indexed(r.entry.kind));
    let skip = f.limit.map_or(0, |l| all.len().saturating_sub(l));
    all.into_iter().skip(skip).map(|r| r.seq).collect()
}

fn indexed(dir: &std::path::Path, f: &Filter) -> Vec<u64> {
    query_indexed(dir, f).unwrap().into_iter().map(|r| r.seq).collect()
}

fn assert_same(dir: &std::path::Path, when: &str) {
    for f in filters() {
        let want = scanned(dir, &f);
        assert!(!want.is_empty(), "{when}: the filter {f:?} finds something");
        assert_eq!(indexed(dir, &f), want, "{when}: {f:?}");
    }
}

fn index_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    segments(dir).unwrap().into_iter().map(|(_, p)| index::path_of(&p)).filter(|p| p.exists()).collect()
}

#[tokio::test]
async fn a_read_through_the_indexes_gives_what_a_scan_gives() {
    let dir = tempfile::tempdir().unwrap();
    mixed_log(dir.path()).await;
    let segs = segments(dir.path()).unwrap();
    assert!(segs.len() > 10, "{} segments", segs.len());
    assert_eq!(index_files(dir.path()).len(), segs.len(), "every segment has its index");
    // ... covering the whole of each sealed segment: a read needs none of their own lines. (The
    // open one's intake since its last mark is read by readers, and completed at start.)
    for (_, seg) in &segs[..segs.len() - 1] {
        assert_eq!(index::covered(seg), std::fs::metadata(seg).unwrap().len(), "{}", seg.display());
    }
    assert_same(dir.path(), "with every index");
    // Intake is not in the indexes: they are much smaller than the log.
    let log_bytes: u64 = segs.iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum();
    let idx_bytes: u64 = index_files(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(idx_bytes < log_bytes, "{idx_bytes} of index for {log_bytes} of log");
}

#[tokio::test]
async fn without_an_index_or_with_a_torn_one_or_a_gap_the_answers_are_the_same() {
    let dir = tempfile::tempdir().unwrap();
    mixed_log(dir.path()).await;
    let idx = index_files(dir.path());
    // One index gone, one torn in the middle of a line, one with a mark whose range does not
    // follow the one before (a gap), one with a posting pointing past its mark's range.
    std::fs::remove_file(&idx[1]).unwrap();
    let text = std::fs::read_to_string(&idx[2]).unwrap();
    std::fs::write(&idx[2], &text[..text.len() / 2]).unwrap();
    let text = std::fs::read_to_string(&idx[3]).unwrap();
    std::fs::write(&idx[3], text.replacen("\"from\":0,", "\"from\":5,", 1)).unwrap();
    std::fs::write(&idx[4], "not an index\n").unwrap();
    assert_same(dir.path(), "with broken indexes");
    // The open segment's index lost its end (a crash before the index write): the writer
    // completes it at start, from the segment.
    let last = idx.last().unwrap();
    std::fs::write(last, "").unwrap();
    let log = AuditLog::open(dir.path(), AuditOptions { segment_max_bytes: 2_000, ..AuditOptions::default() }).unwrap();
    let seg = segments(dir.path()).unwrap().last().unwrap().1.clone();
    let text = std::fs::read_to_string(last).unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    assert!(text.ends_with(&format!("\"to\":{len},\"next_seq\":{}}}}}\n", log.last().0 + 1)), "{text}");
    log.append(vec![Entry::new(Kind::Held).target("ns/a").rule("r2").event_id("late")]).await.unwrap();
    assert_same(dir.path(), "after the open segment's index was completed");
    assert_eq!(indexed(dir.path(), &Filter { event_id: Some("late".into()), ..Default::default() }).len(), 1);
}

#[tokio::test]
async fn an_alerts_received_record_is_found_just_before_its_decision() {
    let dir = tempfile::tempdir().unwrap();
    mixed_log(dir.path()).await;
    let applied =
        query_indexed(dir.path(), &Filter { action_id: Some("act-96".into()), ..Default::default() }).unwrap();
    let received = received_before(dir.path(), "e96", applied[0].seq).unwrap().expect("found");
    assert_eq!((received.entry.kind, received.entry.event_id.as_deref()), (Kind::Received, Some("e96")));
    assert_eq!(received.entry.detail.unwrap()["alert"]["n"], 96);
    // Not after it, and not another event's.
    assert_eq!(received_before(dir.path(), "e97", applied[0].seq).unwrap(), None);
}

#[tokio::test]
async fn an_alerts_received_record_is_found_across_a_seal() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of about 1 kB: the alert's delivery ends one, its decision starts the next.
    let log = AuditLog::open(dir.path(), AuditOptions { segment_max_bytes: 1_000, ..AuditOptions::default() }).unwrap();
    let filler =
        |i: usize| Entry::new(Kind::Received).event_id(format!("f{i}")).detail(json!({"pad": "x".repeat(100)}));
    let mut n = 0;
    while segments(dir.path()).unwrap().len() < 2 {
        log.append(vec![filler(n)]).await.unwrap();
        n += 1;
    }
    // The delivery, then enough to start another segment, then the decision there.
    let delivered = Entry::new(Kind::Received).source("alertmanager").detail(json!({
        "format": 2, "delivery": {},
        "alerts": [{"id": "a1-1795550591", "status": "firing", "labels": {"alertname": "A"}, "starts_at": "2026-11-24T20:03:11Z"}],
    }));
    let delivered = log.append(vec![delivered]).await.unwrap()[0].seq;
    let segs_then = segments(dir.path()).unwrap().len();
    while segments(dir.path()).unwrap().len() == segs_then {
        log.append(vec![filler(n)]).await.unwrap();
        n += 1;
    }
    let decided = log.append(vec![Entry::new(Kind::Decided).event_id("a1-1795550591").rule("r")]).await.unwrap();
    let seq = decided[0].seq;
    let segs = segments(dir.path()).unwrap();
    assert!(segs.last().unwrap().0 > delivered, "the delivery is in a segment before the decision's");
    let received = received_before(dir.path(), "a1-1795550591", seq).unwrap().expect("found in an earlier segment");
    assert_eq!(received.seq, delivered);
    assert_eq!(crate::event::alert_ids(received.entry.detail.as_ref()), ["a1-1795550591"]);
    log.close().await.unwrap();
}

#[tokio::test]
async fn retention_removes_a_segments_index_with_it() {
    let dir = tempfile::tempdir().unwrap();
    mixed_log(dir.path()).await;
    let before = index_files(dir.path()).len();
    let opts = AuditOptions {
        segment_max_bytes: 2_000,
        retention: Retention { max_bytes: Some(10_000), max_age: None },
        ..AuditOptions::default()
    };
    let log = AuditLog::open(dir.path(), opts).unwrap();
    log.close().await.unwrap();
    let segs = segments(dir.path()).unwrap();
    assert!(segs.len() < before);
    let idx: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    assert_eq!(idx.len(), segs.len(), "{idx:?}");
}

/// The writer indexes the records it writes from the records themselves, without reading their
/// lines back: each index holds exactly the postings a read of its segment's lines gives
/// (escaped and non-ASCII text, sub-second times), and in the same order.
#[tokio::test]
async fn the_postings_the_writer_knows_are_those_its_lines_give() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), AuditOptions { segment_max_bytes: 2_000, ..AuditOptions::default() }).unwrap();
    for i in 0..60 {
        let event = format!("e\"{i}");
        log.append(vec![
            Entry::new(Kind::Received).event_id(format!("r{i}")).source("http"),
            Entry::new(Kind::Matched).event_id(&event).rule("règle\\1"),
            Entry::new(Kind::Held).event_id(&event).rule("règle\\1").target("ns/a\tb").reason("cooldown"),
        ])
        .await
        .unwrap();
    }
    log.close().await.unwrap();
    let segs = segments(dir.path()).unwrap();
    assert!(segs.len() > 5, "{} segments", segs.len());
    let mut indexed = 0;
    for (_, seg) in &segs {
        let through_index = index::load(seg, None).unwrap().postings;
        std::fs::remove_file(index::path_of(seg)).unwrap();
        let from_lines = index::load(seg, None).unwrap().postings;
        assert_eq!(through_index, from_lines, "{}", seg.display());
        indexed += from_lines.len();
    }
    assert_eq!(indexed, 120, "matched and held, not received");
}
