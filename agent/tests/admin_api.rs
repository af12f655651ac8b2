//! The admin API's router in-process, over a pipeline that replayed the curl fixture
//! (what a live agent holds after the same traffic): every endpoint returns what the
//! pipeline holds, errors are JSON with a message, and a bad reload keeps the old rules.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use seqshield::admin::{Access, AgentState};
use seqshield::config::Config;
use seqshield::pipeline::Pipeline;
use seqshield::report::Report;
use seqshield::session::SessionIdentifier;
use tower::ServiceExt;

const KEY: [u8; 32] = [7; 32];
/// The admin token of the tests' routers.
const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

/// The admin API as the agent serves it on loopback: reads open, changes need the token.
fn router(state: Arc<AgentState>) -> axum::Router {
    seqshield::admin::router(state, Access::new(TOKEN.into(), false))
}

/// The bank API (tests/fixtures/bank-api.toml) on the fixture's port.
const API: &str = include_str!("../../tests/fixtures/bank-api.toml");

fn config_text() -> String {
    format!("[capture]\nports = [18080]\n[sequence]\nmin_support = 1\n{API}")
}

struct Fixture {
    _dir: tempfile::TempDir,
    config_path: std::path::PathBuf,
    state: Arc<AgentState>,
    expected: Report,
    config: Config,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config_text()).unwrap();
    let config = Config::load(&config_path).unwrap();
    let mut pipeline = Pipeline::new(&config, &KEY).unwrap();
    let pcap = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/curl-loopback.pcap"),
    )
    .unwrap();
    pipeline
        .replay_pcap(&pcap, &config.capture.ports, &mut Vec::new())
        .unwrap();
    let now = pipeline.newest();
    let expected = pipeline.report(now);
    let state = Arc::new(AgentState::with_clock(
        pipeline,
        config_path.clone(),
        Box::new(move || now),
    ));
    Fixture {
        _dir: dir,
        config_path,
        state,
        expected,
        config,
    }
}

/// Calls the API with the token (what `seqshield` and an operator's curl send).
async fn call(state: &Arc<AgentState>, method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
    call_as(router(state.clone()), method, uri, Some(TOKEN)).await
}

