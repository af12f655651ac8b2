//! The one path every request takes, whatever the source: segments → reassembly → HTTP
//! → operation → session → analytics and rules → alerts. Replay and the live agent both
//! drive a [`Pipeline`]; only where segments come from differs.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::alerts::{
    Alert, AlertAction, ENUMERATION_SUSPECTED, OutcomeSink, RATE_EXCEEDED, SEQUENCE_VIOLATION,
    rfc3339,
};
use crate::analytics::{Analytics, AnalyticsState, hour_of};
use crate::budget::BufferBudget;
use crate::config::{Config, ConfigError, EnforceMode, RuleAction};
use crate::defrag::{Defrag, FragStats};
use crate::enforce::Blocks;
use crate::fleet::{Fleet, SharedHistory};
use crate::flow::{FlowLimits, FlowStats, FlowTable, MAX_FLOWS, Piece};
use crate::http::{HttpStats, HttpStream, RequestHead};
use crate::ops::{
    Catalog, OpId, Operation, Resolved, normalise_host, normalise_request_path, split_target,
};
use crate::packet::{Captured, Direction, FlowKey, Fragment, Segment, tcp_segment};
use crate::report::{OperationReport, Report, SequenceReport, Stats};
use crate::rules::{Condition, Facts, RuleSet, rate::RateCounters};
use crate::session::{
    Entry, SessionCache, SessionId, SessionIdentifier, SessionState, SessionStats, Sessions,
};
use crate::signals::{Distribution, Signals, SignalsState};
use crate::source::pcap::{PcapCounters, PcapError, decode_frame, decode_ip, for_each_packet};
use crate::{Nanos, duration_nanos};

/// Everything learned, with operations by the catalog's ids at save time: what
/// `persist.rs` writes to the state dir (its `FORMAT_VERSION` changes with this layout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Newest packet time seen (replay's report time).
    pub newest: Nanos,
    pub operations: Vec<Operation>,
    pub analytics: AnalyticsState,
    pub sessions: Vec<SessionState>,
    pub totals: Totals,
    /// Per-session rates and path-variable values (format 4 on).
    pub signals: SignalsState,
}

/// Run totals (SPEC §6 `stats`), carried across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub packets: u64,
    pub lost_events: u64,
    pub http: HttpStats,
    pub flows: FlowStats,
    pub fragments: FragStats,
    pub sessions: SessionStats,
    pub unidentified: u64,
    pub unmatched: u64,
    pub other: u64,
    pub alerts: u64,
}

/// One entry of a session's history, as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryEntryView {
    pub operation_id: String,
    pub operation: String,
    /// Seconds since the entry's latest request.
    pub age_secs: f64,
}

/// Request outcomes that are not visible in the stages' own stats.
#[derive(Debug, Default, Clone, Copy)]
struct RequestCounters {
    unidentified: u64,
    unmatched: u64,
    other: u64,
    alerts: u64,
}

/// Everything after HTTP extraction: it sees one request at a time.
struct Analysis {
    catalog: Catalog,
    identifier: SessionIdentifier,
    sessions: Sessions,
    analytics: Analytics,
    rules: RuleSet,
    /// Per-session counts of the rate rules.
    rates: RateCounters,
    /// Per-session request rates and path-variable values, per operation.
    signals: Signals,
    mode: EnforceMode,
    lookback_ops: usize,
    lookback: Nanos,
    counters: RequestCounters,
    /// Blocked sessions and clients (enforce mode).
    blocks: Blocks,
    /// Violations by (rule index, action).
    violations: HashMap<(usize, AlertAction), u64, foldhash::fast::RandomState>,
    /// Reused for the normalised host and path of each request.
    host: String,
    path: String,
    /// `[fleet]`: session histories shared with the other hosts' agents.
    fleet: Option<Fleet>,
    /// With a fleet: requests waiting for their shared histories, in order.
    deferred: Vec<Deferred>,
}

/// Per-connection state: the request stream, the session its requests last named, and
/// whether the client proved it is the connection's real end (not a spoofed source):
/// only then may a violation block a whole session or client address (SPEC §4).
#[derive(Default)]
struct Connection {
    http: HttpStream,
    session: SessionCache,
    confirmed: bool,
}

