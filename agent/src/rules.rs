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
        let mut rules = Vec::with_capacity(configs.len());
        for (i, rc) in configs.iter().enumerate() {
            let ops = rc
                .sequence
                .iter()
                .enumerate()
                .map(|(j, name)| {
                    catalog.lookup_for_rule(name).map_err(|reason| {
                        ConfigError::new(file, format!("rule[{i}].sequence[{j}]"), reason)
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
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
