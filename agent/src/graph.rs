//! The journey graph: operations as nodes, observed transitions as edges, the top
//! sequences as paths — read from a report (its two-operation sequences are the
//! transitions: N(x → y) and the precedence score N(x → y) / N(y)). Written as DOT,
//! mermaid or JSON by `seqshield graph`, for documents and other tools.

use std::fmt::Write as _;

use serde::Serialize;

use crate::report::Report;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JourneyGraph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// The best-scored sequences of three or more operations, best first.
    pub paths: Vec<JourneyPath>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The operation's stable id.
    pub id: String,
    /// `"METHOD host/path"`.
    pub label: String,
    pub requests: u64,
    pub occurrences: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// N(from → to).
    pub count: u64,
    /// Precedence: the share of `to`'s occurrences that came right after `from`.
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JourneyPath {
    /// Operation ids, first to final.
    pub operations: Vec<String>,
    pub count: u64,
    pub score: f64,
}

impl JourneyGraph {
    /// The graph of a report, with its `top` best paths.
    pub fn from_report(report: &Report, top: usize) -> Self {
        let edges: Vec<Edge> = report
            .sequences
            .iter()
            .filter(|s| s.operations.len() == 2)
            .map(|s| Edge {
                from: s.operations[0].clone(),
                to: s.operations[1].clone(),
                count: s.count,
                score: s.score,
            })
            .collect();
        let paths = report
            .sequences
            .iter()
            .filter(|s| s.operations.len() >= 3)
            .take(top)
            .map(|s| JourneyPath {
                operations: s.operations.clone(),
                count: s.count,
                score: s.score,
            })
            .collect();
        let joined: std::collections::HashSet<&str> = edges
            .iter()
            .flat_map(|e| [e.from.as_str(), e.to.as_str()])
            .collect();
        let nodes = report
            .operations
            .iter()
            .filter(|o| o.occurrences > 0 || joined.contains(o.id.as_str()))
            .map(|o| Node {
                id: o.id.clone(),
                label: o.human(),
                requests: o.requests,
                occurrences: o.occurrences,
            })
            .collect();
        Self {
            nodes,
            edges,
            paths,
        }
    }

    /// Keeps the `edges` most-taken transitions, and the operations they join (with the
    /// busiest others, up to as many): a graph a person can read, and a page that stays
    /// light with thousands of operations.
    pub fn limited(mut self, edges: usize) -> Self {
        if self.edges.len() > edges {
            self.edges.sort_by_key(|e| std::cmp::Reverse(e.count));
            self.edges.truncate(edges);
        }
        let joined: std::collections::HashSet<String> = self
            .edges
            .iter()
            .flat_map(|e| [e.from.clone(), e.to.clone()])
            .collect();
        let mut others: Vec<Node> = Vec::new();
        let mut kept = Vec::new();
        for n in self.nodes {
            if joined.contains(&n.id) {
                kept.push(n);
            } else {
                others.push(n);
            }
        }
        others.sort_by_key(|n| std::cmp::Reverse(n.occurrences));
        let room = edges.saturating_sub(kept.len());
        kept.extend(others.into_iter().take(room));
        self.nodes = kept;
        self
    }

    /// Graphviz, left to right: edge width by count, colour by precedence (red: rarely
    /// the way to the next operation, green: nearly always); edges on a top path bold.
    pub fn to_dot(&self) -> String {
        let mut out = String::from(
            "digraph journeys {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"sans-serif\"];\n",
        );
        for n in &self.nodes {
            let _ = writeln!(
                out,
                "  \"{}\" [label=\"{}\\n{} requests, N={}\"];",
                n.id,
                dot_escape(&n.label),
                n.requests,
                n.occurrences
            );
        }
        let widest = self.edges.iter().map(|e| e.count).max().unwrap_or(1).max(1);
        for e in &self.edges {
            let bold = if self.on_top_path(e) {
                ", style=bold"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [label=\"{} ({:.2})\", penwidth={:.1}, color=\"{}\"{bold}];",
                e.from,
                e.to,
                e.count,
                e.score,
                1.0 + 4.0 * e.count as f64 / widest as f64,
                score_colour(e.score)
            );
        }
        for (i, p) in self.paths.iter().enumerate() {
            let _ = writeln!(
                out,
                "  // top path {}: {} (N={}, score {:.2})",
                i + 1,
                p.operations.join(" -> "),
                p.count,
                p.score
            );
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid flowchart, left to right, edges labelled with N and precedence.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        let index = |id: &str| self.nodes.iter().position(|n| n.id == id);
        for (i, n) in self.nodes.iter().enumerate() {
            let _ = writeln!(
                out,
                "  n{i}[\"{}<br/>{} requests, N={}\"]",
                n.label.replace('"', "#quot;"),
                n.requests,
                n.occurrences
            );
        }
        // linkStyle numbers links in the order they are written.
        let (mut bold, mut written) = (Vec::new(), 0);
        for e in &self.edges {
            let (Some(from), Some(to)) = (index(&e.from), index(&e.to)) else {
                continue;
            };
            let _ = writeln!(out, "  n{from} -->|\"{} · {:.2}\"| n{to}", e.count, e.score);
            if self.on_top_path(e) {
                bold.push(written.to_string());
            }
            written += 1;
        }
        if !bold.is_empty() {
            let _ = writeln!(out, "  linkStyle {} stroke-width:4px", bold.join(","));
        }
        out
    }

    fn on_top_path(&self, e: &Edge) -> bool {
        self.paths.iter().any(|p| {
            p.operations
                .windows(2)
                .any(|w| w[0] == e.from && w[1] == e.to)
        })
    }
}

fn dot_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Red (precedence 0) to green (1), through amber.
fn score_colour(score: f64) -> String {
    let s = score.clamp(0.0, 1.0);
    let (r, g) = if s < 0.5 {
        (214.0, 39.0 + (190.0 - 39.0) * s * 2.0)
    } else {
        (
            214.0 - (214.0 - 44.0) * (s - 0.5) * 2.0,
            190.0 - (190.0 - 160.0) * (s - 0.5) * 2.0,
        )
    };
    format!("#{:02x}{:02x}{:02x}", r as u8, g as u8, 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_go_from_red_to_green() {
        assert_eq!(score_colour(0.0), "#d62728");
        assert_eq!(score_colour(1.0), "#2ca028");
        assert_eq!(score_colour(7.0), score_colour(1.0));
    }

    #[test]
    fn a_limited_graph_keeps_the_busiest_transitions_and_their_operations() {
        let node = |id: &str, occurrences| Node {
            id: id.into(),
            label: id.into(),
            requests: occurrences,
            occurrences,
        };
        let edge = |from: &str, to: &str, count| Edge {
            from: from.into(),
            to: to.into(),
            count,
            score: 0.5,
        };
        let graph = JourneyGraph {
            nodes: vec![
                node("a", 5),
                node("b", 5),
                node("c", 1),
                node("d", 9),
                node("e", 0),
            ],
            edges: vec![edge("a", "b", 3), edge("b", "c", 1), edge("d", "a", 7)],
            paths: vec![],
        }
        .limited(2);
        let edges: Vec<u64> = graph.edges.iter().map(|e| e.count).collect();
        assert_eq!(edges, [7, 3]);
        let nodes: Vec<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(nodes, ["a", "b", "d"]);
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(dot_escape(r#"GET a/"b"\c"#), r#"GET a/\"b\"\\c"#);
    }
}
