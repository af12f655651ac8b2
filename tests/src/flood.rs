//! A session flood for memory benchmarks: `sessions` one-request sessions (a login
//! with a fresh cookie each) on connections joined without handshakes, ten requests a
//! connection, while `legit` slow users keep checking their balance and finally
//! transfer — allowed, so any alert is a legit history the flood destroyed.

use crate::bank::{self, Ident, MS, T0};
use crate::capture::Capture;

const REQUESTS_PER_CONNECTION: usize = 10;

/// The address of the `c`-th flood connection: distinct for millions of connections.
pub fn flood_client(c: u32) -> String {
    format!(
        "10.{}.{}.{}:{}",
        100 + c / 60_000,
        (c / 250) % 240,
        c % 250 + 1,
        1024 + c % 60_000
    )
}

pub fn session_flood(sessions: usize, legit: usize) -> Capture {
    let mut cap = Capture::new();
    let mut ts = T0;
    let ident = |i: usize| Ident::Cookie(format!("legit-{i}"));
    let mut users: Vec<_> = (0..legit)
        .map(|i| {
            let client = format!("10.9.{}.{}:40000", i / 200, i % 200 + 1);
            let mut conn = cap.open(ts, &client, "10.0.0.2:80");
            cap.send(ts, &mut conn, &bank::login(&ident(i), i as u32));
            ts += MS / 10;
            conn
        })
        .collect();
    let connections = sessions.div_ceil(REQUESTS_PER_CONNECTION);
    for c in 0..connections {
        let mut conn = cap.join(&flood_client(c as u32), "10.0.0.2:80", 77 + c as u32);
        for r in 0..REQUESTS_PER_CONNECTION.min(sessions - c * REQUESTS_PER_CONNECTION) {
            ts += MS / 100;
            let id = Ident::Cookie(format!("flood-{c}-{r}"));
            cap.send(ts, &mut conn, &bank::login(&id, c as u32));
        }
        // The legit users check their balance now and then during the flood.
        if c % (connections / 20).max(1) == 0 {
            for (i, conn) in users.iter_mut().enumerate() {
                cap.send(ts, conn, &bank::balance(&ident(i), i as u32));
            }
        }
    }
    for (i, conn) in users.iter_mut().enumerate() {
        ts += MS / 10;
        cap.send(ts, conn, &bank::balance(&ident(i), i as u32));
        cap.send(ts + MS / 20, conn, &bank::transfer(&ident(i), i as u32, 1));
    }
    cap
}
