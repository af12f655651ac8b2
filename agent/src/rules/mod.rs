//! Rules (SPEC §4, README "Rules"): sequence rules (allow / block), per-session rate
//! limits, and expression rules, compiled against the operation catalog, indexed by the
//! operations they apply to, evaluated in priority order.

pub mod expression;
pub mod rate;
pub mod suggest;

use std::path::Path;

use crate::config::{ConfigError, RuleAction, RuleConfig, RuleKind};
use crate::ops::{Catalog, OpId};
use crate::session::Entry;
use crate::{Nanos, duration_nanos};

pub use expression::{Expression, Facts};
pub use suggest::{suggest_allow_rules, suggest_rate_rules};

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub action: RuleAction,
    pub priority: i64,
    pub condition: Condition,
}

/// What makes a rule decide.
#[derive(Debug, Clone)]
pub enum Condition {
    /// Passes when the earlier operations came first (in order), and the final one at
    /// least `min_interval` after the previous one; violated otherwise.
    Allow {
        ops: Vec<OpId>,
        min_interval: Option<Nanos>,
    },
    /// Violated when the earlier operations came first, in order.
    Block { ops: Vec<OpId> },
    /// Violated by a session's requests to `op` beyond `limit` in one `period`.
    Rate { op: OpId, limit: u64, period: Nanos },
    /// Violated when the expression holds.
    Expression {
        source: String,
        compiled: Box<Expression>,
    },
}

impl Rule {
    /// The operations the rule applies to; `None`: every operation.
    fn applies_to(&self) -> Option<Vec<OpId>> {
        match &self.condition {
            Condition::Allow { ops, .. } | Condition::Block { ops } => {
                Some(ops.last().into_iter().copied().collect())
            }
            Condition::Rate { op, .. } => Some(vec![*op]),
            Condition::Expression { compiled, .. } => compiled.current_ops.clone(),
        }
    }

    fn kind(&self) -> Option<RuleKind> {
        match self.condition {
            Condition::Allow { .. } => Some(RuleKind::Allow),
            Condition::Block { .. } => Some(RuleKind::Block),
            Condition::Rate { .. } => Some(RuleKind::Rate),
            Condition::Expression { .. } => None,
        }
    }
}