async fn call_as(
    router: axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = router
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn endpoints_return_what_the_pipeline_holds() {
    let f = fixture();
    let (status, body) = call(&f.state, "GET", "/api/v1/report").await;
    assert_eq!(status, StatusCode::OK);
    let report: Report = serde_json::from_value(body).unwrap();
    assert_eq!(report, f.expected);
    assert_eq!(report.stats.requests, 12);

    let (_, body) = call(&f.state, "GET", "/api/v1/operations").await;
    assert_eq!(
        serde_json::from_value::<Vec<seqshield::report::OperationReport>>(body).unwrap(),
        f.expected.operations
    );

    // Filters: by operation, score, support, and a limit.
    let transfer = f
        .expected
        .operations
        .iter()
        .find(|o| o.path == "/api/v1/transferFunds")
        .unwrap()
        .id
        .clone();
    let (_, body) = call(
        &f.state,
        "GET",
        &format!("/api/v1/report?operation={transfer}&min_score=0.5&limit=2"),
    )
    .await;
    let filtered: Report = serde_json::from_value(body).unwrap();
    assert!(!filtered.sequences.is_empty() && filtered.sequences.len() <= 2);
    assert!(
        filtered
            .sequences
            .iter()
            .all(|s| s.operations.contains(&transfer) && s.score >= 0.5)
    );
    let (_, body) = call(&f.state, "GET", "/api/v1/report?min_support=2").await;
    let filtered: Report = serde_json::from_value(body).unwrap();
    assert_eq!(
        filtered.sequences.len(),
        f.expected.sequences.iter().filter(|s| s.count >= 2).count()
    );

    // A session's history, by the hash alerts show: alice walked four operations.
    let hash = SessionIdentifier::new(&f.config.session.identifiers, &KEY).hashes_of("alice-7f3a")
        [0]
    .1
    .to_string();
    let (status, body) = call(&f.state, "GET", &format!("/api/v1/sessions/{hash}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let history = body["history"].as_array().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(
        history[3]["operation"],
        "POST bank.test/api/v1/transferFunds"
    );
    assert!(history[0]["age_secs"].as_f64().unwrap() >= history[3]["age_secs"].as_f64().unwrap());

    let (_, body) = call(&f.state, "GET", "/api/v1/rules").await;
    assert_eq!(body[0]["title"], "transfer needs a balance check");
    let (status, body) = call(&f.state, "GET", "/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::Value::Null));
}

#[tokio::test]
async fn errors_are_json_with_a_message() {
    let f = fixture();
    for (uri, status) in [
        ("/api/v1/sessions/nothex", StatusCode::BAD_REQUEST),
        ("/api/v1/sessions/0000000000000000", StatusCode::NOT_FOUND),
        ("/api/v1/report?min_score=high", StatusCode::BAD_REQUEST),
        ("/api/v1/nope", StatusCode::NOT_FOUND),
    ] {
        let (got, body) = call(&f.state, "GET", uri).await;
        assert_eq!(got, status, "{uri}");
        assert!(
            body["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{uri}: {body}"
        );
    }
}

#[tokio::test]
async fn reload_keeps_the_old_rules_when_the_file_is_bad() {
    let f = fixture();
    std::fs::write(
        &f.config_path,
        config_text().replace(
            "title = \"transfer needs a balance check\"",
            &format!("title = \"{}\"", "x".repeat(60)),
        ),
    )
    .unwrap();
    let (status, body) = call(&f.state, "POST", "/api/v1/rules/reload").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("rule[0].title"),
        "{body}"
    );
    let (_, body) = call(&f.state, "GET", "/api/v1/rules").await;
    assert_eq!(body[0]["title"], "transfer needs a balance check");

    std::fs::write(
        &f.config_path,
        config_text().replace("transfer needs a balance check", "new title"),
    )
    .unwrap();
    let (status, body) = call(&f.state, "POST", "/api/v1/rules/reload").await;
    assert_eq!(
        (status, &body["rules"]),
        (StatusCode::OK, &serde_json::json!(1))
    );
    let (_, body) = call(&f.state, "GET", "/api/v1/rules").await;
    assert_eq!(body[0]["title"], "new title");
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_match_the_report() {
    let f = fixture();
    let response = router(f.state.clone())
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} {label:?} in\n{text}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    let st = &f.expected.stats;
    assert_eq!(
        value("seqshield_requests_total", Some(("result", "parsed"))),
        st.requests as f64
    );
    assert_eq!(
        value("seqshield_requests_total", Some(("result", "unidentified"))),
        st.unidentified_requests as f64
    );
    assert_eq!(
        value("seqshield_parse_errors_total", None),
        st.parse_errors as f64
    );
    assert_eq!(
        value("seqshield_events_lost_total", None),
        st.lost_events as f64
    );
    assert_eq!(
        value(
            "seqshield_violations_total",
            Some(("action", "would_block"))
        ),
        st.alerts as f64
    );
    assert_eq!(
        value("seqshield_live_sessions", None),
        3.0,
        "alice, bob and mallory"
    );
    // Per-operation rate quantiles are the report's.
    for op in &f.expected.operations {
        let Some(rate) = op.session_rate else {
            continue;
        };
        // (Read as text: the parser splits label values at the template's braces.)
        let line = format!(
            "seqshield_session_requests_per_10m{{operation=\"{}\",quantile=\"0.99\"}} {}",
            op.human(),
            rate.p99
        );
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
    assert!(
        f.expected
            .operations
            .iter()
            .any(|o| o.session_rate.is_some()),
        "the fixture has identified sessions"
    );
    assert!(text.contains("# TYPE seqshield_request_pipeline_seconds histogram"));
    assert!(text.contains("seqshield_evictions_total{table=\"sessions\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_can_listen_on_a_private_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let socket = f.config_path.with_file_name("run/admin.sock");
    let listener = seqshield::admin::bind_unix(&socket).unwrap();
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let server = tokio::spawn(axum::serve(listener, router(f.state.clone())).into_future());
    let admin = format!("unix:{}", socket.display());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_seqshield"))
            .args(["report", "--json", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report, f.expected);
    server.abort();
}

#[tokio::test]
async fn changes_need_the_token_and_reads_need_it_when_asked() {
    let f = fixture();
    let loopback = || seqshield::admin::router(f.state.clone(), Access::new(TOKEN.into(), false));
    let (status, body) = call_as(loopback(), "POST", "/api/v1/rules/reload", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"].as_str().unwrap().contains("token_file"),
        "{body}"
    );
    let (status, _) = call_as(loopback(), "POST", "/api/v1/rules/reload", Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call_as(loopback(), "GET", "/api/v1/report", None).await;
    assert_eq!(status, StatusCode::OK, "loopback reads are open");
    // require_token (or a listen address beyond loopback): reads need it too.
    let strict = || seqshield::admin::router(f.state.clone(), Access::new(TOKEN.into(), true));
    for uri in [
        "/api/v1/report",
        "/api/v1/operations",
        "/metrics",
        "/api/v1/rules",
    ] {
        let (status, _) = call_as(strict(), "GET", uri, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        let (status, _) = call_as(strict(), "GET", uri, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
    }
    let (status, _) = call_as(strict(), "GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "health checks need no token");
    // metrics_public: /metrics open, the rest still closed.
    let public_metrics = || {
        seqshield::admin::router(
            f.state.clone(),
            Access::new(TOKEN.into(), true).with_public_metrics(true),
        )
    };
    let (status, _) = call_as(public_metrics(), "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call_as(public_metrics(), "GET", "/api/v1/report", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call_as(public_metrics(), "POST", "/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "only reads are public");
}

/// A slow-loris client of the admin server: connections beyond the cap are closed at
/// once, a head not sent within the header timeout closes its connection, and the
/// server answers normally again once they are gone.
#[tokio::test]
async fn slow_clients_cannot_hold_the_admin_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = seqshield::admin::ServeLimits {
        max_connections: 4,
        header_timeout: std::time::Duration::from_millis(300),
        connection_timeout: std::time::Duration::from_secs(5),
    };
    tokio::spawn(seqshield::admin::serve(
        seqshield::admin::AdminListener::Tcp(listener),
        router(f.state.clone()),
        limits,
    ));
    let ask = |mut s: TcpStream| async move {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).into_owned()
    };
    // Four slow clients take every slot, each with half a request head.
    let mut loris = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        loris.push(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // A fifth connection is closed without an answer.
    let refused = ask(TcpStream::connect(addr).await.unwrap()).await;
    assert_eq!(refused, "", "over the cap: closed at once");
    // The slow heads run out of time: their connections close.
    for mut s in loris {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a slow head keeps its connection");
    }
    // And the server answers again.
    let answer = ask(TcpStream::connect(addr).await.unwrap()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The console's endpoints: the page, the journey graph, the latest alerts, and the
/// allow rule drafted from one sequence.
#[tokio::test]
async fn console_endpoints_serve_the_page_graph_alerts_and_drafts() {
    let f = fixture();
    let raw = |uri: &'static str| {
        let router = router(f.state.clone());
        async move {
            let response = router
                .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(bytes.to_vec()).unwrap())
        }
    };
    let (status, page) = raw("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<title>seqshield console</title>"));
    // Nothing loaded from elsewhere (the SVG namespace is a name, not a fetch).
    for outside in ["src=\"http", "href=\"http", "url(http", "import(\"http"] {
        assert!(!page.contains(outside), "an outside asset: {outside}");
    }

    let (status, graph) = call(&f.state, "GET", "/api/v1/graph?top=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(graph["nodes"].as_array().unwrap().len(), 4);
    assert_eq!(graph["edges"].as_array().unwrap().len(), 4);
    assert_eq!(graph["paths"].as_array().unwrap().len(), 1);

    // Per hour, oldest first: the fixture's three logins all in the last hour.
    let (status, hourly) = call(&f.state, "GET", "/api/v1/operations/hourly").await;
    assert_eq!(status, StatusCode::OK);
    let login = &f
        .expected
        .operations
        .iter()
        .find(|o| o.path == "/api/v1/login")
        .unwrap()
        .id;
    let counts: Vec<u64> = serde_json::from_value(hourly[login].clone()).unwrap();
    assert_eq!(counts.len(), 25);
    assert_eq!(counts.last(), Some(&3));
    assert_eq!(counts.iter().sum::<u64>(), 3);

    let (status, alerts) = call(&f.state, "GET", "/api/v1/alerts").await;
    assert_eq!((status, alerts), (StatusCode::OK, serde_json::json!([])));

    let id = |path: &str| {
        f.expected
            .operations
            .iter()
            .find(|o| o.path == path)
            .unwrap()
            .id
            .clone()
    };
    let balance = id("/api/v1/accounts/{account_id}/balance");
    let transfer = id("/api/v1/transferFunds");
    let uri: &'static str =
        Box::leak(format!("/api/v1/rules/draft?operations={balance},{transfer}").into_boxed_str());
    let (status, draft) = raw(uri).await;
    assert_eq!(status, StatusCode::OK, "{draft}");
    assert!(draft.contains("kind = \"allow\""), "{draft}");
    assert!(
        draft.contains("\"GET bank.test/api/v1/accounts/{account_id}/balance\", \"POST bank.test/api/v1/transferFunds\""),
        "{draft}"
    );
    // The draft is a rule the agent accepts.
    let text = format!("{}\n{draft}", config_text());
    Config::parse(&text, Path::new("draft.toml")).expect("the draft parses");
    let (status, _) = raw("/api/v1/rules/draft?operations=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
