//! Attaches the object's empty classifier (`seqshield_baseline`) to an interface's
//! ingress and egress, as the agent attaches its own programs, and keeps it there until
//! the process is stopped: `cargo xtask bench-live`'s baseline for what
//! an attached program costs before it reads a byte. Root only.
//! Usage: attach_baseline INTERFACE

use agent_common::BASELINE_PROGRAM;
use aya::programs::tc::{NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

static KERNEL_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/seqshield"));

fn main() {
    let interface = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: attach_baseline INTERFACE");
        std::process::exit(2);
    });
    let mut ebpf: Ebpf = EbpfLoader::new()
        .load(KERNEL_OBJECT)
        .expect("loading the kernel object (root?)");
    let program: &mut SchedClassifier = ebpf
        .program_mut(BASELINE_PROGRAM)
        .expect("program in the object")
        .try_into()
        .expect("a classifier");
    program.load().expect("the verifier accepts the program");
    // The attachment the agent picks on this kernel (live.rs): TCX links from 6.6 on.
    let tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    if !tcx {
        let _ = aya::programs::tc::qdisc_add_clsact(&interface);
    }
    for kind in [TcAttachType::Ingress, TcAttachType::Egress] {
        let options = if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            TcAttachOptions::Netlink(NlOptions::default())
        };
        program
            .attach_with_options(&interface, kind, options)
            .expect("attach");
    }
    println!("attached");
    // Until stopped: TCX links close with the process; a netlink filter goes with the
    // benchmark's namespace and its interface.
    loop {
        std::thread::park();
    }
}