pub struct Pipeline {
    /// IP fragments waiting for the rest of their datagram.
    defrag: Defrag,
    /// The analysed server ports (for segments put back together from fragments).
    ports: Vec<u16>,
    flows: FlowTable<Connection>,
    /// `[capture] max_buffer_bytes`: out-of-order segments and unfinished heads.
    buffers: BufferBudget,
    http: HttpStats,
    analysis: Analysis,
    packets: u64,
    lost_events: u64,
    /// Events lost by earlier runs (restored from a snapshot).
    lost_base: u64,
    newest: Nanos,
    min_support: u64,
    window: Nanos,
}

impl Pipeline {
    /// Builds the pipeline for a config; `secret` is the install's session-hash key.
    pub fn new(config: &Config, secret: &[u8; 32]) -> Result<Self, ConfigError> {
        let mut catalog = Catalog::from_config(config)?;
        let rules = RuleSet::compile(&config.rules, &mut catalog, &config.source)?;
        let seq = &config.sequence;
        let window = duration_nanos(seq.window);
        let buffers = BufferBudget::new(config.capture.max_buffer_bytes);
        Ok(Self {
            defrag: Defrag::default(),
            ports: config.capture.ports.clone(),
            flows: FlowTable::new(
                FlowLimits {
                    max_flows: MAX_FLOWS,
                    idle_timeout: duration_nanos(config.capture.flow_idle_timeout),
                },
                buffers.clone(),
            ),
            buffers,
            http: HttpStats::default(),
            analysis: Analysis {
                catalog,
                identifier: SessionIdentifier::new(&config.session.identifiers, secret)
                    .with_verifier(crate::session::JwtVerifier::from_config(config)?),
                sessions: Sessions::new(seq.max_sessions, duration_nanos(seq.idle_timeout)),
                analytics: Analytics::new(window, seq.max_ops, seq.max_sequences),
                rules,
                rates: RateCounters::default(),
                signals: Signals::new(config.enumeration.clone(), secret, window),
                mode: config.enforce.mode,
                lookback_ops: config.enforce.lookback_ops,
                lookback: duration_nanos(config.enforce.lookback),
                counters: RequestCounters::default(),
                blocks: Blocks::new(&config.enforce),
                violations: HashMap::default(),
                host: String::new(),
                path: String::new(),
                fleet: None,
                deferred: Vec::new(),
            },
            packets: 0,
            lost_events: 0,
            lost_base: 0,
            newest: 0,
            min_support: seq.min_support,
            window,
        })
    }

    /// Takes one segment (client → server bytes, or the server's header facts); alerts
    /// for the requests it completes go to `alerts` before this returns.
    pub fn process(&mut self, seg: &Segment<'_>, alerts: &mut dyn OutcomeSink) {
        if seg.is_bare_ack() {
            return; // Not counted either: live, the kernel never hands these over.
        }
        if seg.dir == Direction::ToServer {
            self.packets += 1;
        }
        self.newest = self.newest.max(seg.ts);
        let Self {
            flows,
            buffers,
            http,
            analysis,
            ..
        } = self;
        let mut deliver = Deliver {
            ts: seg.ts,
            buffers,
            http,
            analysis,
            alerts,
        };
        flows.push(seg, &mut |conn: &mut Connection, key: &FlowKey, piece| {
            deliver.piece(conn, key, piece)
        });
    }

    /// Takes what a capture source read: a segment, or an IP fragment whose datagram,
    /// once complete, is processed as the segment it carries.
    #[inline]
    pub fn process_captured(&mut self, packet: &Captured<'_>, alerts: &mut dyn OutcomeSink) {
        match packet {
            Captured::Segment(seg) => self.process(seg, alerts),
            Captured::Fragment(fragment) => self.process_fragment(fragment, alerts),
            &Captured::RawIp { ts, packet, cut } => {
                // Decoded here into a segment or fragment (never another raw packet).
                if let Some(decoded) = decode_ip(ts, packet, cut, &self.ports) {
                    self.process_captured(&decoded, alerts);
                }
            }
            &Captured::HeldFrame { ts, frame, cut } => {
                if let Some(decoded) = decode_frame(ts, frame, cut, &self.ports) {
                    self.process_captured(&decoded, alerts);
                }
            }
        }
    }

    fn process_fragment(&mut self, fragment: &Fragment<'_>, alerts: &mut dyn OutcomeSink) {
        let Some(datagram) = self.defrag.push(fragment) else {
            return;
        };
        let bytes = &datagram.payload;
        let header_len = bytes.get(12).map_or(0, |b| usize::from(b >> 4) * 4);
        if header_len < 20 || bytes.len() < header_len {
            return; // Not a TCP header the capture kept whole: nothing to reassemble.
        }
        let (header, payload) = bytes.split_at(header_len);
        let wire_len = datagram.wire_len.saturating_sub(header_len as u32);
        if let Some(seg) = tcp_segment(
            datagram.ts,
            datagram.src,
            datagram.dst,
            header,
            payload,
            wire_len,
            &self.ports,
        ) {
            self.process(&seg, alerts);
        }
    }

