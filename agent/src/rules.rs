//! Sequence rules (SPEC §4): compiled against the operation catalog, indexed by their
//! final operation, evaluated in priority order against a session's lookback.

use std::path::Path;

use crate::config::{ConfigError, RuleAction, RuleConfig, RuleKind};
use crate::ops::{Catalog, OpId};
use crate::session::Entry;
use crate::{Nanos, duration_nanos};

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub kind: RuleKind,
    pub action: RuleAction,
    /// Chronological; the final operation last.
    pub ops: Vec<OpId>,
    pub priority: i64,
    pub min_interval: Option<Nanos>,
}

impl Rule {
    /// Whether the rule's earlier operations appear, in order, in `lookback` (oldest
    /// first; others may be interleaved). On a match, the time of the latest request to
    /// the rule's previous operation.
    fn earlier_ops_in(&self, lookback: &[Entry]) -> Option<Nanos> {
        let earlier = &self.ops[..self.ops.len() - 1];
        let mut entries = lookback.iter().rev();
        let mut previous_at = None;
        // Greedy from the most recent end: the previous operation binds to its latest
        // request, which is the one `min_interval` measures from.
        for &op in earlier.iter().rev() {
            let e = entries.find(|e| e.op == op)?;
            previous_at.get_or_insert(e.at);
        }
        previous_at
    }
}

/// Rules in evaluation order, with an index from final operation to rules.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// By final operation id: indices into `rules`, in evaluation order.
    by_final_op: Vec<Vec<u32>>,
}

