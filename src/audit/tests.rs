use super::*;
use serde_json::json;
use std::io::Write;

fn open(dir: &std::path::Path) -> AuditLog {
    AuditLog::open(dir, AuditOptions::default()).unwrap()
}

fn small_segments() -> AuditOptions {
    AuditOptions { segment_max_bytes: 600, ..AuditOptions::default() }
}

fn entries(n: usize) -> Vec<Entry> {
    (0..n).map(|i| Entry::new(Kind::Received).event_id(format!("e{i}")).rule("r")).collect()
}

fn all_lines(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    for (_, p) in segments(dir).unwrap() {
        for l in std::fs::read_to_string(&p).unwrap().lines() {
            out.push((p.clone(), l.to_string()));
        }
    }
    out
}

#[tokio::test]
async fn records_chain_by_hash_of_the_previous_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let recs = log.append(entries(3)).await.unwrap();
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(recs[0].prev, GENESIS);
    let lines = all_lines(dir.path());
    assert_eq!(recs[1].prev, hex::encode(sha2::Sha256::digest(lines[0].1.as_bytes())));
    let report = verify(dir.path()).unwrap();
    assert_eq!((report.records, report.first_seq, report.last_seq), (3, 1, 3));
    assert_eq!(log.last(), (3, report.last_hash));
}

use sha2::Digest;

/// The writer builds each line from the entry's own JSON (serialised by the caller); the line
/// must be what serialising the whole record gives, field for field and byte for byte, so
/// readers and `verify` see the format docs/audit.md describes.
#[tokio::test]
async fn a_line_is_exactly_the_serialised_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let full = Entry::new(Kind::Applied)
        .event_id("e \"quoted\" \u{e9}")
        .source("alertmanager")
        .rule("r")
        .target("ns/vs")
        .action_id("a1")
        .key("k|1")
        .reason("line\nbreak")
        .actor("on-call")
        .before(json!({"weights": [90, 10]}))
        .after(json!({"weights": [100, 0]}))
        .detail(json!({"alert": {"labels": {"z": "1", "a": "2"}}, "n": 1.5}));
    let recs = log.append(vec![full, Entry::new(Kind::Seal)]).await.unwrap();
    let lines = all_lines(dir.path());
    assert_eq!(lines.len(), 2);
    for (record, (_, line)) in recs.iter().zip(&lines) {
        assert_eq!(line.as_bytes(), serde_json::to_vec(record).unwrap().as_slice());
        let back: Record = serde_json::from_str(line).unwrap();
        assert_eq!(&back, record);
    }
    verify(dir.path()).unwrap();
}

/// A detail given as JSON text is written where a `Value` detail would be: the line is what
/// serialising the record with that detail parsed gives, and reads back with it in `detail`.
#[tokio::test]
async fn a_detail_given_as_text_is_written_as_the_detail() {
    #[derive(serde::Serialize)]
    struct Delivery<'a> {
        alert: &'a str,
        labels: std::collections::BTreeMap<&'a str, &'a str>,
    }
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let delivery = Delivery { alert: "A \"b\"", labels: [("z", "1"), ("a", "\u{e9}")].into() };
    let with_text = Entry::new(Kind::Received).event_id("e1").source("alertmanager").detail_of(&delivery).unwrap();
    let recs = log.append(vec![with_text, Entry::new(Kind::Received).event_id("e2")]).await.unwrap();
    let lines = all_lines(dir.path());
    let back: Record = serde_json::from_str(&lines[0].1).unwrap();
    assert_eq!(back.entry.detail, Some(json!({"alert": "A \"b\"", "labels": {"z": "1", "a": "\u{e9}"}})));
    let mut expected = recs[0].clone();
    expected.entry.detail = back.entry.detail.clone();
    expected.entry.detail_json = None;
    assert_eq!(lines[0].1.as_bytes(), serde_json::to_vec(&expected).unwrap().as_slice());
    assert_eq!(back, expected);
    // Without one, no detail at all.
    assert!(!lines[1].1.contains("detail"));
    verify(dir.path()).unwrap();
}

