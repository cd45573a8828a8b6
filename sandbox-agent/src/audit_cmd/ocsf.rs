//! The audit record as OCSF 1.3 events (`audit export --format ocsf`).
//!
//! | record | OCSF class (uid) | activity |
//! |---|---|---|
//! | `execute` bash, `start` (or refused) | Process Activity (1007) | Launch (1) |
//! | `execute` bash, `end` | Process Activity (1007) | Terminate (2), `exit_code` |
//! | `execute` read / glob / grep | File System Activity (1001) | Read (2) |
//! | `execute` write | File System Activity (1001) | Create (1) |
//! | `execute` edit | File System Activity (1001) | Update (3) |
//! | `execute` any other tool | API Activity (6003) | Other (99) |
//! | `mcp_call_tool` | API Activity (6003) | Other (99), `api.operation` `tools/call` |
//! | `mcp_list_tools`, `mcp_validate`, `list_sandboxes` | API Activity (6003) | Read (2) |
//! | `credential_use` | HTTP Activity (4002) | by method: Get (3), Post (6), Put (7), Delete (2), … Other (99) |
//! | `provision`, `adopt` | Application Lifecycle (6002) | Start (3) |
//! | `destroy`, `reap` | Application Lifecycle (6002) | Stop (4) |
//! | `checkpoint`, `credential_use_gap`, anything else | Base Event (0) | Other (99) |
//!
//! Every event has `type_uid` = class × 100 + activity, `severity_id` and
//! `status_id` from the outcome, `time` (ms since the epoch, from `at`),
//! `metadata` (product, schema version 1.3.0, `uid` = the record's seq),
//! `device` (hostname; `uid` = the agent id), `actor` (the agent, the
//! session) and `unmapped` with Airlock's fields (seq, hash, prev, ids,
//! output digest, the scrubbed input, the decision). Only what the record
//! holds is used: inputs there are already scrubbed, nothing is added.

use serde_json::{json, Map, Value};

use super::log::Record;

/// OCSF schema version of the events.
pub const OCSF_VERSION: &str = "1.3.0";

/// Who wrote the log: put in `device` and `actor` of every event.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The agent id (`agt_…`), when the agent is enrolled.
    pub agent_id: Option<String>,
    /// The host name.
    pub hostname: String,
}

impl Source {
    /// The agent id from the identity dir's `identity.json` (if any) and the
    /// system's host name.
    pub fn detect(identity_dir: &std::path::Path) -> Self {
        let agent_id = pki::agent::AgentFiles::new(identity_dir)
            .read_record()
            .ok()
            .map(|r| r.agent_id.as_str().to_owned());
        Self {
            agent_id,
            hostname: system_hostname(),
        }
    }
}

/// The system's host name (`/proc/sys/kernel/hostname`, else `localhost`).
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

struct Class {
    category_uid: u32,
    category_name: &'static str,
    class_uid: u32,
    class_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
}

