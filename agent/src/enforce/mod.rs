//! Enforcement decisions (SPEC §4, `mode = "enforce"`): which connections to cut or
//! flag, and which sessions and clients stay blocked for `block_ttl`. Pure bookkeeping
//! driven by the pipeline; the live agent applies the verdicts in the kernel
//! (`kernel.rs`, `sock_destroy.rs`), replay only reports them.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::Nanos;
use crate::config::{BlockScope, EnforceConfig, EnforceMode, RuleAction};
use crate::duration_nanos;
use crate::packet::FlowKey;
use crate::session::SessionId;

pub mod hold;
pub mod kernel;
pub mod sock_destroy;

/// Blocked sessions or clients remembered at once; the soonest to expire go first.
pub const MAX_BLOCKED: usize = 65_536;

/// What to do to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Time of the packet that completed the request the verdict is about.
    pub at: Nanos,
    pub flow: FlowKey,
    pub action: VerdictAction,
    /// How long the kernel entry lives.
    pub ttl: Nanos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictAction {
    /// Drop the connection's packets both ways and reset it; with `block_client`, also
    /// drop the client address's request bytes on every connection.
    Cut { block_client: bool },
    /// Mark the connection's packets (skb->mark).
    Flag { mark: u32 },
}

/// Why a request was cut without a rule of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockedBy {
    Session,
    Client,
}

/// Blocked sessions and clients, each until an expiry (capture time).
pub struct Blocks {
    enforce: bool,
    scope: BlockScope,
    ttl: Nanos,
    mark: u32,
    sessions: HashMap<SessionId, Nanos, foldhash::fast::RandomState>,
    clients: HashMap<IpAddr, Nanos, foldhash::fast::RandomState>,
    /// Violations on unconfirmed connections that cut only their connection.
    unconfirmed: u64,
}

impl Blocks {
    pub fn new(config: &EnforceConfig) -> Self {
        Self {
            enforce: config.mode == EnforceMode::Enforce,
            scope: config.block_scope,
            ttl: duration_nanos(config.block_ttl),
            mark: config.flag_mark,
            sessions: HashMap::default(),
            clients: HashMap::default(),
            unconfirmed: 0,
        }
    }

    /// Violations whose session or client block was not taken: the connection had not
    /// shown it is real.
    pub fn unconfirmed(&self) -> u64 {
        self.unconfirmed
    }

    /// The verdict for a rule violation; `None` in monitor mode (it changes no traffic).
    /// `confirmed`: the client proved it is the connection's real end; without that, a
    /// spoofed packet could aim a session or client block at a bystander (SPEC §4), so
    /// only the connection itself is cut.
    pub fn on_violation(
        &mut self,
        now: Nanos,
        flow: FlowKey,
        session: SessionId,
        action: RuleAction,
        confirmed: bool,
    ) -> Option<Verdict> {
        if !self.enforce {
            return None;
        }
        let action = match action {
            RuleAction::Log => VerdictAction::Flag { mark: self.mark },
            RuleAction::Block => {
                let until = now.saturating_add(self.ttl);
                let scope = if confirmed {
                    self.scope
                } else {
                    if self.scope != BlockScope::Connection {
                        self.unconfirmed += 1;
                    }
                    BlockScope::Connection
                };
                match scope {
                    BlockScope::Connection => {}
                    BlockScope::Session => remember(&mut self.sessions, session, until),
                    BlockScope::ClientIp => remember(&mut self.clients, flow.client.ip(), until),
                }
                VerdictAction::Cut {
                    block_client: scope == BlockScope::ClientIp,
                }
            }
        };
        Some(Verdict {
            at: now,
            flow,
            action,
            ttl: self.ttl,
        })
    }

    /// A request on a new connection from a blocked session or client: cut it too.
    pub fn check(
        &mut self,
        now: Nanos,
        flow: FlowKey,
        session: Option<SessionId>,
    ) -> Option<(Verdict, BlockedBy)> {
        if !self.enforce || (self.sessions.is_empty() && self.clients.is_empty()) {
            return None;
        }
        let by = if session.is_some_and(|s| still_blocked(&mut self.sessions, &s, now)) {
            BlockedBy::Session
        } else if still_blocked(&mut self.clients, &flow.client.ip(), now) {
            BlockedBy::Client
        } else {
            return None;
        };
        let verdict = Verdict {
            at: now,
            flow,
            action: VerdictAction::Cut {
                block_client: by == BlockedBy::Client,
            },
            ttl: self.ttl,
        };
        Some((verdict, by))
    }

