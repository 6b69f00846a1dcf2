//! A target's timeline grouped by action: each action's records (decided, the write's outcome,
//! the traffic's verification) under one line saying what changed and why; the decisions held
//! or refused without an action, run together while their kind and rule stay the same.

use super::html::{esc, table};
use super::{HEAD, action_link, record_row, text, weights};
use crate::audit::{Kind, Record};

/// One line of the timeline.
#[derive(Debug)]
pub(super) enum Group<'a> {
    /// Every record of one action, in order.
    Action { id: &'a str, records: Vec<&'a Record> },
    /// Records without an action, one after another, of one kind and rule (held, refused, a
    /// control, ...).
    Run { kind: Kind, rule: Option<&'a str>, records: Vec<&'a Record> },
}

impl Group<'_> {
    pub(super) fn records(&self) -> &[&Record] {
        match self {
            Group::Action { records, .. } | Group::Run { records, .. } => records,
        }
    }

    /// What the group came to: an action's write (applied, noop, refused, failed, dry run), or
    /// `decided` while that is under way; a run's kind.
    pub(super) fn outcome(&self) -> Kind {
        match self {
            Group::Action { records, .. } => records
                .iter()
                .rev()
                .map(|r| r.entry.kind)
                .find(|k| matches!(k, Kind::Applied | Kind::Noop | Kind::Refused | Kind::Failed | Kind::DryRun))
                .unwrap_or(Kind::Decided),
            Group::Run { kind, .. } => *kind,
        }
    }

    /// Whether the traffic was seen to move after the action: `verified`, `unverified`, or none.
    fn verification(&self) -> Option<Kind> {
        self.records().iter().rev().map(|r| r.entry.kind).find(|k| matches!(k, Kind::Verified | Kind::Unverified))
    }
}

/// Group records given in log order; the groups come newest first (by their latest record).
pub(super) fn group(records: &[Record]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group> = Vec::new();
    let mut by_action = std::collections::HashMap::new();
    for r in records {
        let e = &r.entry;
        if let Some(id) = e.action_id.as_deref() {
            match by_action.get(id) {
                Some(&i) => match &mut groups[i] {
                    Group::Action { records, .. } | Group::Run { records, .. } => records.push(r),
                },
                None => {
                    by_action.insert(id, groups.len());
                    groups.push(Group::Action { id, records: vec![r] });
                }
            }
            continue;
        }
        if let Some(Group::Run { kind, rule, records }) = groups.last_mut()
            && *kind == e.kind
            && *rule == e.rule.as_deref()
        {
            records.push(r);
            continue;
        }
        groups.push(Group::Run { kind: e.kind, rule: e.rule.as_deref(), records: vec![r] });
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.records().last().map_or(0, |r| r.seq)));
    groups
}

fn time(r: &Record) -> String {
    crate::when::shown(&r.time)
}

fn confirmation(records: &[&Record]) -> String {
    let c = records.iter().find_map(|r| r.entry.detail.as_ref()?.get("confirmation").filter(|c| !c.is_null()));
    match c {
        Some(c) => format!(
            "<code>{}</code> = {} ({})",
            text(&c["query"]),
            c["value"].as_f64().map_or("no data".to_string(), |v| format!("{v:.4}")),
            text(&c["result"])
        ),
        None => String::new(),
    }
}

