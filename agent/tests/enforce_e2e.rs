//! Enforcement end to end (root): the agent in enforce mode next to a real server that
//! takes 5 ms to answer, real clients (one keep-alive connection each, a raw socket
//! client that reports what happened to each request). A session that skips the balance
//! check is cut — its transfer gets no answer, the connection is reset — while a legit
//! session on the same host is untouched; session and client-ip scopes cut new
//! connections until `block_ttl`; log rules mark packets (an nftables counter sees the
//! mark); monitor mode changes nothing; a SIGKILLed agent leaves traffic flowing.

mod common;

use std::time::Duration;

use common::{NetPair, eventually, root_or_skip, signal, start_agent};

/// Starts the bank server (5 ms per answer) and an agent with `enforce` settings.
fn setup(admin_port: u16, enforce: &str) -> (tempfile::TempDir, NetPair, common::Agent) {
    let dir = tempfile::tempdir().unwrap();
    let mut pair = NetPair::new();
    let config = common::bank_config(dir.path(), admin_port, enforce);
    pair.start_bank_server(5);
    let agent = start_agent(
        &mut pair,
        &config,
        admin_port,
        &dir.path().join("alerts.jsonl"),
    );
    (dir, pair, agent)
}

/// One keep-alive connection from the client namespace; the outcome of each request.
fn session(pair: &NetPair, header: &str, steps: &[&str]) -> Vec<String> {
    common::session_client(pair, &[], &pair.server_ip, header, steps)
        .into_iter()
        .map(|(outcome, _)| outcome)
        .collect()
}

const LOGIN: &str = "POST:/api/v1/login";
const BALANCE: &str = "GET:/api/v1/accounts/1/balance";
const TRANSFER: &str = "POST:/api/v1/transferFunds";

#[test]
fn a_violating_session_is_cut_and_a_legit_one_is_not() {
    if !root_or_skip("a_violating_session_is_cut_and_a_legit_one_is_not") {
        return;
    }
    let (dir, pair, _agent) = setup(19_470, "[enforce]\nmode = \"enforce\"\n");
    // The attacker's transfer never gets its answer: the connection is reset, and the
    // request after it on the same connection fails too.
    let attacker = session(&pair, "Cookie: sid=mallory", &[LOGIN, TRANSFER, BALANCE]);
    assert_eq!(attacker[0], "200");
    assert!(
        matches!(attacker[1].as_str(), "reset" | "closed"),
        "transfer answered: {attacker:?}"
    );
    assert!(
        matches!(attacker[2].as_str(), "reset" | "closed"),
        "{attacker:?}"
    );
    // A legit session, on the same host, before and after.
    assert_eq!(
        session(
            &pair,
            "Cookie: sid=alice",
            &[LOGIN, BALANCE, TRANSFER, BALANCE, TRANSFER]
        ),
        ["200"; 5]
    );
    // The alert says block.
    let alerts = eventually("the alert", Duration::from_secs(2), || {
        let text = std::fs::read_to_string(dir.path().join("alerts.jsonl")).ok()?;
        (!text.is_empty()).then_some(text)
    });
    assert!(alerts.contains("\"action\":\"block\""), "{alerts}");
}

#[test]
fn session_scope_cuts_new_connections_until_block_ttl() {
    if !root_or_skip("session_scope_cuts_new_connections_until_block_ttl") {
        return;
    }
    let (_dir, pair, _agent) = setup(
        19_471,
        "[enforce]\nmode = \"enforce\"\nblock_scope = \"session\"\nblock_ttl = \"2s\"\n",
    );
    let attacker = session(&pair, "Cookie: sid=mallory", &[LOGIN, TRANSFER]);
    assert_ne!(attacker[1], "200");
    // A new connection of the same session is cut on its first request, even a harmless one.
    assert_ne!(session(&pair, "Cookie: sid=mallory", &[BALANCE])[0], "200");
    // Another session is not.
    assert_eq!(session(&pair, "Cookie: sid=alice", &[BALANCE]), ["200"]);
    // After block_ttl the session may come back.
    std::thread::sleep(Duration::from_millis(2_300));
    assert_eq!(session(&pair, "Cookie: sid=mallory", &[BALANCE]), ["200"]);
}