    pub fn blocked_sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn blocked_clients(&self) -> usize {
        self.clients.len()
    }
}

fn remember<K: std::hash::Hash + Eq + Copy>(
    map: &mut HashMap<K, Nanos, foldhash::fast::RandomState>,
    key: K,
    until: Nanos,
) {
    if map.len() >= MAX_BLOCKED && !map.contains_key(&key) {
        // Full: drop the entry that would expire first.
        if let Some(first) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
            map.remove(&first);
        }
    }
    let entry = map.entry(key).or_insert(until);
    *entry = (*entry).max(until);
}

fn still_blocked<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Nanos, foldhash::fast::RandomState>,
    key: &K,
    now: Nanos,
) -> bool {
    match map.get(key) {
        Some(&until) if until > now => true,
        Some(_) => {
            map.remove(key);
            false
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(mode: EnforceMode, scope: BlockScope) -> EnforceConfig {
        EnforceConfig {
            mode,
            block_scope: scope,
            block_ttl: Duration::from_secs(60),
            ..EnforceConfig::default()
        }
    }

    fn flow(port: u16) -> FlowKey {
        FlowKey {
            client: format!("10.0.0.1:{port}").parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
        }
    }

    const SEC: Nanos = 1_000_000_000;

    #[test]
    fn monitor_mode_decides_nothing() {
        let mut b = Blocks::new(&config(EnforceMode::Monitor, BlockScope::Session));
        assert!(
            b.on_violation(0, flow(1), SessionId(1), RuleAction::Block, true)
                .is_none()
        );
        assert!(b.check(1, flow(2), Some(SessionId(1))).is_none());
    }

    #[test]
    fn connection_scope_cuts_only_that_connection() {
        let mut b = Blocks::new(&config(EnforceMode::Enforce, BlockScope::Connection));
        let v = b
            .on_violation(0, flow(1), SessionId(1), RuleAction::Block, true)
            .unwrap();
        assert_eq!(
            v.action,
            VerdictAction::Cut {
                block_client: false
            }
        );
        assert!(b.check(1, flow(2), Some(SessionId(1))).is_none());
    }

    #[test]
    fn an_unconfirmed_connection_never_blocks_a_session_or_client() {
        for scope in [BlockScope::Session, BlockScope::ClientIp] {
            let mut b = Blocks::new(&config(EnforceMode::Enforce, scope));
            let v = b
                .on_violation(0, flow(1), SessionId(1), RuleAction::Block, false)
                .unwrap();
            // The (possibly spoofed) connection itself is still cut...
            assert_eq!(
                v.action,
                VerdictAction::Cut {
                    block_client: false
                }
            );
            // ...but the session and the address it names stay unblocked.
            assert!(
                b.check(1, flow(2), Some(SessionId(1))).is_none(),
                "{scope:?}"
            );
            assert_eq!(b.unconfirmed(), 1);
        }
    }

    #[test]
    fn session_scope_cuts_new_connections_until_the_ttl() {
        let mut b = Blocks::new(&config(EnforceMode::Enforce, BlockScope::Session));
        b.on_violation(0, flow(1), SessionId(1), RuleAction::Block, true)
            .unwrap();
        let (v, by) = b.check(SEC, flow(2), Some(SessionId(1))).unwrap();
        assert_eq!((v.flow, by), (flow(2), BlockedBy::Session));
        assert!(
            b.check(SEC, flow(3), Some(SessionId(2))).is_none(),
            "other sessions pass"
        );
        assert!(
            b.check(61 * SEC, flow(4), Some(SessionId(1))).is_none(),
            "expired"
        );
        assert_eq!(b.blocked_sessions(), 0);
    }

    #[test]
    fn client_scope_blocks_the_address() {
        let mut b = Blocks::new(&config(EnforceMode::Enforce, BlockScope::ClientIp));
        let v = b
            .on_violation(0, flow(1), SessionId(1), RuleAction::Block, true)
            .unwrap();
        assert_eq!(v.action, VerdictAction::Cut { block_client: true });
        let (_, by) = b.check(SEC, flow(9), None).unwrap();
        assert_eq!(by, BlockedBy::Client);
    }

    #[test]
    fn log_rules_flag() {
        let mut b = Blocks::new(&config(EnforceMode::Enforce, BlockScope::Connection));
        let v = b
            .on_violation(0, flow(1), SessionId(1), RuleAction::Log, true)
            .unwrap();
        assert_eq!(v.action, VerdictAction::Flag { mark: 0x5e9 });
    }
}
