//! Live capture: loads the embedded kernel object, attaches the TC ingress program to an
//! interface and reads its ring buffer. Records become [`Segment`]s via `ring.rs`, the
//! same pipeline replay uses takes them from there.
//!
//! Attachment uses TCX links on kernels ≥ 6.6 (aya picks them): the link lives as long
//! as this process's file descriptor, so the program is gone when the agent exits, also
//! after SIGKILL.

use std::os::fd::AsRawFd;

use std::time::Duration;

use agent_common::{
    CAPTURE_PROGRAM, CaptureConfig, Counter, DRAIN_INTERVAL_MS, EGRESS_PROGRAM, Guard, HOLD_IDLE,
    HoldEntry, MAX_SNAPLEN, REINJECT_META, REINJECT_PROGRAM, XDP_PROGRAM, maps,
};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::tc::{NlOptions, TcAttachOptions};
use aya::programs::xdp::XdpMode;
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunAttrs, TestRunOptions, Xdp,
};
use aya::{Ebpf, EbpfLoader};

use super::ring::{KernelClock, packet_from_record};
use crate::enforce::kernel::{KernelEnforcer, kernel_key};
use crate::packet::{Captured, FlowKey};

/// The kernel object built by `agent/build.rs` (empty when built with AYA_BUILD_SKIP=1).
static KERNEL_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/seqshield"));

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(
        "live capture needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): run it with sudo"
    )]
    NotRoot,
    #[error("no network interface {0:?}: see `ip link` for the names on this host")]
    NoInterface(String),
    #[error(
        "this binary was built without its kernel object (AYA_BUILD_SKIP); rebuild with the eBPF toolchain (`cargo xtask setup`)"
    )]
    NoKernelObject,
    #[error("loading the kernel object failed (is BPF available? kernel ≥ 5.8 with BTF): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the kernel refused the capture program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("kernel map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("kernel object has no {0}: it does not match this agent")]
    Missing(&'static str),
    #[error("reading the ring buffer: {0}")]
    Io(#[from] std::io::Error),
    #[error("putting a released frame back: {0}")]
    Reinject(aya::programs::ProgramError),
}

/// How the capture is attached.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions {
    /// Payload bytes copied per packet.
    pub snaplen: u32,
    /// Apply the block and flag maps, and wake the agent for every event.
    pub enforce: bool,
    /// With `enforce`: also drop blocked clients at the driver.
    pub xdp: bool,
    /// With `enforce`: hold guarded requests until their verdict, at most this long.
    pub hold: Option<Duration>,
}

/// Set to attach through netlink and clsact even where TCX exists (tests of that path).
pub const FORCE_NETLINK: &str = "SEQSHIELD_TC_NETLINK";

impl Drop for LiveCapture {
    /// The programs detach when their links drop (right after this); a clsact qdisc this
    /// agent created is removed too, best effort.
    fn drop(&mut self) {
        if let Some(interface) = &self.created_clsact {
            let removed = std::process::Command::new("tc")
                .args(["qdisc", "del", "dev", interface, "clsact"])
                .status()
                .is_ok_and(|s| s.success());
            if !removed {
                tracing::warn!(
                    interface,
                    "could not remove the clsact qdisc this agent created"
                );
            }
        }
    }
}

/// Kernel counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelCounters {
    pub seen: u64,
    pub captured: u64,
    pub lost: u64,
    pub unsupported: u64,
    pub dropped_ingress: u64,
    pub dropped_egress: u64,
    pub marked: u64,
    /// Server → client header events handed over.
    pub server_facts: u64,
    /// Client segments held until a verdict.
    pub held: u64,
    /// Holds the kernel gave up (no verdict within the hold timeout).
    pub hold_timeouts: u64,
    /// Released copies the kernel let through.
    pub reinjected: u64,
}

/// An attached capture. Dropping it detaches the program.
pub struct LiveCapture {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    clock: KernelClock,
    /// Interface whose clsact qdisc this agent created (netlink attachment only).
    created_clsact: Option<String>,
    /// The interface's index: released frames are put back into its receive path.
    ifindex: u32,
    /// Holds the program, its link, and the remaining maps.
    _ebpf: Ebpf,
}