    /// Whether the connection has a request started whose head has not arrived whole, or
    /// bytes queued behind a hole: a held request there cannot be judged yet.
    pub fn awaiting_request(&self, flow: &FlowKey) -> bool {
        self.flows
            .peek(flow)
            .is_some_and(|(conn, out_of_order)| out_of_order || conn.http.mid_head())
    }

    /// The requests a kernel hold guards (SPEC §4): method and path template of the
    /// operations rules whose action is `block` apply to.
    pub fn guarded_operations(&self) -> Vec<(String, String)> {
        let catalog = &self.analysis.catalog;
        let mut out: Vec<(String, String)> = self
            .analysis
            .rules
            .guarded_operations()
            .into_iter()
            .map(|op| {
                let op = catalog.get(op);
                (op.method.clone(), op.path.clone())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Upkeep when no segment arrives (live): skips stale reassembly holes and forgets
    /// idle connections as of `now`.
    pub fn tick(&mut self, now: Nanos, alerts: &mut dyn OutcomeSink) {
        let Self {
            flows,
            buffers,
            http,
            analysis,
            ..
        } = self;
        let mut deliver = Deliver {
            ts: now,
            buffers,
            http,
            analysis,
            alerts,
        };
        flows.sweep(now, &mut |conn: &mut Connection, key: &FlowKey, piece| {
            deliver.piece(conn, key, piece)
        });
        self.analysis.settle_fleet(alerts);
        if let Some(fleet) = &mut self.analysis.fleet
            && fleet.flush_due()
        {
            self.flush_fleet();
        }
    }

    /// Runs a whole pcap / pcapng capture (its bytes: map a file) through the pipeline.
    pub fn replay_pcap(
        &mut self,
        capture: &[u8],
        ports: &[u16],
        alerts: &mut dyn OutcomeSink,
    ) -> Result<PcapCounters, PcapError> {
        let counters = for_each_packet(capture, ports, |packet| {
            self.process_captured(&packet, alerts)
        });
        self.settle_fleet(alerts);
        counters
    }

    /// Bytes buffered now (out-of-order segments and unfinished heads) and the limit.
    pub fn buffered_bytes(&self) -> (usize, usize) {
        (self.buffers.used(), self.buffers.limit())
    }

    /// Events the live source lost before they reached the pipeline: the kernel's
    /// running total since this agent started (added to what earlier runs lost).
    pub fn set_lost_events(&mut self, total: u64) {
        self.lost_events = self.lost_base + total;
        self.flows.set_capture_loss(total);
    }

    /// Time of the newest packet seen: the report time of a replay.
    pub fn newest(&self) -> Nanos {
        self.newest
    }

    pub fn catalog(&self) -> &Catalog {
        &self.analysis.catalog
    }

    /// Replaces the rules with those of `config` (SIGHUP, the admin API). A config whose
    /// rules do not compile changes nothing: the old rules stay.
    pub fn reload_rules(&mut self, config: &Config) -> Result<usize, ConfigError> {
        let rules = RuleSet::compile(&config.rules, &mut self.analysis.catalog, &config.source)?;
        let n = rules.rules().len();
        self.analysis.rules = rules;
        // Counts are kept by rule position: a new rule set starts them over.
        self.analysis.violations.clear();
        self.analysis.rates.clear();
        Ok(n)
    }

    pub fn rules(&self) -> &RuleSet {
        &self.analysis.rules
    }

    pub fn stats(&self) -> Stats {
        let c = self.analysis.counters;
        Stats {
            packets: self.packets,
            requests: self.http.requests,
            unidentified_requests: c.unidentified,
            parse_errors: self.http.parse_errors,
            lost_events: self.lost_events,
            truncated_requests: self.http.truncated_requests,
            lenient_requests: self.http.lenient_requests,
            ambiguous_framing: self.http.ambiguous_framing,
            heads_over_budget: self.http.heads_over_budget,
            unmatched_requests: c.unmatched,
            other_requests: c.other,
            alerts: c.alerts,
            unconfirmed_violations: self.analysis.blocks.unconfirmed(),
            sequences_evicted: self.analysis.analytics.sequences_evicted(),
            flows: self.flows.stats(),
            fragments: self.defrag.stats(),
            sessions: self.analysis.sessions.stats(),
            fleet: self.analysis.fleet.as_ref().map(Fleet::stats),
        }
    }

    /// Shares session histories with the other hosts' agents from now on (`[fleet]`).
    pub fn set_fleet(&mut self, fleet: Fleet) {
        self.analysis.fleet = Some(fleet);
    }

    /// Requests to each operation that had any, per hour of the window ending at `now`
    /// (oldest first; this agent's counts): the console's sparklines.
    pub fn hourly_requests(&self, now: Nanos) -> Vec<(String, Vec<u64>)> {
        let a = &self.analysis;
        a.catalog
            .iter()
            .filter(|(id, _)| a.analytics.op_totals(*id, now).requests > 0)
            .map(|(id, op)| (op.id.clone(), a.analytics.hourly_requests(id, now)))
            .collect()
    }

    /// Requests whose (session, operation) pair the signals could not track (their
    /// window's table was full), and rate-rule requests not counted for the same reason.
    pub fn signals_untracked(&self) -> u64 {
        self.analysis.signals.untracked + self.analysis.rates.untracked
    }

    /// Each operation's requests per session per 10-minute window over the window ending
    /// at `now` (`/metrics`), by human form.
    pub fn session_rates(&self, now: Nanos) -> Vec<(String, Distribution)> {
        let a = &self.analysis;
        a.signals
            .distributions(now)
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| Some((a.catalog.get(i as OpId).human(), s.session_rate?)))
            .collect()
    }

    /// Decides the requests waiting for the fleet's answer (one round trip for all):
    /// live, after each ring batch; replay does it every few hundred requests and at
    /// the end.
    pub fn settle_fleet(&mut self, alerts: &mut dyn OutcomeSink) {
        self.analysis.settle_fleet(alerts);
    }

    /// Adds this agent's counts to the fleet's now (they also go once a second while
    /// requests come, and on every tick): before a report that must include them, and
    /// when stopping.
    pub fn flush_fleet(&mut self) {
        let Analysis { fleet, catalog, .. } = &mut self.analysis;
        if let Some(fleet) = fleet {
            fleet.flush(|op| catalog.get(op).id.as_str());
        }
    }

    /// Everything learned so far, for a snapshot.
    pub fn snapshot(&self) -> Snapshot {
        let a = &self.analysis;
        let c = a.counters;
        Snapshot {
            newest: self.newest,
            operations: a.catalog.iter().map(|(_, op)| op.clone()).collect(),
            analytics: a.analytics.export(),
            sessions: a.sessions.export(),
            signals: a.signals.export(),
            totals: Totals {
                packets: self.packets,
                lost_events: self.lost_events,
                http: self.http,
                flows: self.flows.stats(),
                fragments: self.defrag.stats(),
                sessions: a.sessions.stats(),
                unidentified: c.unidentified,
                unmatched: c.unmatched,
                other: c.other,
                alerts: c.alerts,
            },
        }
    }

    /// Carries on from a snapshot (taken right after `new`). Saved operations map onto
    /// this config's catalog by (method, host, template); counts of operations that are
    /// gone are dropped. A snapshot of another window length is refused.
    pub fn restore(&mut self, snapshot: Snapshot) -> Result<(), String> {
        let a = &mut self.analysis;
        let remap: Vec<Option<OpId>> = snapshot
            .operations
            .iter()
            .map(|op| a.catalog.restore(op))
            .collect();
        let remap = |old: OpId| remap.get(usize::from(old)).copied().flatten();
        a.analytics.import(snapshot.analytics, &remap)?;
        let t = snapshot.totals;
        a.sessions.import(snapshot.sessions, t.sessions, &remap);
        a.signals.import(snapshot.signals, &remap);
        a.counters = RequestCounters {
            unidentified: t.unidentified,
            unmatched: t.unmatched,
            other: t.other,
            alerts: t.alerts,
        };
        self.http = t.http;
        self.flows.restore_stats(t.flows);
        self.defrag.restore_stats(t.fragments);
        self.packets = t.packets;
        self.lost_base = t.lost_events;
        self.lost_events = t.lost_events;
        self.newest = self.newest.max(snapshot.newest);
        Ok(())
    }

    /// A session's current history, most recent last, with each entry's age at `now`.
    pub fn session_history(&self, id: SessionId, now: Nanos) -> Option<Vec<HistoryEntryView>> {
        let session = self.analysis.sessions.get(id)?;
        Some(
            session
                .history
                .entries()
                .iter()
                .map(|e| {
                    let op = self.analysis.catalog.get(e.op);
                    HistoryEntryView {
                        operation_id: op.id.clone(),
                        operation: op.human(),
                        age_secs: now.saturating_sub(e.at) as f64 / crate::NANOS_PER_SEC as f64,
                    }
                })
                .collect(),
        )
    }

    /// HTTP requests parsed so far (cheap: for per-request timing).
    pub fn stats_requests(&self) -> u64 {
        self.http.requests
    }

    /// Violations so far: (rule id, title, action, count), for metrics.
    pub fn violations(&self) -> Vec<(String, String, &'static str, u64)> {
        let rules = self.analysis.rules.rules();
        self.analysis
            .violations
            .iter()
            .filter_map(|(&(i, action), &n)| {
                let rule = rules.get(i)?;
                let action = match action {
                    AlertAction::Log => "log",
                    AlertAction::Block => "block",
                    AlertAction::WouldBlock => "would_block",
                };
                Some((rule.id.clone(), rule.title.clone(), action, n))
            })
            .collect()
    }

    /// Live sessions and tracked sequences right now (gauges).
    pub fn table_sizes(&self) -> (usize, usize) {
        (
            self.analysis.sessions.len(),
            self.analysis.analytics.tracked_sequences(),
        )
    }

    /// The report for the window ending at `now`.
    pub fn report(&self, now: Nanos) -> Report {
        self.report_inputs(now).finish()
    }

    /// What a report needs, copied out in one pass (no scoring): the live agent takes it
    /// under the pipeline's lock and builds the report outside it, so capture and
    /// enforcement never wait for the scoring of a large report.
    pub fn report_inputs(&self, now: Nanos) -> ReportInputs {
        let a = &self.analysis;
        let signals = a.signals.distributions(now);
        let ops = a
            .catalog
            .iter()
            .map(|(id, op)| {
                let totals = a.analytics.op_totals(id, now);
                OperationReport {
                    id: op.id.clone(),
                    host: op.host.clone(),
                    method: op.method.clone(),
                    path: op.path.clone(),
                    requests: totals.requests,
                    occurrences: totals.occurrences,
                    session_rate: signals.get(usize::from(id)).and_then(|s| s.session_rate),
                    distinct_values: signals.get(usize::from(id)).and_then(|s| s.distinct_values),
                }
            })
            .collect();
        ReportInputs {
            now,
            window_secs: self.window / crate::NANOS_PER_SEC,
            min_support: self.min_support,
            ops,
            configured: a.catalog.iter().map(|(_, op)| op.configured).collect(),
            scores: a.analytics.score_inputs(now),
            stats: self.stats(),
            fleet: a.fleet.as_ref().map(|f| (f.reader(), a.analytics.slots())),
        }
    }
}

/// A report's data at one point in time (see [`Pipeline::report_inputs`]).
pub struct ReportInputs {
    now: Nanos,
    window_secs: u64,
    min_support: u64,
    /// Every operation by `OpId`, with this agent's counts.
    ops: Vec<OperationReport>,
    /// Whether each was configured (listed even when nothing came).
    configured: Vec<bool>,
    scores: crate::analytics::ScoreInputs,
    stats: Stats,
    /// `[fleet]`: where the fleet's counts are read, and the hours in the window.
    fleet: Option<(crate::fleet::FleetReader, u32)>,
}

impl ReportInputs {
    /// The operations with their counts: configured ones, and any that saw a request.
    pub fn operations(self) -> Vec<OperationReport> {
        listed(self.ops, self.configured)
    }

    /// With a fleet: the fleet's merged counts in place of this agent's (read off the
    /// capture thread; this agent's own last second may not be in them yet). When they
    /// cannot be read, this agent's counts stay and the report says so.
    fn merge_fleet(&mut self) -> Option<String> {
        let (reader, slots) = self.fleet.take()?;
        let now = hour_of(self.now);
        let counts = match reader.read(now.saturating_sub(slots - 1)..=now) {
            Ok(counts) => counts,
            Err(e) => return Some(format!("host: the fleet's counts could not be read ({e})")),
        };
        let mut index: HashMap<String, OpId> = self
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| (op.id.clone(), i as OpId))
            .collect();
        // Operations other agents published that this one has not seen.
        let mut others: Vec<(&String, &String)> = counts.operations.iter().collect();
        others.sort();
        for (id, human) in others {
            if index.contains_key(id) || self.ops.len() > usize::from(OpId::MAX) {
                continue;
            }
            let Some((method, rest)) = human.split_once(' ') else {
                continue;
            };
            let slash = rest.find('/').unwrap_or(rest.len());
            index.insert(id.clone(), self.ops.len() as OpId);
            self.ops.push(OperationReport {
                id: id.clone(),
                host: rest[..slash].to_string(),
                method: method.to_string(),
                path: rest[slash..].to_string(),
                requests: 0,
                occurrences: 0,
                session_rate: None,
                distinct_values: None,
            });
            self.configured.push(false);
        }
        for op in &mut self.ops {
            op.requests = counts.requests.get(&op.id).copied().unwrap_or(0);
            op.occurrences = counts.occurrences.get(&op.id).copied().unwrap_or(0);
        }
        let windows = counts
            .windows
            .iter()
            .filter_map(|(ids, n)| {
                let ops: Option<Vec<OpId>> = ids.iter().map(|id| index.get(id).copied()).collect();
                Some((crate::analytics::SeqKey::from_ops(&ops?), *n))
            })
            .collect();
        let occurrences = self.ops.iter().map(|op| op.occurrences).collect();
        self.scores = crate::analytics::ScoreInputs::from_counts(windows, occurrences);
        Some("fleet".to_string())
    }

    /// Scores the sequences and builds the report.
    pub fn finish(mut self) -> Report {
        let counts = self.merge_fleet();
        let op_ids: Vec<String> = self.ops.iter().map(|op| op.id.clone()).collect();
        let sequences = self
            .scores
            .scores(self.min_support)
            .into_iter()
            .map(|s| SequenceReport {
                operations: s
                    .ops
                    .iter()
                    .map(|&op| op_ids.get(usize::from(op)).cloned().unwrap_or_default())
                    .collect(),
                count: s.count,
                last_op_count: s.last_op_count,
                score: s.score,
                score_lower: s.score_lower,
            })
            .collect();
        Report {
            generated_at: rfc3339(self.now),
            window_secs: self.window_secs,
            counts,
            operations: listed(self.ops, self.configured),
            sequences,
            stats: self.stats,
        }
    }
}

/// The operations a report lists: configured ones, and any that saw a request.
fn listed(ops: Vec<OperationReport>, configured: Vec<bool>) -> Vec<OperationReport> {
    ops.into_iter()
        .zip(configured)
        .filter(|(op, configured)| *configured || op.requests > 0)
        .map(|(op, _)| op)
        .collect()
}

/// Hands a connection's in-order bytes to its HTTP stream, and each request it
/// completes to the analysis: the one delivery path of `process` and `tick`.
struct Deliver<'a> {
    ts: Nanos,
    buffers: &'a BufferBudget,
    http: &'a mut HttpStats,
    analysis: &'a mut Analysis,
    alerts: &'a mut dyn OutcomeSink,
}