impl RuleSet {
    /// Compiles `[[rule]]` entries; an unknown operation is an error naming the rule.
    pub fn compile(
        configs: &[RuleConfig],
        catalog: &mut Catalog,
        file: &Path,
    ) -> Result<Self, ConfigError> {
        Self::compile_all(configs, catalog, file).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Like [`RuleSet::compile`], with every rule's errors.
    pub fn compile_all(
        configs: &[RuleConfig],
        catalog: &mut Catalog,
        file: &Path,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut rules = Vec::with_capacity(configs.len());
        let mut errors = Vec::new();
        for rc in configs {
            let i = rc.position;
            let mut ops = Vec::with_capacity(rc.sequence.len());
            for (j, name) in rc.sequence.iter().enumerate() {
                match catalog.lookup_for_rule(name) {
                    Ok(op) => ops.push(op),
                    Err(reason) => errors.push(ConfigError::new(
                        file,
                        format!("rule[{i}].sequence[{j}]"),
                        reason,
                    )),
                }
            }
            if ops.len() < rc.sequence.len() || ops.len() < 2 {
                continue;
            }
            rules.push(Rule {
                id: rc
                    .id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                title: rc.title.clone(),
                kind: rc.kind,
                action: rc.action,
                ops,
                priority: rc.priority,
                min_interval: rc.min_interval.map(duration_nanos),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Stable: equal priorities keep file order.
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        let mut by_final_op: Vec<Vec<u32>> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let last = usize::from(*rule.ops.last().expect("validated: 2+ operations"));
            if by_final_op.len() <= last {
                by_final_op.resize_with(last + 1, Vec::new);
            }
            by_final_op[last].push(i as u32);
        }
        Ok(Self { rules, by_final_op })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether any rule ends with `op` (the cheap test before building a lookback).
    pub fn applies_to(&self, op: OpId) -> bool {
        self.by_final_op
            .get(usize::from(op))
            .is_some_and(|r| !r.is_empty())
    }

    /// The rule a request to `op` at `now` violates, if any. `lookback` holds the
    /// session's earlier entries (oldest first) already cut to the lookback limits.
    pub fn evaluate(&self, op: OpId, lookback: &[Entry], now: Nanos) -> Option<&Rule> {
        for &i in self.by_final_op.get(usize::from(op))? {
            let rule = &self.rules[i as usize];
            let matched = rule.earlier_ops_in(lookback);
            match rule.kind {
                RuleKind::Allow => {
                    let passes = matched.is_some_and(|previous_at| {
                        rule.min_interval
                            .is_none_or(|min| now.saturating_sub(previous_at) >= min)
                    });
                    if passes {
                        return None;
                    }
                    return Some(rule);
                }
                RuleKind::Block if matched.is_some() => return Some(rule),
                RuleKind::Block => {}
            }
        }
        None
    }
}

/// A rule as the admin API and `rules` commands show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleView {
    pub id: String,
    pub title: String,
    pub kind: RuleKind,
    pub action: RuleAction,
    /// Human forms, first to final.
    pub sequence: Vec<String>,
    pub priority: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<String>,
}

impl RuleSet {
    /// The rules in evaluation order, operations by their human form.
    pub fn views(&self, catalog: &Catalog) -> Vec<RuleView> {
        self.rules
            .iter()
            .map(|r| RuleView {
                id: r.id.clone(),
                title: r.title.clone(),
                kind: r.kind,
                action: r.action,
                sequence: r.ops.iter().map(|&op| catalog.get(op).human()).collect(),
                priority: r.priority,
                min_interval: r.min_interval.map(|n| {
                    humantime::format_duration(std::time::Duration::from_nanos(n)).to_string()
                }),
            })
            .collect()
    }
}

/// Drafts allow rules from a report: for each final operation, the sequence leading to it
/// with the best lower confidence bound (at least `min_lower`, seen at least `min_count`
/// times), ranked by that bound. Written as `action = "log"`: an operator reads the
/// evidence, then switches the ones they trust to `block`.
pub fn suggest_allow_rules(
    report: &crate::report::Report,
    min_lower: f64,
    min_count: u64,
) -> String {
    use std::fmt::Write as _;
    let human = |id: &str| {
        report
            .operations
            .iter()
            .find(|o| o.id == id)
            .map(|o| o.human())
    };
    let mut best: Vec<&crate::report::SequenceReport> = Vec::new();
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
    use super::*;
    use crate::config::Config;

    fn setup(rules_toml: &str) -> (Catalog, RuleSet) {
        let config = Config::parse(rules_toml, Path::new("r.toml")).unwrap();
        let mut catalog = Catalog::from_config(&config).unwrap();
        let rules = RuleSet::compile(&config.rules, &mut catalog, Path::new("r.toml")).unwrap();
        (catalog, rules)
    }

    fn entries(ops: &[(OpId, Nanos)]) -> Vec<Entry> {
        ops.iter().map(|&(op, at)| Entry { op, at }).collect()
    }

    const RULES: &str = r#"
[[rule]]
title = "transfer needs balance"
kind = "allow"
action = "block"
sequence = ["GET h/balance", "POST h/transfer"]
min_interval = "500ms"
[[rule]]
title = "no delete right after login"
kind = "block"
action = "log"
sequence = ["POST h/login", "DELETE h/account"]
priority = 5
"#;

    #[test]
    fn allow_rule_with_interleaving_and_min_interval() {
        let (mut c, rules) = setup(RULES);
        let balance = c.lookup_for_rule("GET h/balance").unwrap();
        let transfer = c.lookup_for_rule("POST h/transfer").unwrap();
        let other = c.lookup_for_rule("GET h/other").unwrap();
        let ms = 1_000_000;
        assert!(
            rules
                .evaluate(
                    transfer,
                    &entries(&[(balance, 0), (other, 100 * ms)]),
                    1000 * ms
                )
                .is_none()
        );
        let v = rules
            .evaluate(transfer, &entries(&[(other, 0)]), 1000 * ms)
            .unwrap();
        assert_eq!(v.title, "transfer needs balance");
        assert!(
            rules
                .evaluate(transfer, &entries(&[(balance, 700 * ms)]), 1000 * ms)
                .is_some(),
            "too fast"
        );
        assert!(
            rules.evaluate(other, &[], 0).is_none(),
            "no rule ends with `other`"
        );
    }

    #[test]
    fn block_rule_and_priority() {
        let (mut c, rules) = setup(RULES);
        let login = c.lookup_for_rule("POST h/login").unwrap();
        let delete = c.lookup_for_rule("DELETE h/account").unwrap();
        assert_eq!(rules.rules()[0].priority, 5, "higher priority first");
        assert!(rules.evaluate(delete, &entries(&[(login, 0)]), 1).is_some());
        assert!(rules.evaluate(delete, &[], 1).is_none());
    }

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

    #[test]
    fn unknown_operation_names_the_rule() {
        let config = Config::parse(
            "[operations]\ndiscovery = false\n[[rule]]\ntitle = \"t\"\nkind = \"allow\"\naction = \"log\"\nsequence = [\"GET h/a\", \"GET h/b\"]\n",
            Path::new("r.toml"),
        )
        .unwrap();
        let mut catalog = Catalog::from_config(&config).unwrap();
        let e = RuleSet::compile(&config.rules, &mut catalog, Path::new("r.toml")).unwrap_err();
        assert_eq!(e.key, "rule[0].sequence[0]");
    }
}