#[tokio::test]
async fn chain_runs_unbroken_across_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    for _ in 0..20 {
        log.append(entries(2)).await.unwrap();
    }
    let segs = segments(dir.path()).unwrap();
    assert!(segs.len() > 3, "small segments rotate: {}", segs.len());
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.segments, segs.len());
    let seals = query(dir.path(), &Filter { kinds: vec![Kind::Seal], ..Default::default() }).unwrap();
    assert_eq!(seals.len(), segs.len() - 1, "every segment but the open one ends with a seal");
    let last_of_first = std::fs::read_to_string(&segs[0].1).unwrap();
    assert!(last_of_first.lines().last().unwrap().contains("\"kind\":\"seal\""));
    // Reopening continues seq and chain in the newest segment.
    log.close().await.unwrap();
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    let next = log.append(entries(1)).await.unwrap();
    // The open segment was full: a seal (report.last_seq + 1) comes before the new record.
    assert_eq!(next[0].seq, report.last_seq + 2);
    let after = verify(dir.path()).unwrap();
    assert_eq!((after.last_seq, after.segments), (next[0].seq, report.segments + 1));
}

fn rewrite(path: &std::path::Path, f: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect();
    f(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

async fn log_of(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append(entries(n)).await.unwrap();
    log.close().await.unwrap();
    let seg = segments(dir.path()).unwrap()[0].1.clone();
    (dir, seg)
}

#[tokio::test]
async fn verify_names_an_edited_record() {
    let (dir, seg) = log_of(5).await;
    rewrite(&seg, |l| l[2] = l[2].replace("\"e2\"", "\"eX\""));
    match verify(dir.path()).unwrap_err() {
        VerifyError::Broken { line, seq, problem, .. } => {
            assert_eq!((line, seq), (4, 4), "the record after the edited one no longer chains");
            assert!(problem.contains("edited"), "{problem}");
        }
        e => panic!("{e}"),
    }
}

#[tokio::test]
async fn verify_names_a_removed_record() {
    let (dir, seg) = log_of(5).await;
    rewrite(&seg, |l| {
        l.remove(1);
    });
    let err = verify(dir.path()).unwrap_err().to_string();
    assert!(err.contains(":2: record seq 3: expected seq 2"), "{err}");
}

#[tokio::test]
async fn verify_names_swapped_records() {
    let (dir, seg) = log_of(5).await;
    rewrite(&seg, |l| l.swap(2, 3));
    let err = verify(dir.path()).unwrap_err().to_string();
    assert!(err.contains(":3: record seq 4: expected seq 3"), "{err}");
}

#[tokio::test]
async fn verify_names_a_missing_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    for _ in 0..10 {
        log.append(entries(2)).await.unwrap();
    }
    log.close().await.unwrap();
    let segs = segments(dir.path()).unwrap();
    std::fs::remove_file(&segs[1].1).unwrap();
    let err = verify(dir.path()).unwrap_err().to_string();
    assert!(err.contains("a segment is missing"), "{err}");
}

#[tokio::test]
async fn torn_tail_is_cut_and_recorded_never_silently_dropped() {
    let (dir, seg) = log_of(3).await;
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(b"{\"seq\":4,\"time\":\"2026-").unwrap();
    drop(f);
    let log = open(dir.path());
    let recovered = query(dir.path(), &Filter { kinds: vec![Kind::Recovered], ..Default::default() }).unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].seq, 4, "the torn record never got a seq");
    let d = recovered[0].entry.detail.as_ref().unwrap();
    assert_eq!(d["length"], 22);
    assert_eq!(d["prefix"], "{\"seq\":4,\"time\":\"2026-");
    assert_eq!(log.append(entries(1)).await.unwrap()[0].seq, 5);
    assert_eq!(verify(dir.path()).unwrap().records, 5, "the 3 acknowledged records, the recovery note, the new one");
}

#[tokio::test]
async fn concurrent_appends_share_fsyncs_and_get_contiguous_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                log.append(vec![Entry::new(Kind::Received).event_id(format!("c{i}")), Entry::new(Kind::Matched)])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        let recs = t.await.unwrap();
        assert_eq!(recs[1].seq, recs[0].seq + 1, "one caller's entries are contiguous");
        seqs.extend(recs.iter().map(|r| r.seq));
    }
    seqs.sort();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    assert!(log.fsyncs() < 200, "group commit: {} fsyncs for 200 appends", log.fsyncs());
    verify(dir.path()).unwrap();
}