impl Deliver<'_> {
    fn piece(&mut self, conn: &mut Connection, key: &FlowKey, piece: Piece<'_>) {
        if piece == Piece::Confirmed {
            conn.confirmed = true;
            return;
        }
        let Connection {
            http: stream,
            session,
            confirmed,
        } = conn;
        let confirmed = *confirmed;
        let Self {
            ts,
            buffers,
            http,
            analysis,
            alerts,
        } = self;
        stream.feed(piece, buffers, http, &mut |head: &RequestHead<'_>| {
            analysis.on_request(*ts, key, confirmed, head, session, *alerts)
        });
    }
}

impl Analysis {
    fn on_request(
        &mut self,
        ts: Nanos,
        flow: &FlowKey,
        confirmed: bool,
        head: &RequestHead<'_>,
        session_cache: &mut SessionCache,
        alerts: &mut dyn OutcomeSink,
    ) {
        let (authority, path) = split_target(head.target);
        let host_raw = authority
            .map(str::as_bytes)
            .or_else(|| head.header("host"))
            .unwrap_or_default();
        normalise_host(host_raw, &mut self.host);
        self.catalog.canonical_host(&mut self.host);
        // Rules and endpoints match the path as servers route it; alerts show it as sent.
        let mut scratch = std::mem::take(&mut self.path);
        let routed = normalise_request_path(path, &mut scratch);
        let op = match self.catalog.resolve(&self.host, head.method, routed) {
            Resolved::Op(op) => Some(op),
            Resolved::Unmatched => {
                self.counters.unmatched += 1;
                None
            }
            Resolved::Other => {
                self.counters.other += 1;
                None
            }
        };
        if let Some(op) = op {
            self.analytics.record_request(op, ts);
            if let Some(fleet) = &mut self.fleet {
                fleet.count_request(op, hour_of(ts));
                if fleet.flush_due() {
                    fleet.flush(|op| self.catalog.get(op).id.as_str());
                }
            }
        }
        let session = self.identifier.identify(head, session_cache);
        // A new connection of a blocked session or client is cut on its first request.
        if let Some((verdict, _)) = self.blocks.check(ts, *flow, session) {
            alerts.enforce(&verdict);
        }
        let analysed = match (session, op) {
            (None, _) => {
                self.counters.unidentified += 1;
                None
            }
            // Requests with no operation leave session state alone (SPEC §3).
            (Some(_), None) => None,
            (Some(session), Some(op)) => Some((session, op)),
        };
        if let Some((session_id, op)) = analysed {
            self.analyse(
                ts,
                flow,
                confirmed,
                session_id,
                op,
                head.method,
                path,
                routed,
                alerts,
            );
        }
        self.path = scratch;
    }

