//! The web console in a real browser: the admin API served on loopback over a pipeline
//! that replayed the curl fixture, and Debian's headless Chromium loading `/`, running
//! its script and dumping the DOM it built (graph, tables), with a screenshot kept in
//! target/console/ and the browser's log checked for script errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use seqshield::admin::{Access, AgentState};
use seqshield::config::Config;
use seqshield::pipeline::Pipeline;
use seqshield::report::{Report, ReportFilter};

const API: &str = include_str!("../../tests/fixtures/bank-api.toml");
const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

/// The admin API over the replayed fixture on a loopback port (served by a runtime of
/// its own); the report it holds.
fn serve_fixture(
    dir: &Path,
) -> (
    tokio::runtime::Runtime,
    u16,
    Report,
    Arc<AgentState>,
    Config,
) {
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        format!("[capture]\nports = [18080]\n[sequence]\nmin_support = 1\n{API}"),
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let mut pipeline = Pipeline::new(&config, &[7; 32]).unwrap();
    let pcap = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/curl-loopback.pcap"),
    )
    .unwrap();
    pipeline
        .replay_pcap(&pcap, &config.capture.ports, &mut Vec::new())
        .unwrap();
    let now = pipeline.newest();
    let report = pipeline.report(now);
    let state = Arc::new(AgentState::with_clock(
        pipeline,
        config_path,
        Box::new(move || now),
    ));
    let router = seqshield::admin::router(state.clone(), Access::new(TOKEN.into(), false));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move { axum::serve(listener, router).await });
    (runtime, port, report, state, config)
}

/// Headless Chromium on `url`: the DOM after its scripts ran, and its log.
fn chromium(url: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=4000",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_console_draws_the_journeys_and_filters_the_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, port, report, state, config) = serve_fixture(dir.path());
    let url = format!("http://127.0.0.1:{port}/");

    let (dom, log) = chromium(&url, &["--dump-dom"]);
    assert!(!log.contains("Uncaught"), "script errors: {log}");
    // The graph: the fixture's four operations, and its four observed transitions.
    assert_eq!(count(&dom, "class=\"node"), 4, "{dom}");
    assert_eq!(count(&dom, "<path class=\"edge"), 4, "{dom}");
    assert!(dom.contains("POST bank.test/api/v1/transferFunds"), "{dom}");
    // The table: every sequence of the report, and the health numbers.
    assert_eq!(
        count(&dom, "class=\"sequence\""),
        report.sequences.len(),
        "{dom}"
    );
    assert!(dom.contains("lost events"), "{dom}");
    // A sparkline per listed operation that saw requests.
    let busy = report.operations.iter().filter(|o| o.requests > 0).count();
    assert_eq!(count(&dom, "class=\"spark\""), busy, "{dom}");
    // The replay's alerts went elsewhere: none listed yet.
    assert_eq!(count(&dom, "class=\"alert\""), 0, "{dom}");

    // Traffic: the fixture's attacker through a pipeline of its own; its alerts, put
    // where the live agent's outcome sink puts them, appear on the next load.
    let pcap = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/curl-loopback.pcap"),
    )
    .unwrap();
    let mut alerts = Vec::new();
    Pipeline::new(&config, &[7; 32])
        .unwrap()
        .replay_pcap(&pcap, &config.capture.ports, &mut alerts)
        .unwrap();
    assert!(!alerts.is_empty());
    for alert in &alerts {
        state.recent_alerts().push(alert);
    }
    let (dom, log) = chromium(&url, &["--dump-dom"]);
    assert!(!log.contains("Uncaught"), "script errors: {log}");
    assert_eq!(count(&dom, "class=\"alert\""), alerts.len(), "{dom}");
    assert!(dom.contains("transfer needs a balance check"), "{dom}");
    assert!(dom.contains(&alerts[0].session), "{dom}");

    // Filtered by the address (as a click on a node does): the report API's filter.
    let login = report
        .operations
        .iter()
        .find(|o| o.path == "/api/v1/login")
        .unwrap();
    let filter = ReportFilter {
        operation: Some(login.id.clone()),
        min_support: Some(2),
        ..ReportFilter::default()
    };
    let expected = report.clone().filtered(&filter).sequences.len();
    assert!(expected > 0 && expected < report.sequences.len());
    let (dom, log) = chromium(
        &format!("{url}?operation={}&min_support=2", login.id),
        &["--dump-dom"],
    );
    assert!(!log.contains("Uncaught"), "script errors: {log}");
    assert_eq!(count(&dom, "class=\"sequence\""), expected, "{dom}");

    let shot = screenshots().join("console.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,1250",
        ],
    );
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        shot.display()
    );
}