#[tokio::test]
async fn failed_write_is_an_error_and_the_log_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append(entries(1)).await.unwrap();
    // Three failing writes: the first append, then the second's recovery record and itself.
    log.fail_next_writes(3);
    assert!(log.append(entries(1)).await.is_err());
    assert!(!log.healthy());
    assert!(log.append(entries(1)).await.is_err());
    let recs = log.append(entries(2)).await.unwrap();
    assert!(log.healthy());
    assert_eq!(recs[0].seq, 3, "failed batches consumed no sequence numbers (2 is the recovery record)");
    // The outage is recorded once it is over: how many writes failed, since when, why.
    let all = query(dir.path(), &Filter::default()).unwrap();
    let recovered = &all[1].entry;
    assert_eq!(recovered.kind, Kind::Control);
    let detail = recovered.detail.as_ref().unwrap();
    assert_eq!((detail["control"].as_str(), detail["failed_writes"].as_u64()), (Some("audit-recovered"), Some(2)));
    assert!(detail["first_error"].as_str().unwrap().contains("no space left on device"), "{detail}");
    assert_eq!(verify(dir.path()).unwrap().records, 4);
}

#[tokio::test]
async fn after_a_failed_write_the_log_comes_back_by_itself_without_new_input() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.fail_next_writes(1);
    assert!(log.append(entries(1)).await.is_err());
    assert!(!log.healthy());
    // Nothing else is appended: the writer's own retry brings it back (readiness follows).
    for _ in 0..50 {
        if log.healthy() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(log.healthy(), "the log did not recover by itself");
    let all = query(dir.path(), &Filter::default()).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].entry.detail.as_ref().unwrap()["control"], "audit-recovered");
    verify(dir.path()).unwrap();
}

#[tokio::test]
async fn a_second_writer_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _log = open(dir.path());
    let err = AuditLog::open(dir.path(), AuditOptions::default()).err().unwrap();
    assert!(err.to_string().contains("in use by another backstop process"), "{err}");
}

#[tokio::test]
async fn query_filters_and_limit_keeps_the_most_recent() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append(vec![
        Entry::new(Kind::Received).event_id("a"),
        Entry::new(Kind::Applied).rule("r1").target("ns/x").action_id("A1"),
        Entry::new(Kind::Held).rule("r2").target("ns/y"),
        Entry::new(Kind::Applied).rule("r1").target("ns/y").action_id("A2"),
    ])
    .await
    .unwrap();
    let q = |f: Filter| query(dir.path(), &f).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(q(Filter { kinds: vec![Kind::Applied], ..Default::default() }), vec![2, 4]);
    assert_eq!(q(Filter { rule: Some("r1".into()), target: Some("ns/y".into()), ..Default::default() }), vec![4]);
    assert_eq!(q(Filter { action_id: Some("A1".into()), ..Default::default() }), vec![2]);
    assert_eq!(q(Filter { after_seq: Some(2), ..Default::default() }), vec![3, 4]);
    assert_eq!(q(Filter { limit: Some(2), ..Default::default() }), vec![3, 4]);
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    assert!(q(Filter { since: Some(future), ..Default::default() }).is_empty());
    assert_eq!(tail(dir.path(), 2).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
}

#[tokio::test]
async fn recent_queries_do_not_read_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    for _ in 0..10 {
        log.append(entries(2)).await.unwrap();
    }
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    log.append(vec![Entry::new(Kind::Applied).rule("late")]).await.unwrap();
    log.close().await.unwrap();
    let segs = segments(dir.path()).unwrap();
    // Corrupt every segment except the last two after its first line: a query that read them
    // through would fail (their first lines give the segments' time bounds).
    for (_, p) in &segs[..segs.len() - 2] {
        let first = std::fs::read_to_string(p).unwrap().lines().next().unwrap().to_string();
        std::fs::write(p, format!("{first}\ngarbage that is not a record\n")).unwrap();
    }
    // (The late append may have sealed a full segment first: ask for applied records only.)
    let recent =
        query(dir.path(), &Filter { since: Some(cutoff), kinds: vec![Kind::Applied], ..Default::default() }).unwrap();
    assert_eq!(recent.iter().map(|r| r.entry.rule.as_deref()).collect::<Vec<_>>(), vec![Some("late")]);
    assert!(query(dir.path(), &Filter::default()).is_err(), "a full query does read them");
}

#[tokio::test]
async fn exported_slice_verifies_on_its_own_and_detects_edits() {
    let (dir, seg) = log_of(6).await;
    let text = std::fs::read_to_string(&seg).unwrap();
    let slice: String = text.lines().skip(2).take(3).map(|l| format!("{l}\n")).collect();
    let r = verify_reader(slice.as_bytes(), "export.jsonl").unwrap();
    assert_eq!((r.first_seq, r.last_seq), (3, 5));
    let edited = slice.replacen("\"e3\"", "\"zz\"", 1);
    let err = verify_reader(edited.as_bytes(), "export.jsonl").unwrap_err().to_string();
    assert!(err.starts_with("export.jsonl:3: record seq 5"), "the record after the edited one: {err}");
    drop(dir);
}