/// The timeline as HTML: one row per group, its records folded under it.
pub(super) fn render(groups: &[Group]) -> String {
    let mut rows = Vec::new();
    for g in groups {
        let records = g.records();
        let (first, last) = (records[0], records[records.len() - 1]);
        let outcome = g.outcome();
        let mut what = format!("<span class=\"kind {0}\">{0}</span>", esc(outcome.as_str()));
        let (link, change, reason) = match g {
            Group::Action { id, .. } => {
                let change = records
                    .iter()
                    .find_map(|r| match (&r.entry.before, &r.entry.after) {
                        (Some(b), Some(a)) => {
                            Some(format!("<code>{}</code> → <code>{}</code>", esc(&weights(b)), esc(&weights(a))))
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                match g.verification() {
                    Some(Kind::Unverified) => {
                        what.push_str(" <span class=\"loud\">UNVERIFIED: traffic did not move</span>")
                    }
                    Some(k) => what.push_str(&format!(" <span class=\"kind {0}\">{0}</span>", esc(k.as_str()))),
                    None => {}
                }
                let reason = records.iter().rev().find_map(|r| r.entry.reason.as_deref()).unwrap_or_default();
                (action_link(id), change, esc(reason))
            }
            Group::Run { .. } => {
                if records.len() > 1 {
                    what.push_str(&format!(" ×{}", records.len()));
                }
                let event = last.entry.event_id.as_deref().unwrap_or_default();
                (esc(event), String::new(), esc(last.entry.reason.as_deref().unwrap_or_default()))
            }
        };
        let when = match records.len() {
            1 => esc(&time(first)),
            _ => format!("{} … {}", esc(&time(first)), esc(&time(last))),
        };
        let folded: Vec<Vec<String>> = records.iter().map(|r| record_row(r)).collect();
        let details = format!(
            "<details><summary>{} record{}</summary>{}</details>",
            records.len(),
            if records.len() == 1 { "" } else { "s" },
            table("records", &HEAD, &folded)
        );
        rows.push(vec![
            when,
            what,
            esc(first.entry.rule.as_deref().or(last.entry.rule.as_deref()).unwrap_or_default()),
            link,
            change,
            confirmation(records),
            format!("{reason}{details}"),
        ]);
    }
    table("timeline", &["when", "outcome", "rule", "action / event", "change", "confirmation", "why"], &rows)
}

/// Whether a group passes the page's `outcome` filter (any of the kinds listed; none: all).
pub(super) fn wanted(g: &Group, outcomes: &[Kind]) -> bool {
    outcomes.is_empty() || outcomes.contains(&g.outcome()) || g.verification().is_some_and(|v| outcomes.contains(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Entry;
    use serde_json::json;

    fn rec(seq: u64, e: Entry) -> Record {
        Record {
            seq,
            time: chrono::DateTime::from_timestamp(1_800_000_000 + seq as i64, 0).unwrap(),
            prev: String::new(),
            entry: e,
        }
    }

    fn log() -> Vec<Record> {
        let t = "sms-app/model-service";
        vec![
            rec(
                1,
                Entry::new(Kind::Decided)
                    .rule("r1")
                    .target(t)
                    .action_id("a1")
                    .detail(json!({"confirmation": {"query": "up < 1", "value": 0.5, "result": "confirmed"}})),
            ),
            rec(2, Entry::new(Kind::Held).rule("r1").target(t).reason("cooldown until 03:27").event_id("e2")),
            rec(3, Entry::new(Kind::Applied).rule("r1").target(t).action_id("a1").before(json!(1)).after(json!(2))),
            rec(4, Entry::new(Kind::Held).rule("r1").target(t).reason("cooldown until 03:27").event_id("e3")),
            rec(5, Entry::new(Kind::Held).rule("r1").target(t).reason("cooldown until 03:27").event_id("e4")),
            rec(6, Entry::new(Kind::Unverified).rule("r1").target(t).action_id("a1").reason("traffic did not move")),
            rec(7, Entry::new(Kind::Refused).rule("r2").target(t).reason("the canary is below 10")),
        ]
    }

    #[test]
    fn records_group_by_action_and_runs_of_held_continue_across_an_actions_records_newest_first() {
        let log = log();
        let groups = group(&log);
        let seqs: Vec<Vec<u64>> = groups.iter().map(|g| g.records().iter().map(|r| r.seq).collect()).collect();
        assert_eq!(seqs, vec![vec![7], vec![1, 3, 6], vec![2, 4, 5]]);
        assert_eq!(groups[1].outcome(), Kind::Applied);
        assert_eq!(groups[1].verification(), Some(Kind::Unverified));
        assert_eq!(groups[2].outcome(), Kind::Held);
        assert!(wanted(&groups[1], &[Kind::Applied]) && !wanted(&groups[2], &[Kind::Applied]));
        assert!(wanted(&groups[1], &[Kind::Unverified]) && wanted(&groups[2], &[]));
    }

    #[test]
    fn an_action_line_says_what_changed_why_and_how_it_was_confirmed() {
        let log = log();
        let html = render(&group(&log));
        assert!(html.contains("<code>up &lt; 1</code> = 0.5000 (confirmed)"), "{html}");
        assert!(html.contains("UNVERIFIED"), "{html}");
        assert!(html.contains("kind held\">held</span> ×3"), "{html}");
        assert!(html.contains("href=\"/ui/actions/a1\""), "{html}");
        assert!(html.contains("the canary is below 10"), "{html}");
    }
}