impl LiveCapture {
    /// The checks that can fail before anything is loaded: privileges, the interface,
    /// the embedded kernel object.
    pub fn preflight(interface: &str) -> Result<(), LiveError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 && !has_bpf_capabilities() {
            return Err(LiveError::NotRoot);
        }
        let name = std::ffi::CString::new(interface)
            .map_err(|_| LiveError::NoInterface(interface.into()))?;
        // SAFETY: a NUL-terminated name we own.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            return Err(LiveError::NoInterface(interface.into()));
        }
        if KERNEL_OBJECT.is_empty() {
            return Err(LiveError::NoKernelObject);
        }
        Ok(())
    }

    /// Loads the programs, sets the captured ports and what `options` say, and attaches
    /// to the ingress (client bytes) and egress (server header facts) of `interface`.
    pub fn attach(
        interface: &str,
        ports: &[u16],
        options: AttachOptions,
    ) -> Result<Self, LiveError> {
        let AttachOptions {
            snaplen,
            enforce,
            xdp,
            hold,
        } = options;
        let hold = hold.filter(|_| enforce);
        Self::preflight(interface)?;
        let mut ebpf = EbpfLoader::new().load(KERNEL_OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                tracing::debug!(error = %e, "no kernel log forwarding");
                None
            }
        };
        {
            let map = ebpf
                .map_mut(maps::PORTS)
                .ok_or(LiveError::Missing(maps::PORTS))?;
            let mut port_map: Array<_, u8> =
                Array::try_from(map).map_err(|source| LiveError::Map {
                    name: maps::PORTS,
                    source,
                })?;
            for &port in ports {
                port_map
                    .set(u32::from(port), 1, 0)
                    .map_err(|source| LiveError::Map {
                        name: maps::PORTS,
                        source,
                    })?;
            }
        }
        {
            let map = ebpf
                .map_mut(maps::CONFIG)
                .ok_or(LiveError::Missing(maps::CONFIG))?;
            let mut config: Array<_, CaptureConfig> =
                Array::try_from(map).map_err(|source| LiveError::Map {
                    name: maps::CONFIG,
                    source,
                })?;
            let snaplen = snaplen.clamp(1, MAX_SNAPLEN as u32);
            config
                .set(
                    0,
                    CaptureConfig {
                        snaplen,
                        enforce: u32::from(enforce),
                        hold: u32::from(hold.is_some()),
                        guards: 0,
                        hold_timeout_ns: hold.map_or(0, |t| t.as_nanos() as u64),
                    },
                    0,
                )
                .map_err(|source| LiveError::Map {
                    name: maps::CONFIG,
                    source,
                })?;
        }
        let ring = ebpf
            .take_map(maps::EVENTS)
            .ok_or(LiveError::Missing(maps::EVENTS))?;
        let ring = RingBuf::try_from(ring).map_err(|source| LiveError::Map {
            name: maps::EVENTS,
            source,
        })?;
        let counters = ebpf
            .take_map(maps::COUNTERS)
            .ok_or(LiveError::Missing(maps::COUNTERS))?;
        let counters = PerCpuArray::try_from(counters).map_err(|source| LiveError::Map {
            name: maps::COUNTERS,
            source,
        })?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(CAPTURE_PROGRAM)
            .ok_or(LiveError::Missing(CAPTURE_PROGRAM))?
            .try_into()?;
        program.load()?;
        // TCX links (kernel ≥ 6.6) live as long as this process. Older kernels (or
        // SEQSHIELD_TC_NETLINK=1, to exercise that path) attach netlink filters to a clsact
        // qdisc instead: those outlive a SIGKILLed agent, so leftovers of an earlier run
        // are removed first (SPEC §9), and a qdisc this run created goes on exit.
        let netlink = std::env::var_os(FORCE_NETLINK).is_some()
            || !aya::util::KernelVersion::current()
                .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        let mut created_clsact = None;
        if netlink {
            if aya::programs::tc::qdisc_add_clsact(interface).is_ok() {
                created_clsact = Some(interface.to_string());
            }
            for (kind, name) in [
                (TcAttachType::Ingress, CAPTURE_PROGRAM),
                (TcAttachType::Egress, EGRESS_PROGRAM),
            ] {
                if aya::programs::tc::qdisc_detach_program(interface, kind, name).is_ok() {
                    tracing::warn!(
                        interface,
                        program = name,
                        "removed a leftover filter of an earlier run"
                    );
                }
            }
        }
        let options = || {
            if netlink {
                TcAttachOptions::Netlink(NlOptions::default())
            } else {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            }
        };
        program.attach_with_options(interface, TcAttachType::Ingress, options())?;
        // Egress always: the server's header facts tell the reassembler what the
        // server accepted; in enforce mode it also drops blocked connections' packets.
        let egress: &mut SchedClassifier = ebpf
            .program_mut(EGRESS_PROGRAM)
            .ok_or(LiveError::Missing(EGRESS_PROGRAM))?
            .try_into()?;
        egress.load()?;
        egress.attach_with_options(interface, TcAttachType::Egress, options())?;
        if hold.is_some() {
            let program: &mut Xdp = ebpf
                .program_mut(REINJECT_PROGRAM)
                .ok_or(LiveError::Missing(REINJECT_PROGRAM))?
                .try_into()?;
            program.load()?;
        }
        if enforce && xdp {
            let program: &mut Xdp = ebpf
                .program_mut(XDP_PROGRAM)
                .ok_or(LiveError::Missing(XDP_PROGRAM))?
                .try_into()?;
            program.load()?;
            // A bpf_link where the kernel has them: it goes with the process too.
            program.attach(interface, XdpMode::Default)?;
        }
        tracing::info!(
            interface,
            ?ports,
            snaplen,
            enforce,
            hold = ?hold,
            netlink,
            "capture attached"
        );
        let name = std::ffi::CString::new(interface)
            .map_err(|_| LiveError::NoInterface(interface.into()))?;
        // SAFETY: a NUL-terminated name we own.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let capture = Self {
            ring,
            counters,
            logger,
            clock: KernelClock::measure(),
            created_clsact,
            ifindex,
            _ebpf: ebpf,
        };
        if hold.is_some() {
            capture.warm_up_reinjection();
        }
        Ok(capture)
    }

    /// The first re-injection in a process costs a few hundred µs (the kernel sets up
    /// its page pool): paid here, on a frame no stack takes (not IP, to another host).
    fn warm_up_reinjection(&self) {
        let mut frame = [0u8; 60];
        frame[..6].copy_from_slice(&[0x02, 0x5e, 0x95, 0, 0, 1]);
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental
        if let Err(e) = self.reinject(&frame) {
            tracing::warn!(error = %e, "re-injection does not work here: held requests will be released by the client's retransmissions");
        }
    }

    /// Puts a released frame into the interface's receive path, as if it had just
    /// arrived, with the metadata that lets it through the capture program.
    /// Synchronous: the segment has reached its socket when this returns.
    pub fn reinject(&self, frame: &[u8]) -> Result<(), LiveError> {
        let program: &Xdp = self
            ._ebpf
            .program(REINJECT_PROGRAM)
            .ok_or(LiveError::Missing(REINJECT_PROGRAM))?
            .try_into()?;
        let meta = REINJECT_META.to_ne_bytes();
        let mut data = Vec::with_capacity(meta.len() + frame.len());
        data.extend_from_slice(&meta);
        data.extend_from_slice(frame);
        // struct xdp_md: data (after the metadata), data_end, data_meta, ingress
        // ifindex, rx queue, egress ifindex.
        let xdp_md: [u32; 6] = [meta.len() as u32, data.len() as u32, 0, self.ifindex, 0, 0];
        let ctx: Vec<u8> = xdp_md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        program
            .test_run(TestRunOptions {
                data_in: Some(&data),
                ctx_in: Some(&ctx),
                repeat: 1,
                attrs: TestRunAttrs::new().xdp_live_frames(1),
                ..TestRunOptions::new()
            })
            .map(|_| ())
            .map_err(LiveError::Reinject)
    }

    /// Waits (poll(2), no runtime in between: enforcement latency) until the kernel wakes
    /// the agent — in enforce mode for every event, otherwise only when the ring fills
    /// up — or `DRAIN_INTERVAL_MS` passed; kernel log lines are forwarded on the way.
    pub fn wait(&mut self) -> Result<(), LiveError> {
        let mut fds = [
            libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.logger.as_ref().map_or(-1, |l| l.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfd structs we own; a negative fd is ignored by poll(2).
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                DRAIN_INTERVAL_MS as libc::c_int,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        if fds[1].revents & libc::POLLIN != 0
            && let Some(logger) = &mut self.logger
        {
            logger.flush();
        }
        Ok(())
    }

    /// Takes the consumer from `open` (e.g. a lock, held for the batch) when records are
    /// waiting, and hands it each as a segment or fragment. Returns how many it read.
    pub fn drain_with<C>(
        &mut self,
        open: impl FnOnce() -> C,
        mut on_packet: impl FnMut(&mut C, Captured<'_>),
    ) -> usize {
        let Some(first) = self.ring.next() else {
            return 0;
        };
        let mut consumer = open();
        if let Some(packet) = packet_from_record(&first, &self.clock) {
            on_packet(&mut consumer, packet);
        }
        drop(first);
        let mut n = 1;
        while let Some(record) = self.ring.next() {
            if let Some(packet) = packet_from_record(&record, &self.clock) {
                on_packet(&mut consumer, packet);
            }
            n += 1;
        }
        n
    }

    /// Takes map `name` out of the loaded object as the typed map `T`.
    fn take_map<T>(&mut self, name: &'static str) -> Result<T, LiveError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self._ebpf.take_map(name).ok_or(LiveError::Missing(name))?;
        T::try_from(map).map_err(|source| LiveError::Map { name, source })
    }

    /// The kernel's block and flag maps, for the enforcer.
    pub fn take_enforcer(&mut self) -> Result<KernelEnforcer, LiveError> {
        Ok(KernelEnforcer::new(
            self.take_map(maps::BLOCKED_FLOWS)?,
            self.take_map(maps::BLOCKED_PAIRS)?,
            self.take_map(maps::BLOCKED_CLIENTS)?,
            self.take_map(maps::FLAGGED_FLOWS)?,
        ))
    }

    /// The kernel's hold map and guard list, for the capture loop.
    pub fn take_holds(&mut self) -> Result<KernelHolds, LiveError> {
        Ok(KernelHolds {
            holds: self.take_map(maps::HOLDS)?,
            guards: self.take_map(maps::GUARDS)?,
            config: self.take_map(maps::CONFIG)?,
            installed: Vec::new(),
        })
    }

    /// Re-measures the kernel → wall clock offset (the wall clock may be stepped).
    pub fn resync_clock(&mut self) {
        self.clock = KernelClock::measure();
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |c: Counter| {
            self.counters
                .get(&(c as u32), 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            seen: sum(Counter::Seen),
            captured: sum(Counter::Captured),
            lost: sum(Counter::Lost),
            unsupported: sum(Counter::Unsupported),
            dropped_ingress: sum(Counter::DroppedIngress),
            dropped_egress: sum(Counter::DroppedEgress),
            marked: sum(Counter::Marked),
            server_facts: sum(Counter::ServerFacts),
            held: sum(Counter::Held),
            hold_timeouts: sum(Counter::HoldTimeouts),
            reinjected: sum(Counter::Reinjected),
        }
    }
}

/// The kernel's side of holds: which request starts are held, and each connection's
/// hold state.
pub struct KernelHolds {
    holds: HashMap<MapData, agent_common::FlowKey, HoldEntry>,
    guards: Array<MapData, Guard>,
    config: Array<MapData, CaptureConfig>,
    installed: Vec<Guard>,
}

impl KernelHolds {
    /// Installs the guards (when they changed): entries first, then their count, so the
    /// kernel never reads a half-written list.
    pub fn set_guards(&mut self, guards: &[Guard]) -> Result<(), LiveError> {
        if guards == self.installed.as_slice() {
            return Ok(());
        }
        let map_err = |source| LiveError::Map {
            name: maps::GUARDS,
            source,
        };
        let mut config = self.config.get(&0, 0).map_err(map_err)?;
        // Shrink first: entries being rewritten are then not in use.
        config.guards = config.guards.min(guards.len() as u32);
        self.config.set(0, config, 0).map_err(map_err)?;
        for (i, guard) in guards.iter().enumerate() {
            self.guards.set(i as u32, *guard, 0).map_err(map_err)?;
        }
        config.guards = guards.len() as u32;
        self.config.set(0, config, 0).map_err(map_err)?;
        self.installed = guards.to_vec();
        Ok(())
    }

    /// The verdict allowed `flow`'s held request: retransmissions of bytes before
    /// `released_seq` pass, and new segments are checked afresh.
    pub fn release(&mut self, flow: &FlowKey, released_seq: u32) -> Result<(), LiveError> {
        let entry = HoldEntry {
            since_ns: 0,
            released_seq,
            state: HOLD_IDLE,
        };
        self.holds
            .insert(kernel_key(flow), entry, 0)
            .map_err(|source| LiveError::Map {
                name: maps::HOLDS,
                source,
            })
    }

    /// The verdict blocked `flow`: its hold state goes (the block maps drop the rest).
    pub fn forget(&mut self, flow: &FlowKey) {
        let _ = self.holds.remove(&kernel_key(flow));
    }
}

/// Whether the process has CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (effective set).
fn has_bpf_capabilities() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return false;
    };
    [CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF]
        .iter()
        .all(|c| eff & (1 << c) != 0)
}