#[test]
fn kinds_parse_from_their_names() {
    for k in Kind::ALL {
        assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
        assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
    }
    assert!("bogus".parse::<Kind>().is_err());
}

fn retained(max_bytes: Option<u64>, max_age: Option<std::time::Duration>) -> AuditOptions {
    AuditOptions { segment_max_bytes: 600, retention: Retention { max_age, max_bytes }, ..AuditOptions::default() }
}

#[tokio::test]
async fn retention_by_size_deletes_oldest_segments_and_verify_starts_at_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), retained(Some(3000), None)).unwrap();
    for _ in 0..40 {
        log.append(entries(2)).await.unwrap();
    }
    log.close().await.unwrap();
    let segs = segments(dir.path()).unwrap();
    let total: u64 = segs.iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum();
    assert!(total <= 3000 + 1200, "the log stays near its size limit: {total} bytes in {} segments", segs.len());
    assert!(segs[0].0 > 1, "old segments are gone");
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.first_seq, segs[0].0);
    let checkpoint = report.anchored_by.expect("anchored by a checkpoint");
    let c = query(dir.path(), &Filter { kinds: vec![Kind::Checkpoint], ..Default::default() }).unwrap();
    assert!(c.iter().any(|r| r.seq == checkpoint));
}

#[tokio::test]
async fn retention_by_age_keeps_the_open_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = retained(None, Some(std::time::Duration::from_millis(1)));
    let log = AuditLog::open(dir.path(), AuditOptions { retention: Retention::default(), ..opts.clone() }).unwrap();
    for _ in 0..10 {
        log.append(entries(2)).await.unwrap();
    }
    log.close().await.unwrap();
    assert!(segments(dir.path()).unwrap().len() > 2);
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    // Retention runs when the log opens with it configured.
    let log = AuditLog::open(dir.path(), opts).unwrap();
    let segs = segments(dir.path()).unwrap();
    assert_eq!(segs.len(), 1, "only the open segment is left: {segs:?}");
    let next = log.append(entries(1)).await.unwrap();
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.last_seq, next[0].seq);
    assert!(report.anchored_by.is_some());
}

#[tokio::test]
async fn a_crash_halfway_through_retention_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    for _ in 0..15 {
        log.append(entries(2)).await.unwrap();
    }
    log.close().await.unwrap();
    let backup = tempfile::tempdir().unwrap();
    let before = segments(dir.path()).unwrap();
    for (_, p) in &before {
        std::fs::copy(p, backup.path().join(p.file_name().unwrap())).unwrap();
    }
    let log = AuditLog::open(dir.path(), retained(None, Some(std::time::Duration::from_millis(1)))).unwrap();
    log.close().await.unwrap();
    // As if the process died after the checkpoint and the first deletion: put the others back.
    for (_, p) in &before[1..before.len() - 1] {
        if !p.exists() {
            std::fs::copy(backup.path().join(p.file_name().unwrap()), p).unwrap();
        }
    }
    assert_eq!(segments(dir.path()).unwrap().len(), before.len() - 1);
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.first_seq, before[1].0);
    assert!(report.anchored_by.is_some());
}

#[tokio::test]
async fn removing_the_oldest_segment_by_hand_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    for _ in 0..10 {
        log.append(entries(2)).await.unwrap();
    }
    log.close().await.unwrap();
    std::fs::remove_file(&segments(dir.path()).unwrap()[0].1).unwrap();
    let err = verify(dir.path()).unwrap_err().to_string();
    assert!(err.contains("no checkpoint record anchors"), "{err}");
}

#[tokio::test]
async fn a_log_that_stopped_right_after_a_seal_continues_in_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    for _ in 0..6 {
        log.append(entries(2)).await.unwrap();
    }
    log.close().await.unwrap();
    // Cut the newest segment away, so the log ends with a seal (as a crash after sealing would).
    let segs = segments(dir.path()).unwrap();
    std::fs::remove_file(&segs.last().unwrap().1).unwrap();
    let sealed_last = tail(dir.path(), 1).unwrap();
    assert_eq!(sealed_last[0].entry.kind, Kind::Seal);
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    let next = log.append(entries(1)).await.unwrap();
    assert_eq!(next[0].seq, sealed_last[0].seq + 1, "no second seal");
    assert_eq!(segments(dir.path()).unwrap().last().unwrap().0, next[0].seq, "a new segment starts at it");
    verify(dir.path()).unwrap();
}