    /// An identified request to an operation: decided now, or once the fleet answers.
    #[allow(clippy::too_many_arguments)]
    fn analyse(
        &mut self,
        ts: Nanos,
        flow: &FlowKey,
        confirmed: bool,
        session_id: SessionId,
        op: OpId,
        method: &str,
        path: &str,
        routed: &str,
        alerts: &mut dyn OutcomeSink,
    ) {
        let request = Request {
            ts,
            flow: *flow,
            confirmed,
            session: session_id,
            op,
        };
        if self.fleet.is_some() {
            // The shared histories of a batch of requests are asked for in one round
            // trip; their verdicts follow when it answers (`settle_fleet`).
            self.deferred.push(Deferred {
                request,
                host: self.host.clone(),
                method: method.to_string(),
                path: path.to_string(),
                routed: routed.to_string(),
            });
            if self.deferred.len() >= MAX_DEFERRED {
                self.settle_fleet(alerts);
            }
            return;
        }
        let host = std::mem::take(&mut self.host);
        let seen = Seen {
            host: &host,
            method,
            path,
            routed,
        };
        self.decide(&request, None, &seen, alerts);
        self.host = host;
    }

    /// Asks the fleet for the shared histories of the deferred requests (one round
    /// trip), then decides each in order.
    fn settle_fleet(&mut self, alerts: &mut dyn OutcomeSink) {
        if self.deferred.is_empty() {
            return;
        }
        let deferred = std::mem::take(&mut self.deferred);
        let replies = self.fleet.as_mut().and_then(|fleet| {
            for d in &deferred {
                fleet.publish_operation(d.request.op, self.catalog.get(d.request.op));
            }
            let calls: Vec<(SessionId, &str, Nanos)> = deferred
                .iter()
                .map(|d| {
                    let r = &d.request;
                    (r.session, self.catalog.get(r.op).id.as_str(), r.ts)
                })
                .collect();
            fleet.record_batch(&calls)
        });
        for (i, d) in deferred.iter().enumerate() {
            let shared = replies.as_ref().map(|r| &r[i]);
            let seen = Seen {
                host: &d.host,
                method: &d.method,
                path: &d.path,
                routed: &d.routed,
            };
            self.decide(&d.request, shared, &seen, alerts);
        }
        self.deferred = deferred;
        self.deferred.clear();
    }