#[test]
fn client_ip_scope_cuts_every_session_of_that_address() {
    if !root_or_skip("client_ip_scope_cuts_every_session_of_that_address") {
        return;
    }
    let (_dir, pair, _agent) = setup(
        19_472,
        "[enforce]\nmode = \"enforce\"\nblock_scope = \"client_ip\"\nblock_ttl = \"2s\"\n",
    );
    let attacker = session(&pair, "Cookie: sid=mallory", &[LOGIN, TRANSFER]);
    assert_ne!(attacker[1], "200");
    // Same address, another session, no session at all: all cut.
    assert_ne!(
        session(&pair, "Cookie: sid=innocent-looking", &[BALANCE])[0],
        "200"
    );
    assert_ne!(session(&pair, "-", &[BALANCE])[0], "200");
    std::thread::sleep(Duration::from_millis(2_300));
    assert_eq!(session(&pair, "Cookie: sid=alice", &[BALANCE]), ["200"]);
}

#[test]
fn log_rules_mark_the_connection_for_netfilter() {
    if !root_or_skip("log_rules_mark_the_connection_for_netfilter") {
        return;
    }
    let (dir, pair, _agent) = setup(
        19_473,
        "[enforce]\nmode = \"enforce\"\n[[rule]]\ntitle = \"no deletes after login\"\nkind = \"block\"\naction = \"log\"\n\
         sequence = [\"POST bank.test/api/v1/login\", \"DELETE bank.test/api/v1/accounts/{var1}\"]\npriority = 5\n",
    );
    // An nftables counter for packets that carry the flag mark (0x5e9, the default).
    let table = "table inet sqsmark {\n chain input {\n  type filter hook input priority 0;\n  meta mark 0x5e9 counter\n }\n}\n";
    let rules = dir.path().join("mark.nft");
    std::fs::write(&rules, table).unwrap();
    let out = pair.in_server(&["nft", "-f", rules.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counted = || {
        let out = pair.in_server(&["nft", "list", "table", "inet", "sqsmark"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("packets ")
            .nth(1)
            .and_then(|n| n.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(counted(), 0);
    // login, delete (flagged: logged, not blocked), then more requests on that connection.
    let flagged = session(
        &pair,
        "Cookie: sid=mallory",
        &[LOGIN, "DELETE:/api/v1/accounts/7", BALANCE, BALANCE],
    );
    assert_eq!(flagged, ["200"; 4], "log rules never cut");
    assert!(
        counted() >= 2,
        "packets after the verdict carry the mark: {}",
        counted()
    );
    // A connection without a violation is not marked.
    let before = counted();
    assert_eq!(
        session(&pair, "Cookie: sid=alice", &[BALANCE, BALANCE]),
        ["200"; 2]
    );
    assert_eq!(counted(), before);
}

#[test]
fn monitor_mode_changes_no_traffic() {
    if !root_or_skip("monitor_mode_changes_no_traffic") {
        return;
    }
    let (dir, pair, _agent) = setup(
        19_474,
        "[enforce]\nmode = \"monitor\"\nblock_scope = \"client_ip\"\n",
    );
    assert_eq!(
        session(&pair, "Cookie: sid=mallory", &[LOGIN, TRANSFER, BALANCE]),
        ["200"; 3]
    );
    assert_eq!(session(&pair, "Cookie: sid=other", &[BALANCE]), ["200"]);
    let alerts = eventually("the alert", Duration::from_secs(2), || {
        let text = std::fs::read_to_string(dir.path().join("alerts.jsonl")).ok()?;
        (!text.is_empty()).then_some(text)
    });
    assert!(alerts.contains("\"action\":\"would_block\""), "{alerts}");
}

#[test]
fn traffic_flows_again_when_the_agent_is_killed() {
    if !root_or_skip("traffic_flows_again_when_the_agent_is_killed") {
        return;
    }
    let (_dir, mut pair, agent) = setup(
        19_475,
        "[enforce]\nmode = \"enforce\"\nblock_scope = \"client_ip\"\nblock_ttl = \"10m\"\n",
    );
    assert_ne!(
        session(&pair, "Cookie: sid=mallory", &[LOGIN, TRANSFER])[1],
        "200"
    );
    assert_ne!(
        session(&pair, "Cookie: sid=x", &[BALANCE])[0],
        "200",
        "the client is blocked"
    );
    signal(agent.pid, libc::SIGKILL);
    pair.wait_for(agent.pid, Duration::from_secs(2))
        .expect("killed");
    // The block had 10 minutes to run; the programs died with the agent.
    eventually("traffic to flow again", Duration::from_secs(1), || {
        (session(&pair, "Cookie: sid=x", &[BALANCE]) == ["200"]).then_some(())
    });
}

#[test]
fn reload_with_a_bad_file_keeps_the_old_rules() {
    if !root_or_skip("reload_with_a_bad_file_keeps_the_old_rules") {
        return;
    }
    let (dir, pair, agent) = setup(19_476, "[enforce]\nmode = \"enforce\"\n");
    let config = dir.path().join("config.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    // Changes need the admin token, created in the state dir on the agent's first run.
    let token = std::fs::read_to_string(dir.path().join("state/admin.token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let api = |method: &str, path: &str| {
        let url = format!("http://{}{path}", agent.admin);
        let out = pair.in_server(&[
            "curl",
            "-s",
            "-X",
            method,
            "-H",
            &auth,
            "-w",
            "\n%{http_code}",
            &url,
        ]);
        String::from_utf8(out.stdout).unwrap()
    };
    let titles = || api("GET", "/api/v1/rules");
    assert!(titles().contains("transfer needs a balance check"));

    // A bad file (a rule naming an operation discovery would never produce): refused
    // with the reason, old rules kept, and still enforced.
    std::fs::write(&config, good.clone() + "\n[[rule]]\ntitle = \"bad\"\nkind = \"allow\"\naction = \"block\"\nsequence = [\"GET bank.test/x/{id}\", \"POST bank.test/y\"]\n").unwrap();
    let answer = api("POST", "/api/v1/rules/reload");
    assert!(answer.ends_with("400"), "{answer}");
    assert!(
        answer.contains("rule[1].sequence[0]"),
        "the error names the key: {answer}"
    );
    signal(agent.pid, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(titles().contains("transfer needs a balance check"));
    assert_ne!(
        session(&pair, "Cookie: sid=m1", &[LOGIN, TRANSFER])[1],
        "200",
        "the old rule still cuts"
    );

    // A good file: the rule is gone after SIGHUP, the same journey passes.
    std::fs::write(
        &config,
        good.replace("transfer needs a balance check", "renamed rule")
            .replace("kind = \"allow\"", "kind = \"block\"")
            .replace(
                "[\"GET bank.test/api/v1/accounts/{account_id}/balance\"",
                "[\"GET bank.test/api/v1/users/{user_id}/accounts\"",
            ),
    )
    .unwrap();
    signal(agent.pid, libc::SIGHUP);
    eventually("the reload", Duration::from_secs(2), || {
        titles().contains("renamed rule").then_some(())
    });
    assert_eq!(
        session(&pair, "Cookie: sid=m2", &[LOGIN, TRANSFER]),
        ["200", "200"]
    );
}

#[test]
fn xdp_drops_blocked_clients_at_the_driver_until_block_ttl() {
    if !root_or_skip("xdp_drops_blocked_clients_at_the_driver_until_block_ttl") {
        return;
    }
    let (_dir, pair, agent) = setup(
        19_478,
        "[enforce]\nmode = \"enforce\"\nblock_scope = \"client_ip\"\nblock_ttl = \"3s\"\nxdp = true\n",
    );
    // The XDP program is attached to the server's interface.
    let links = std::fs::read_dir(format!("/proc/{}/fdinfo", agent.pid))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|info| info.contains("link_type:\txdp"))
        .count();
    assert_eq!(links, 1, "one XDP link held by the agent");
    assert_ne!(
        session(&pair, "Cookie: sid=mallory", &[LOGIN, TRANSFER])[1],
        "200"
    );
    // New connections from that address do not even complete their handshake now.
    let url = format!("http://{}/api/v1/accounts/1/balance", pair.server_ip);
    let out = pair.in_client(&["curl", "-s", "-o", "/dev/null", "--max-time", "1", &url]);
    assert_eq!(
        out.status.code(),
        Some(28),
        "curl times out: the SYN was dropped"
    );
    // After block_ttl the kernel entry has expired.
    std::thread::sleep(Duration::from_millis(3_200));
    assert_eq!(session(&pair, "Cookie: sid=alice", &[BALANCE]), ["200"]);
}
