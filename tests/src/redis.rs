//! A throwaway `redis-server` for fleet tests: its own unix socket in a temp dir (no TCP
//! port, so parallel tests never meet), no persistence, stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one and waits until it accepts connections. Panics with a hint when
    /// `redis-server` is missing (`cargo xtask setup` installs it).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// One started with more `redis-server` arguments (e.g. `--requirepass`).
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .args(args)
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (run `cargo xtask setup` to install it)");
        let server = Self {
            child,
            socket,
            _dir: dir,
        };
        // The socket file appears at bind(), before listen(): ask until it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        let answers = |out: String| out.contains("PONG") || out.contains("NOAUTH");
        while !answers(server.cli(&["ping"])) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start in 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// The `[fleet] redis` URL of this server.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Runs `redis-cli` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (SIGSTOP) until [`RedisServer::resume`]: a Redis that hangs.
    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a paused server too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three `redis-server --cluster-enabled yes` nodes on loopback, joined into one Redis
/// Cluster (no replicas), stopped when dropped.
pub struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_cluster_ports(3);
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .arg("--dir")
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server (run `cargo xtask setup` to install it)")
            })
            .collect();
        let cluster = Self {
            nodes,
            ports,
            _dir: dir,
        };
        for port in &cluster.ports {
            wait_for(|| cli(*port, &["ping"]).is_some_and(|out| out.contains("PONG")));
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(created.success(), "redis-cli --cluster create failed");
        for port in &cluster.ports {
            wait_for(|| {
                cli(*port, &["cluster", "info"]).is_some_and(|out| out.contains("cluster_state:ok"))
            });
        }
        cluster
    }

    /// The `[fleet] redis` list of this cluster's nodes.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The keys held by the node on `port`.
    pub fn keys_on(&self, port: u16) -> Vec<String> {
        cli(port, &["--scan"])
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "redis cluster did not come up in 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Loopback ports free now whose cluster bus port (+10000) is free too.
fn free_cluster_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut candidate = 21_000 + (std::process::id() % 5_000) as u16;
    while ports.len() < n {
        candidate += 1;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(candidate) && free(candidate + 10_000) {
            ports.push(candidate);
        }
    }
    ports
}