    /// The rest of a request's analysis once its session history is known (the
    /// fleet's `shared` one, or the local one): history, counts, rules, verdicts.
    fn decide(
        &mut self,
        r: &Request,
        shared: Option<&SharedHistory>,
        seen: &Seen<'_>,
        alerts: &mut dyn OutcomeSink,
    ) {
        let (ts, flow, op, session_id) = (r.ts, &r.flow, r.op, r.session);
        let entries = shared.map(|shared| {
            let (catalog, fleet) = (&mut self.catalog, &mut self.fleet);
            crate::fleet::local_entries(shared, |id| {
                catalog.by_stable_id(id).or_else(|| {
                    // Another agent saw it first: learn it by its human form.
                    let human = fleet.as_mut()?.operation(id)?;
                    catalog.lookup_for_rule(&human).ok()
                })
            })
        });
        let signals = self
            .signals
            .record(session_id, op, ts, seen.routed, &self.catalog);
        if signals.newly_suspected {
            self.counters.alerts += 1;
            let operation = self.catalog.get(op).human();
            alerts.alert(Alert {
                rule_title: format!(
                    "{} distinct values in 10 min (threshold {})",
                    signals.distinct_values, signals.threshold
                ),
                ..seen.alert(r, ENUMERATION_SUSPECTED, AlertAction::Log, operation)
            });
        }
        let session = self.sessions.touch(session_id, ts);
        let new = match (shared, entries) {
            (Some(shared), Some(entries)) => {
                session.history.replace(&entries);
                shared.new
            }
            _ => session.history.record(op, ts),
        };
        if new {
            let window = self
                .analytics
                .record_occurrence(session.history.entries(), ts);
            if let Some(fleet) = &mut self.fleet {
                fleet.count_occurrence(op, window, hour_of(ts));
            }
        }
        if !self.rules.applies_to(op) {
            return;
        }
        let (requests, age) = (session.requests(), session.age(ts));
        let entries = session.history.entries();
        let earlier = &entries[..entries.len() - 1];
        let mut lookback = [Entry::default(); crate::session::HISTORY_LEN];
        let mut n = 0;
        for e in &earlier[earlier.len().saturating_sub(self.lookback_ops)..] {
            if ts.saturating_sub(e.at) <= self.lookback {
                lookback[n] = *e;
                n += 1;
            }
        }
        let lookback = &lookback[..n];
        let facts = Facts {
            op,
            previous: lookback,
            now: ts,
            method: seen.method,
            host: seen.host,
            path: seen.routed,
            session_requests: requests,
            session_age: age,
            op_requests: signals.requests,
            distinct_values: signals.distinct_values,
            enumeration_suspected: signals.enumeration_suspected,
        };
        for (i, _, period) in self.rules.rate_rules(op) {
            self.rates.count(i, session_id, ts, period);
        }
        let rates = &self.rates;
        let Some((rule_index, rule)) = self.rules.evaluate(&facts, &|i| rates.get(i, session_id))
        else {
            return;
        };
        let action = match (rule.action, self.mode) {
            (RuleAction::Log, _) => AlertAction::Log,
            (RuleAction::Block, EnforceMode::Monitor) => AlertAction::WouldBlock,
            (RuleAction::Block, EnforceMode::Enforce) => AlertAction::Block,
        };
        self.counters.alerts += 1;
        *self.violations.entry((rule_index, action)).or_default() += 1;
        if let Some(verdict) =
            self.blocks
                .on_violation(ts, *flow, session_id, rule.action, r.confirmed)
        {
            alerts.enforce(&verdict);
        }
        let human = |op: OpId| self.catalog.get(op).human();
        let event = match rule.condition {
            Condition::Rate { .. } => RATE_EXCEEDED,
            _ => SEQUENCE_VIOLATION,
        };
        alerts.alert(Alert {
            rule_id: rule.id.clone(),
            rule_title: rule.title.clone(),
            previous_operations: lookback.iter().rev().map(|e| human(e.op)).collect(),
            ..seen.alert(r, event, action, human(op))
        });
    }
}