/// Whether `ops`' earlier operations appear, in order, in `lookback` (oldest first;
/// others may be interleaved). On a match, the time of the latest request to the
/// previous operation.
fn earlier_ops_in(ops: &[OpId], lookback: &[Entry]) -> Option<Nanos> {
    let earlier = &ops[..ops.len() - 1];
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

/// Rules in evaluation order, with an index from operation to the rules that apply.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// By operation id: indices into `rules`, in evaluation order.
    by_op: Vec<Vec<u32>>,
    /// Rules that apply to every operation (expressions that name no current operation).
    everywhere: Vec<u32>,
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
            let mut error = |key: String, reason: String| {
                errors.push(ConfigError::new(file, key, reason));
            };
            let condition = match (rc.kind, &rc.expression) {
                (_, Some(source)) => match Expression::compile(source, catalog) {
                    Ok(compiled) => Condition::Expression {
                        source: source.clone(),
                        compiled: Box::new(compiled),
                    },
                    Err(reason) => {
                        error(format!("rule[{i}].expression"), reason);
                        continue;
                    }
                },
                (Some(RuleKind::Rate), None) => {
                    let name = rc.operation.as_deref().unwrap_or_default();
                    match catalog.lookup_for_rule(name) {
                        Ok(op) => Condition::Rate {
                            op,
                            limit: rc.limit.unwrap_or(1),
                            period: duration_nanos(rc.period.unwrap_or(DEFAULT_RATE_PERIOD)),
                        },
                        Err(reason) => {
                            error(format!("rule[{i}].operation"), reason);
                            continue;
                        }
                    }
                }
                (kind, None) => {
                    let mut ops = Vec::with_capacity(rc.sequence.len());
                    for (j, name) in rc.sequence.iter().enumerate() {
                        match catalog.lookup_for_rule(name) {
                            Ok(op) => ops.push(op),
                            Err(reason) => error(format!("rule[{i}].sequence[{j}]"), reason),
                        }
                    }
                    if ops.len() < rc.sequence.len() || ops.len() < 2 {
                        continue;
                    }
                    match kind {
                        Some(RuleKind::Allow) => Condition::Allow {
                            ops,
                            min_interval: rc.min_interval.map(duration_nanos),
                        },
                        _ => Condition::Block { ops },
                    }
                }
            };
            rules.push(Rule {
                id: rc
                    .id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                title: rc.title.clone(),
                action: rc.action,
                priority: rc.priority,
                condition,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Stable: equal priorities keep file order.
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        let mut by_op: Vec<Vec<u32>> = Vec::new();
        let mut everywhere = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let Some(ops) = rule.applies_to() else {
                everywhere.push(i as u32);
                continue;
            };
            for op in ops {
                let op = usize::from(op);
                if by_op.len() <= op {
                    by_op.resize_with(op + 1, Vec::new);
                }
                by_op[op].push(i as u32);
            }
        }
        Ok(Self {
            rules,
            by_op,
            everywhere,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether any rule applies to `op` (the cheap test before building a lookback).
    pub fn applies_to(&self, op: OpId) -> bool {
        !self.everywhere.is_empty() || !self.for_op(op).is_empty()
    }

    fn for_op(&self, op: OpId) -> &[u32] {
        self.by_op.get(usize::from(op)).map_or(&[], Vec::as_slice)
    }

    /// The rate rules that count requests to `op`, by index.
    pub fn rate_rules(&self, op: OpId) -> impl Iterator<Item = (u32, OpId, Nanos)> + '_ {
        self.for_op(op)
            .iter()
            .filter_map(|&i| match self.rules[i as usize].condition {
                Condition::Rate { op, period, .. } => Some((i, op, period)),
                _ => None,
            })
    }

    /// The rule a request violates, if any, and its index. `facts.previous` holds the
    /// session's earlier entries (oldest first) already cut to the lookback limits;
    /// `rate_count` gives a rate rule's count for this session, this request included.
    pub fn evaluate(
        &self,
        facts: &Facts<'_>,
        rate_count: &dyn Fn(u32) -> u64,
    ) -> Option<(usize, &Rule)> {
        let (mut a, mut b) = (self.for_op(facts.op), self.everywhere.as_slice());
        // Both lists are in evaluation order: walk them merged.
        loop {
            let i = match (a.first(), b.first()) {
                (Some(&x), Some(&y)) if x < y => {
                    a = &a[1..];
                    x
                }
                (_, Some(&y)) => {
                    b = &b[1..];
                    y
                }
                (Some(&x), None) => {
                    a = &a[1..];
                    x
                }
                (None, None) => return None,
            };
            let rule = &self.rules[i as usize];
            let violated = match &rule.condition {
                Condition::Allow { ops, min_interval } => {
                    let passes = earlier_ops_in(ops, facts.previous).is_some_and(|previous_at| {
                        min_interval.is_none_or(|min| facts.now.saturating_sub(previous_at) >= min)
                    });
                    if passes {
                        return None;
                    }
                    true
                }
                Condition::Block { ops } => earlier_ops_in(ops, facts.previous).is_some(),
                Condition::Rate { limit, .. } => rate_count(i) > *limit,
                Condition::Expression { compiled, .. } => compiled.matches(facts),
            };
            if violated {
                return Some((i as usize, rule));
            }
        }
    }

    /// The operations whose requests a kernel hold guards (SPEC §4): those a rule whose
    /// action is `block` applies to. An expression that names no current operation
    /// guards none (its verdict still cuts the connection).
    pub fn guarded_operations(&self) -> Vec<OpId> {
        let mut ops: Vec<OpId> = self
            .rules
            .iter()
            .filter(|r| r.action == RuleAction::Block)
            .flat_map(|r| r.applies_to().unwrap_or_default())
            .collect();
        ops.sort_unstable();
        ops.dedup();
        ops
    }
}

/// A rate rule's period when the rule gives none.
pub const DEFAULT_RATE_PERIOD: std::time::Duration = std::time::Duration::from_secs(600);

/// A rule as the admin API and `rules` commands show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleView {
    pub id: String,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<RuleKind>,
    pub action: RuleAction,
    /// Human forms, first to final (sequence rules; a rate rule's one operation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sequence: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    pub priority: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<String>,
}

fn human_duration(nanos: Nanos) -> String {
    humantime::format_duration(std::time::Duration::from_nanos(nanos)).to_string()
}

impl RuleSet {
    /// The rules in evaluation order, operations by their human form.
    pub fn views(&self, catalog: &Catalog) -> Vec<RuleView> {
        self.rules
            .iter()
            .map(|r| {
                let human = |ops: &[OpId]| ops.iter().map(|&op| catalog.get(op).human()).collect();
                let mut view = RuleView {
                    id: r.id.clone(),
                    title: r.title.clone(),
                    kind: r.kind(),
                    action: r.action,
                    sequence: Vec::new(),
                    expression: None,
                    limit: None,
                    period: None,
                    priority: r.priority,
                    min_interval: None,
                };
                match &r.condition {
                    Condition::Allow { ops, min_interval } => {
                        view.sequence = human(ops);
                        view.min_interval = min_interval.map(human_duration);
                    }
                    Condition::Block { ops } => view.sequence = human(ops),
                    Condition::Rate { op, limit, period } => {
                        view.sequence = human(&[*op]);
                        view.limit = Some(*limit);
                        view.period = Some(human_duration(*period));
                    }
                    Condition::Expression { source, .. } => view.expression = Some(source.clone()),
                }
                view
            })
            .collect()
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

    impl RuleSet {
        fn check(&self, op: OpId, lookback: &[Entry], now: Nanos) -> Option<&Rule> {
            let facts = Facts::sequence(op, lookback, now);
            self.evaluate(&facts, &|_| 0).map(|(_, rule)| rule)
        }
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
                .check(
                    transfer,
                    &entries(&[(balance, 0), (other, 100 * ms)]),
                    1000 * ms
                )
                .is_none()
        );
        let v = rules
            .check(transfer, &entries(&[(other, 0)]), 1000 * ms)
            .unwrap();
        assert_eq!(v.title, "transfer needs balance");
        assert!(
            rules
                .check(transfer, &entries(&[(balance, 700 * ms)]), 1000 * ms)
                .is_some(),
            "too fast"
        );
        assert!(
            rules.check(other, &[], 0).is_none(),
            "no rule ends with `other`"
        );
    }

    #[test]
    fn block_rule_and_priority() {
        let (mut c, rules) = setup(RULES);
        let login = c.lookup_for_rule("POST h/login").unwrap();
        let delete = c.lookup_for_rule("DELETE h/account").unwrap();
        assert_eq!(rules.rules()[0].priority, 5, "higher priority first");
        assert!(rules.check(delete, &entries(&[(login, 0)]), 1).is_some());
        assert!(rules.check(delete, &[], 1).is_none());
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
