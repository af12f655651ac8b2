//! OpenAPI v3 import: every `paths` entry and method becomes an endpoint, once per host
//! named by `servers` (a server URL's path is a prefix of every path).

use std::path::Path;

use serde_json::Value;

use crate::config::EndpointConfig;

/// Path item keys that are HTTP methods (OpenAPI 3.x "Path Item Object").
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

pub fn endpoints(path: &Path) -> Result<Vec<EndpointConfig>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))?
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| format!("not valid YAML: {e}"))?
    };
    from_document(&doc)
}

fn from_document(doc: &Value) -> Result<Vec<EndpointConfig>, String> {
    match doc.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.") => {}
        Some(v) => {
            return Err(format!(
                "OpenAPI {v} is not supported; export the spec as OpenAPI 3.x"
            ));
        }
        None => return Err("no `openapi: 3.x` field: not an OpenAPI v3 document".into()),
    }
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("no `paths` object")?;
    let servers = servers(doc);
    let mut out = Vec::new();
    for (template, item) in paths {
        if !template.starts_with('/') {
            return Err(format!("path {template:?} does not start with '/'"));
        }
        let Some(item) = item.as_object() else {
            continue;
        };
        for method in METHODS.iter().filter(|m| item.contains_key(**m)) {
            for (host, base) in &servers {
                out.push(EndpointConfig {
                    position: 0,
                    host: host.clone(),
                    method: method.to_ascii_uppercase(),
                    path: format!("{base}{template}"),
                });
            }
        }
    }
    Ok(out)
}

/// (host, base path) of each server; one host-less entry when there are none.
fn servers(doc: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = doc
        .get("servers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("url").and_then(Value::as_str))
        .map(split_server_url)
        .collect();
    out.dedup();
    if out.is_empty() {
        out.push((String::new(), String::new()));
    }
    out
}

fn split_server_url(url: &str) -> (String, String) {
    let (authority, path) = match url.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        },
        None => ("", url),
    };
    let mut host = String::new();
    // A templated host (`{region}.api.test`) cannot be matched literally: any host.
    if !authority.contains('{') {
        super::normalise_host(authority.as_bytes(), &mut host);
    }
    (host, path.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_servers_and_base_path() {
        let doc: Value = serde_yaml_ng::from_str(
            r#"
openapi: 3.0.3
servers:
  - url: https://Bank.Test/api/v1/
paths:
  /users/{user_id}/accounts:
    get: {}
    parameters: []
  /transferFunds:
    post: {}
"#,
        )
        .unwrap();
        let eps = from_document(&doc).unwrap();
        let got: Vec<_> = eps
            .iter()
            .map(|e| format!("{} {}{}", e.method, e.host, e.path))
            .collect();
        assert_eq!(
            got,
            [
                "GET bank.test/api/v1/users/{user_id}/accounts",
                "POST bank.test/api/v1/transferFunds"
            ]
        );
    }

    #[test]
    fn json_without_servers_matches_any_host() {
        let doc: Value =
            serde_json::from_str(r#"{"openapi":"3.1.0","paths":{"/a":{"delete":{}}}}"#).unwrap();
        let eps = from_document(&doc).unwrap();
        assert_eq!(
            (
                eps[0].host.as_str(),
                eps[0].method.as_str(),
                eps[0].path.as_str()
            ),
            ("", "DELETE", "/a")
        );
    }

    #[test]
    fn swagger_2_is_refused() {
        let doc: Value = serde_json::from_str(r#"{"swagger":"2.0","paths":{}}"#).unwrap();
        assert!(from_document(&doc).unwrap_err().contains("OpenAPI v3"));
    }
}