/// A request of an identified session to an operation: what deciding it needs.
struct Request {
    ts: Nanos,
    flow: FlowKey,
    confirmed: bool,
    session: SessionId,
    op: OpId,
}

/// What a request said, as rules read it and alerts show it.
struct Seen<'a> {
    /// Normalised.
    host: &'a str,
    method: &'a str,
    /// As sent.
    path: &'a str,
    /// Normalised, as servers route it.
    routed: &'a str,
}

impl Seen<'_> {
    /// An alert about request `r`, without a rule or lookback (the caller adds them).
    fn alert(&self, r: &Request, event: &str, action: AlertAction, operation: String) -> Alert {
        Alert {
            timestamp: rfc3339(r.ts),
            event: event.to_string(),
            rule_id: String::new(),
            rule_title: String::new(),
            action,
            session: r.session.to_string(),
            client: r.flow.client.to_string(),
            server: r.flow.server.to_string(),
            host: self.host.to_string(),
            method: self.method.to_string(),
            path: self.path.to_string(),
            operation,
            previous_operations: Vec::new(),
        }
    }
}

/// A request waiting for the fleet's answer, with what its alert would show.
struct Deferred {
    request: Request,
    host: String,
    method: String,
    path: String,
    routed: String,
}

/// Requests deferred before the fleet is asked anyway (replay; live, every ring batch
/// settles them).
const MAX_DEFERRED: usize = 256;
