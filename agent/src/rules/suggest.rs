//! Draft rules from a report, for an operator to read and adopt: allow rules from the
//! best-supported sequences, rate limits from the per-session request rates.

use std::fmt::Write as _;

use crate::report::{Report, SequenceReport};

/// Drafts allow rules from a report: for each final operation, the sequence leading to it
/// with the best lower confidence bound (at least `min_lower`, seen at least `min_count`
/// times), ranked by that bound. Written as `action = "log"`: an operator reads the
/// evidence, then switches the ones they trust to `block`.
pub fn suggest_allow_rules(report: &Report, min_lower: f64, min_count: u64) -> String {
    let human = |id: &str| {
        report
            .operations
            .iter()
            .find(|o| o.id == id)
            .map(|o| o.human())
    };
    let mut best: Vec<&SequenceReport> = Vec::new();
    // A rule needs two operations or more: a (hand-edited) report may hold shorter ones.
    for s in report
        .sequences
        .iter()
        .filter(|s| s.operations.len() >= 2 && s.score_lower >= min_lower && s.count >= min_count)
    {
        let last = s.operations.last();
        match best.iter_mut().find(|b| b.operations.last() == last) {
            Some(b) if s.score_lower > b.score_lower => *b = s,
            Some(_) => {}
            None => best.push(s),
        }
    }
    best.sort_by(|a, b| b.score_lower.total_cmp(&a.score_lower));
    let mut out = format!(
        "# Allow rules drafted by `seqshield rules suggest` from the report of {}.
         # One per final operation: the preceding sequence with the best 95% lower bound.
         # They only log; set action = \"block\" on those you trust.
",
        report.generated_at
    );
    for s in best {
        let Some(ops) = s
            .operations
            .iter()
            .map(|id| human(id))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let final_op = ops.last().cloned().unwrap_or_default();
        let before = &ops[ops.len() - 2];
        let title: String = format!("{} after {}", short(&final_op), short(before))
            .chars()
            .take(crate::config::MAX_TITLE_CHARS)
            .collect();
        let _ = writeln!(
            out,
            "
# evidence: score {:.3} (lower bound {:.3}), seen {} times, final operation {} times",
            s.score, s.score_lower, s.count, s.last_op_count
        );
        let _ = writeln!(
            out,
            "[[rule]]\ntitle = {title:?}\nkind = \"allow\"\naction = \"log\""
        );
        let quoted: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
        let _ = writeln!(out, "sequence = [{}]", quoted.join(", "));
    }
    out
}

/// Drafts one rate rule per operation from the per-session request rates of a report:
/// `limit` = the p99 of requests per session per 10 minutes times `headroom`, rounded
/// up, for operations seen in at least `min_windows` (session, window) pairs. Like the
/// allow drafts they only log until an operator sets `action = "block"`.
pub fn suggest_rate_rules(report: &Report, headroom: f64, min_windows: u64) -> String {
    let mut out = format!(
        "# Rate rules drafted by `seqshield rules suggest --rate` from the report of {}.
         # Limit per session per 10 minutes: the p99 of what sessions sent, times {headroom}.
         # They only log; set action = \"block\" on those you trust.
",
        report.generated_at
    );
    let mut ops: Vec<_> = report
        .operations
        .iter()
        .filter_map(|op| Some((op, op.session_rate?)))
        .filter(|(_, rate)| rate.windows >= min_windows)
        .collect();
    ops.sort_by(|a, b| {
        b.1.windows
            .cmp(&a.1.windows)
            .then_with(|| a.0.id.cmp(&b.0.id))
    });
    for (op, rate) in ops {
        let human = op.human();
        let limit = ((rate.p99 as f64 * headroom).ceil() as u64).max(1);
        let title: String = format!("rate of {}", short(&human))
            .chars()
            .take(crate::config::MAX_TITLE_CHARS)
            .collect();
        let _ = writeln!(
            out,
            "
# evidence: requests per session per 10 min: p50 {}, p90 {}, p99 {}, max {}, over {} session windows",
            rate.p50, rate.p90, rate.p99, rate.max, rate.windows
        );
        let _ = writeln!(
            out,
            "[[rule]]\ntitle = {title:?}\nkind = \"rate\"\naction = \"log\"\noperation = {human:?}\nlimit = {limit}\nperiod = \"10m\""
        );
    }
    out
}

/// "POST host/a/b/transfer" → "POST transfer": short enough for a title.
fn short(human: &str) -> String {
    let (method, rest) = human.split_once(' ').unwrap_or(("", human));
    let last = rest
        .rsplit('/')
        .find(|s| !s.is_empty() && !s.starts_with('{'))
        .unwrap_or(rest);
    format!("{method} {last}")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn sequences_too_short_for_a_rule_are_skipped() {
        let report: crate::report::Report = serde_json::from_str(
            r#"{"generated_at": "now", "window_secs": 86400,
                "operations": [{"id": "a", "host": "h", "method": "GET", "path": "/a",
                                "requests": 9, "occurrences": 9}],
                "sequences": [{"operations": ["a"], "count": 9, "last_op_count": 9,
                               "score": 1.0, "score_lower": 0.9},
                              {"operations": [], "count": 9, "last_op_count": 9,
                               "score": 1.0, "score_lower": 0.9}],
                "stats": {}}"#,
        )
        .unwrap();
        let out = suggest_allow_rules(&report, 0.5, 5);
        assert!(!out.contains("[[rule]]"), "{out}");
    }

    #[test]
    fn suggestions_take_the_best_bound_per_final_operation_and_parse_back() {
        use crate::report::{OperationReport, Report, SequenceReport, Stats};
        let op = |id: &str, method: &str, path: &str| OperationReport {
            id: id.into(),
            host: "h".into(),
            method: method.into(),
            path: path.into(),
            requests: 10,
            occurrences: 10,
            session_rate: None,
            distinct_values: None,
        };
        let seq = |ops: &[&str], count, lower| SequenceReport {
            operations: ops.iter().map(|s| s.to_string()).collect(),
            count,
            last_op_count: 10,
            score: count as f64 / 10.0,
            score_lower: lower,
        };
        let report = Report {
            generated_at: "now".into(),
            window_secs: 86400,
            counts: None,
            operations: vec![
                op("a", "GET", "/balance"),
                op("b", "POST", "/transfer"),
                op("c", "POST", "/login"),
            ],
            sequences: vec![
                seq(&["c", "a", "b"], 9, 0.6),
                seq(&["a", "b"], 9, 0.7),
                seq(&["c", "a"], 3, 0.9),
                seq(&["c", "b"], 1, 0.05),
            ],
            stats: Stats::default(),
        };
        let text = suggest_allow_rules(&report, 0.5, 5);
        let config = Config::parse(&text, Path::new("suggested.toml")).unwrap();
        let seqs: Vec<_> = config.rules.iter().map(|r| r.sequence.clone()).collect();
        assert_eq!(
            seqs,
            [vec![
                "GET h/balance".to_string(),
                "POST h/transfer".to_string()
            ]]
        );
        assert!(text.contains("lower bound 0.700"));
    }
}