const fn class(
    category: (u32, &'static str),
    class: (u32, &'static str),
    activity: (u32, &'static str),
) -> Class {
    Class {
        category_uid: category.0,
        category_name: category.1,
        class_uid: class.0,
        class_name: class.1,
        activity_id: activity.0,
        activity_name: activity.1,
    }
}

const SYSTEM: (u32, &str) = (1, "System Activity");
const NETWORK: (u32, &str) = (4, "Network Activity");
const APPLICATION: (u32, &str) = (6, "Application Activity");
const UNCATEGORIZED: (u32, &str) = (0, "Uncategorized");
const PROCESS: (u32, &str) = (1007, "Process Activity");
const FILE_SYSTEM: (u32, &str) = (1001, "File System Activity");
const HTTP: (u32, &str) = (4002, "HTTP Activity");
const API: (u32, &str) = (6003, "API Activity");
const APP_LIFECYCLE: (u32, &str) = (6002, "Application Lifecycle");
const BASE: (u32, &str) = (0, "Base Event");
const OTHER: (u32, &str) = (99, "Other");

fn classify(rec: &Record) -> Class {
    let call = rec.call();
    match call {
        "execute" => match rec.str("tool").unwrap_or_default() {
            "bash" if rec.str("phase") == Some("end") => class(SYSTEM, PROCESS, (2, "Terminate")),
            "bash" => class(SYSTEM, PROCESS, (1, "Launch")),
            "read" | "glob" | "grep" => class(SYSTEM, FILE_SYSTEM, (2, "Read")),
            "write" => class(SYSTEM, FILE_SYSTEM, (1, "Create")),
            "edit" => class(SYSTEM, FILE_SYSTEM, (3, "Update")),
            _ => class(APPLICATION, API, OTHER),
        },
        "mcp_call_tool" => class(APPLICATION, API, OTHER),
        "mcp_list_tools" | "mcp_validate" | "list_sandboxes" => {
            class(APPLICATION, API, (2, "Read"))
        }
        "credential_use" => {
            let method = rec
                .fields
                .get("credential_use")
                .and_then(|c| c.get("method"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_ascii_uppercase();
            let activity = match method.as_str() {
                "CONNECT" => (1, "Connect"),
                "DELETE" => (2, "Delete"),
                "GET" => (3, "Get"),
                "HEAD" => (4, "Head"),
                "OPTIONS" => (5, "Options"),
                "POST" => (6, "Post"),
                "PUT" => (7, "Put"),
                "TRACE" => (8, "Trace"),
                _ => OTHER,
            };
            class(NETWORK, HTTP, activity)
        }
        "provision" | "adopt" => class(APPLICATION, APP_LIFECYCLE, (3, "Start")),
        "destroy" | "reap" => class(APPLICATION, APP_LIFECYCLE, (4, "Stop")),
        _ => class(UNCATEGORIZED, BASE, OTHER),
    }
}

/// (status_id, status, severity_id, severity) of an outcome.
fn status(rec: &Record) -> (u32, &'static str, u32, &'static str) {
    match rec.outcome() {
        "ok" | "started" | "signed" | "injected" | "replayed" => (1, "Success", 1, "Informational"),
        "tool_error" => (2, "Failure", 2, "Low"),
        "refused" | "denied" | "placeholder_refused" | "host_refused" => {
            (2, "Failure", 3, "Medium")
        }
        "error" | "failed" | "secret_unavailable" | "upstream_failed" => (2, "Failure", 4, "High"),
        _ if rec.call() == "credential_use_gap" => (99, "Other", 4, "High"),
        _ => (0, "Unknown", 2, "Low"),
    }
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        if !v.is_null() {
            map.insert(key.to_owned(), v);
        }
    }
}

fn input_str<'a>(rec: &'a Record, key: &str) -> Option<&'a str> {
    rec.fields
        .get("input")
        .and_then(|i| i.get(key))
        .and_then(Value::as_str)
}

/// The OCSF event for one record.
pub fn event(rec: &Record, source: &Source) -> Value {
    let c = classify(rec);
    let (status_id, status_name, severity_id, severity) = status(rec);
    let time_ms = rec
        .at()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0);
    let mut e = Map::new();
    e.insert("category_uid".into(), json!(c.category_uid));
    e.insert("category_name".into(), json!(c.category_name));
    e.insert("class_uid".into(), json!(c.class_uid));
    e.insert("class_name".into(), json!(c.class_name));
    e.insert("activity_id".into(), json!(c.activity_id));
    e.insert("activity_name".into(), json!(c.activity_name));
    e.insert(
        "type_uid".into(),
        json!(u64::from(c.class_uid) * 100 + u64::from(c.activity_id)),
    );
    e.insert(
        "type_name".into(),
        json!(format!("{}: {}", c.class_name, c.activity_name)),
    );
    e.insert("severity_id".into(), json!(severity_id));
    e.insert("severity".into(), json!(severity));
    e.insert("status_id".into(), json!(status_id));
    e.insert("status".into(), json!(status_name));
    e.insert("status_code".into(), json!(rec.outcome()));
    put(
        &mut e,
        "status_detail",
        rec.fields
            .get("decision")
            .and_then(|d| d.get("reason"))
            .cloned()
            .or_else(|| rec.fields.get("detail").cloned()),
    );
    e.insert("time".into(), json!(time_ms));
    put(&mut e, "duration", rec.fields.get("duration_ms").cloned());
    let mut message = rec.call().to_owned();
    if let Some(tool) = rec.tool() {
        message.push(' ');
        message.push_str(tool);
    }
    if let Some(phase) = rec.str("phase") {
        message.push(' ');
        message.push_str(phase);
    }
    message.push_str(": ");
    message.push_str(rec.outcome());
    e.insert("message".into(), json!(message));
    let mut metadata = json!({
        "product": {
            "name": "Airlock sandbox-agent",
            "vendor_name": "Airlock",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "version": OCSF_VERSION,
        "uid": rec.seq.to_string(),
        "log_name": "airlock-agent-audit",
    });
    if let (Some(m), Some(at)) = (metadata.as_object_mut(), rec.str("at")) {
        m.insert("original_time".into(), json!(at));
    }
    if let (Some(m), Some(t)) = (metadata.as_object_mut(), rec.str("tool_use_id")) {
        m.insert("correlation_uid".into(), json!(t));
    }
    e.insert("metadata".into(), metadata);
    let mut device = json!({"hostname": source.hostname, "type_id": 1, "type": "Server"});
    let mut actor = json!({"app_name": "airlock-agent"});
    if let Some(agent) = &source.agent_id {
        device["uid"] = json!(agent);
        actor["app_uid"] = json!(agent);
    }
    if let Some(session) = rec.str("session_id") {
        actor["session"] = json!({"uid": session});
    }
    e.insert("device".into(), device);
    e.insert("actor".into(), actor);
    class_fields(rec, &c, source, &mut e);
    e.insert("unmapped".into(), unmapped(rec));
    Value::Object(e)
}

fn class_fields(rec: &Record, c: &Class, source: &Source, e: &mut Map<String, Value>) {
    match c.class_uid {
        1007 => {
            let mut process = json!({"name": "bash"});
            if let Some(cmd) = input_str(rec, "command") {
                process["cmd_line"] = json!(cmd);
            }
            e.insert("process".into(), process);
            put(e, "exit_code", rec.fields.get("exit_code").cloned());
        }
        1001 => {
            let tool = rec.str("tool").unwrap_or_default();
            let (path, type_id, type_name) = match tool {
                "glob" | "grep" => (input_str(rec, "path").unwrap_or("."), 2, "Folder"),
                _ => (input_str(rec, "file_path").unwrap_or(""), 1, "Regular File"),
            };
            let name = path.rsplit('/').next().unwrap_or(path);
            e.insert(
                "file".into(),
                json!({"path": path, "name": name, "type_id": type_id, "type": type_name}),
            );
        }
        4002 => {
            let u = rec.fields.get("credential_use");
            let get = |k: &str| u.and_then(|u| u.get(k)).cloned();
            let host = get("host").unwrap_or(Value::Null);
            let path = get("path").unwrap_or(Value::Null);
            e.insert(
                "http_request".into(),
                json!({
                    "http_method": get("method"),
                    "url": {"hostname": host, "path": path},
                }),
            );
            if let Some(code) = get("status") {
                e.insert("http_response".into(), json!({"code": code}));
            }
            e.insert("dst_endpoint".into(), json!({"hostname": host}));
            e.insert("src_endpoint".into(), json!({"hostname": source.hostname}));
        }
        6003 => {
            let call = rec.call();
            let (operation, service) = match call {
                "mcp_call_tool" => ("tools/call", mcp_server(rec)),
                "mcp_list_tools" => ("tools/list", mcp_server(rec)),
                "mcp_validate" => ("validate", mcp_server(rec)),
                "execute" => ("execute", Some(json!("airlock-sandbox"))),
                other => (other, Some(json!("airlock-agent"))),
            };
            let mut api = json!({"operation": operation});
            if let Some(s) = service {
                api["service"] = json!({"name": s});
            }
            if let Some(t) = rec.str("tool_use_id") {
                api["request"] = json!({"uid": t});
            }
            e.insert("api".into(), api);
            if let Some(tool) = rec.tool() {
                e.insert("resources".into(), json!([{"name": tool, "type": "tool"}]));
            }
            e.insert("src_endpoint".into(), json!({"hostname": source.hostname}));
            if let Some(host) = rec.fields.get("mcp").and_then(|m| m.get("host")).cloned() {
                e.insert("dst_endpoint".into(), json!({"hostname": host}));
            }
        }
        6002 => {
            let mut app = json!({"name": "airlock-sandbox", "vendor_name": "Airlock"});
            if let Some(s) = rec.str("sandbox_id") {
                app["uid"] = json!(s);
            }
            e.insert("app".into(), app);
        }
        _ => {}
    }
}

fn mcp_server(rec: &Record) -> Option<Value> {
    rec.fields
        .get("mcp")
        .and_then(|m| m.get("server").or_else(|| m.get("host")))
        .cloned()
}

/// Airlock's own fields, kept as they are in the record.
fn unmapped(rec: &Record) -> Value {
    let mut u = Map::new();
    u.insert("seq".into(), json!(rec.seq));
    for key in [
        "v",
        "hash",
        "prev",
        "call",
        "phase",
        "tool",
        "tool_use_id",
        "session_id",
        "sandbox_id",
        "outcome",
        "decision",
        "input",
        "redactions",
        "detail",
        "mcp",
        "credential_use",
        "checkpoint",
    ] {
        put(&mut u, key, rec.fields.get(key).cloned());
    }
    if let Some(out) = rec.fields.get("output") {
        put(&mut u, "output_sha256", out.get("sha256").cloned());
        put(&mut u, "output_bytes", out.get("bytes").cloned());
        put(&mut u, "output_stored", out.get("stored").cloned());
    }
    Value::Object(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(line: &str) -> Record {
        Record::parse(std::path::Path::new("audit.jsonl"), 1, line.to_owned()).unwrap()
    }

    #[test]
    fn refused_and_failed_credential_uses_are_failures() {
        for (outcome, severity) in [
            ("placeholder_refused", "Medium"),
            ("host_refused", "Medium"),
            ("secret_unavailable", "High"),
            ("upstream_failed", "High"),
            ("injected", "Informational"),
        ] {
            let r = rec(&format!(
                r#"{{"v":2,"seq":1,"at":"2026-12-06T20:00:01Z","call":"credential_use","outcome":"{outcome}","prev":"a","hash":"b"}}"#
            ));
            let (_, status, _, sev) = status(&r);
            let want = if outcome == "injected" {
                "Success"
            } else {
                "Failure"
            };
            assert_eq!((status, sev), (want, severity), "{outcome}");
        }
    }

    #[test]
    fn bash_start_and_end_are_process_launch_and_terminate() {
        let src = Source {
            agent_id: Some("agt_1".into()),
            hostname: "h".into(),
        };
        let s = event(
            &rec(
                r#"{"v":2,"seq":5,"at":"2026-12-06T20:00:00.5Z","call":"execute","phase":"start","session_id":"sesn_1","tool_use_id":"toolu_1","tool":"bash","input":{"command":"ls"},"decision":{"allowed":true},"outcome":"started","duration_ms":0,"prev":"a","hash":"b"}"#,
            ),
            &src,
        );
        assert_eq!(s["class_uid"], 1007);
        assert_eq!(s["type_uid"], 100701);
        assert_eq!(s["time"], 1_796_587_200_500_i64);
        assert_eq!(s["process"]["cmd_line"], "ls");
        assert_eq!(s["metadata"]["uid"], "5");
        assert_eq!(s["device"]["uid"], "agt_1");
        assert_eq!(s["unmapped"]["hash"], "b");
        let e = event(
            &rec(
                r#"{"v":2,"seq":6,"at":"2026-12-06T20:00:01Z","call":"execute","phase":"end","tool":"bash","outcome":"ok","exit_code":3,"output":{"sha256":"cd","bytes":4},"prev":"b","hash":"c"}"#,
            ),
            &src,
        );
        assert_eq!(e["type_uid"], 100702);
        assert_eq!(e["exit_code"], 3);
        assert_eq!(e["status_id"], 1);
        assert_eq!(e["unmapped"]["output_sha256"], "cd");
        let r = event(
            &rec(
                r#"{"v":2,"seq":7,"at":"2026-12-06T20:00:01Z","call":"execute","tool":"write","input":{"file_path":"/w/a.txt"},"decision":{"allowed":false,"rule":"tools.deny","reason":"no"},"outcome":"refused","prev":"c","hash":"d"}"#,
            ),
            &src,
        );
        assert_eq!(r["type_uid"], 100101);
        assert_eq!(r["status_id"], 2);
        assert_eq!(r["severity_id"], 3);
        assert_eq!(r["status_detail"], "no");
        assert_eq!(r["file"]["name"], "a.txt");
    }
}