#[tokio::test]
async fn an_empty_new_segment_left_by_a_crash_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    for _ in 0..6 {
        log.append(entries(2)).await.unwrap();
    }
    log.close().await.unwrap();
    let segs = segments(dir.path()).unwrap();
    let (last_first, last_path) = segs.last().unwrap().clone();
    std::fs::remove_file(&last_path).unwrap();
    std::fs::write(&last_path, "").unwrap(); // created, nothing written yet
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    let next = log.append(entries(1)).await.unwrap();
    assert_eq!(next[0].seq, last_first);
    verify(dir.path()).unwrap();
}

#[tokio::test]
async fn export_writes_the_period_unchanged_and_it_verifies_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    log.append(entries(5)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let since = chrono::Utc::now();
    for _ in 0..5 {
        log.append(entries(2)).await.unwrap();
    }
    let until = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    log.append(entries(3)).await.unwrap();
    log.close().await.unwrap();
    let mut out = Vec::new();
    let n = export(dir.path(), Some(since), Some(until), &mut out).unwrap();
    let expected = query(dir.path(), &Filter { since: Some(since), until: Some(until), ..Default::default() }).unwrap();
    assert_eq!(n as usize, expected.len());
    assert!(n >= 10);
    let report = verify_reader(out.as_slice(), "export").unwrap();
    assert_eq!((report.first_seq, report.last_seq), (expected[0].seq, expected.last().unwrap().seq));
    let all: String = all_lines(dir.path()).into_iter().map(|(_, l)| l + "\n").collect();
    assert!(all.contains(std::str::from_utf8(&out).unwrap()), "exported bytes are the log's bytes");
}

#[tokio::test]
async fn records_after_and_hash_at_skip_to_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), small_segments()).unwrap();
    for _ in 0..10 {
        log.append(entries(2)).await.unwrap();
    }
    let (last, hash) = log.last();
    log.close().await.unwrap();
    let after: Vec<u64> = records_after(dir.path(), 17).unwrap().map(|r| r.unwrap().seq).collect();
    assert_eq!(after, (18..=last).collect::<Vec<_>>());
    assert_eq!(hash_at(dir.path(), last).unwrap(), Some(hash));
    assert_eq!(hash_at(dir.path(), last + 1).unwrap(), None);
}

#[tokio::test]
async fn a_zero_filled_whole_line_at_the_end_is_cut_once_and_recorded() {
    let (dir, seg) = log_of(3).await;
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0u8; 40]).unwrap();
    f.write_all(b"\n\0\0").unwrap();
    drop(f);
    let log = open(dir.path());
    let recovered = query(dir.path(), &Filter { kinds: vec![Kind::Recovered], ..Default::default() }).unwrap();
    assert_eq!(recovered[0].entry.detail.as_ref().unwrap()["length"], 43);
    assert_eq!(log.append(entries(1)).await.unwrap()[0].seq, 5);
    verify(dir.path()).unwrap();
}

#[tokio::test]
async fn garbage_before_the_last_record_is_never_cut_and_verify_reports_it() {
    let (dir, seg) = log_of(3).await;
    rewrite(&seg, |l| l.insert(1, "not a record".into()));
    let log = open(dir.path());
    log.close().await.unwrap();
    let err = verify(dir.path()).unwrap_err().to_string();
    assert!(err.contains(":2: unreadable record"), "{err}");
    assert_eq!(std::fs::read_to_string(&seg).unwrap().lines().count(), 4, "nothing was cut");
}

#[tokio::test]
async fn reopening_reads_the_tail_backwards_and_keeps_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append(entries(500)).await.unwrap();
    let pos = log.position();
    log.close().await.unwrap();
    let log = open(dir.path());
    assert_eq!(log.position(), pos, "the same position is found from the end of the segment");
    let after: Vec<u64> = records_after_position(dir.path(), &pos).unwrap().unwrap().map(|r| r.unwrap().seq).collect();
    assert!(after.is_empty());
    log.append(entries(2)).await.unwrap();
    let after: Vec<u64> = records_after_position(dir.path(), &pos).unwrap().unwrap().map(|r| r.unwrap().seq).collect();
    assert_eq!(after, vec![501, 502]);
    let wrong = Position { hash: GENESIS.into(), ..pos };
    assert!(records_after_position(dir.path(), &wrong).unwrap().is_none());
}

mod index;
