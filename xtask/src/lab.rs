//! A throwaway lab for the live demo and benchmarks: two network namespaces (server,
//! client) joined by a veth pair, and the processes started in them. Everything is
//! removed on `cleanup`, on drop, and on Ctrl-C.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub struct Lab {
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub server_ip: String,
    client_if: String,
    client_ip: String,
    children: Mutex<Vec<Child>>,
}

impl Lab {
    /// Creates `<name>-srv` and `<name>-cli` with 10.`net`.0.1 and .2; removes leftovers
    /// of an interrupted run first, and cleans up on Ctrl-C.
    pub fn create(name: &str, net: u8) -> Result<Arc<Self>> {
        let lab = Arc::new(Self {
            server_ns: format!("{name}-srv"),
            client_ns: format!("{name}-cli"),
            server_if: format!("{name}-s0"),
            client_if: format!("{name}-c0"),
            server_ip: format!("10.{net}.0.1"),
            client_ip: format!("10.{net}.0.2"),
            children: Mutex::new(Vec::new()),
        });
        lab.remove_namespaces();
        clean_up_on_ctrl_c(&lab)?;
        let (s, c) = (&lab.server_ns, &lab.client_ns);
        let (sif, cif) = (&lab.server_if, &lab.client_if);
        for cmd in [
            format!("ip netns add {s}"),
            format!("ip netns add {c}"),
            format!("ip link add {sif} type veth peer name {cif}"),
            format!("ip link set {sif} netns {s}"),
            format!("ip link set {cif} netns {c}"),
            format!("ip -n {s} addr add {}/24 dev {sif}", lab.server_ip),
            format!("ip -n {c} addr add {}/24 dev {cif}", lab.client_ip),
            format!("ip -n {s} link set {sif} up"),
            format!("ip -n {c} link set {cif} up"),
            format!("ip -n {s} link set lo up"),
        ] {
            sh(&cmd)?;
        }
        println!(
            "== lab: {s} ({}, {sif}) <-> {c} ({}) ==",
            lab.server_ip, lab.client_ip
        );
        Ok(lab)
    }

    /// Starts a long-running process in the server namespace; returns its pid.
    pub fn spawn_server_side(&self, args: &[&str], output: Option<(&Path, &Path)>) -> Result<u32> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.server_ns]).args(args);
        match output {
            Some((stdout, stderr)) => {
                cmd.stdout(std::fs::File::create(stdout)?)
                    .stderr(std::fs::File::create(stderr)?);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd.spawn().with_context(|| format!("starting {args:?}"))?;
        let pid = child.id();
        self.children
            .lock()
            .map_err(|_| anyhow!("lab state poisoned"))?
            .push(child);
        Ok(pid)
    }

    /// Runs a command in a namespace; whether it succeeded.
    pub fn ok_in(&self, ns: &str, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs a command in a namespace; its stdout, or an error with its stderr.
    pub fn output_in(&self, ns: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("{args:?} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops one process started here: SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&self, pid: u32) {
        let Ok(mut children) = self.children.lock() else {
            return;
        };
        if let Some(i) = children.iter().position(|c| c.id() == pid) {
            let mut child = children.remove(i);
            terminate(&mut child);
        }
    }

    /// Stops every process and removes the namespaces (with the veth pair).
    pub fn cleanup(&self) {
        if let Ok(mut children) = self.children.lock() {
            for child in children.iter_mut() {
                terminate(child);
            }
            children.clear();
        }
        self.remove_namespaces();
    }

    fn remove_namespaces(&self) {
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// SIGTERM (the agent detaches and exits 0), then SIGKILL if it lingers.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// An agent config for the bank API (tests/fixtures/bank-api.toml: endpoints and the
/// allow rule) capturing on `interface`, with its admin API and state; `extra` appended.
pub fn bank_agent_config(
    root: &Path,
    interface: &str,
    admin: &str,
    state: &Path,
    extra: &str,
) -> Result<String> {
    let api = std::fs::read_to_string(root.join("tests/fixtures/bank-api.toml"))
        .context("tests/fixtures/bank-api.toml")?;
    Ok(format!(
        "# Written by cargo xtask.\n[capture]\ninterface = \"{interface}\"\nports = [80]\n[admin]\nlisten = \"{admin}\"\n\
         [state]\ndir = {state:?}\n{extra}\n{api}"
    ))
}

/// Every lab of this process, cleaned up on Ctrl-C (one handler for all: a process may
/// install only one).
static LABS: Mutex<Vec<std::sync::Weak<Lab>>> = Mutex::new(Vec::new());

fn clean_up_on_ctrl_c(lab: &Arc<Lab>) -> Result<()> {
    let mut labs = LABS.lock().map_err(|_| anyhow!("lab registry poisoned"))?;
    if labs.is_empty() {
        ctrlc::set_handler(|| {
            eprintln!("\ninterrupted: cleaning up");
            if let Ok(labs) = LABS.lock() {
                labs.iter()
                    .filter_map(std::sync::Weak::upgrade)
                    .for_each(|l| l.cleanup());
            }
            std::process::exit(130);
        })
        .context("installing the Ctrl-C handler")?;
    }
    labs.push(Arc::downgrade(lab));
    Ok(())
}

pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} did not come up in 15 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn sh(cmd: &str) -> Result<()> {
    let out = Command::new("sh").args(["-c", cmd]).output()?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}
