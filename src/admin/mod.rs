//! Admin commands over a node's REST API, in the spirit of LiveKit's `lk`: list the
//! cluster's nodes and rooms and a node's streams and sessions, end a session, drain (or
//! shut down) a node. Each is one or two calls of the API in docs/api.md, made with the
//! project's own HTTP client; `--json` prints the API's answer as it came, the default an
//! aligned table (`table`, `views`).
//!
//! Errors are one line on stderr: exit status 2 for what the command was given (flags, a
//! bad `--api`, a CA file that does not load), 1 when the API cannot be reached or refuses
//! (with the API's own `{"error": ...}` message and status).

mod api;
pub mod table;
mod views;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use switchyard_httpclient::Method;

use api::{Api, TlsChoice};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// What the command was given cannot work (exit status 2).
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the API at {api}: {error} (is the node running there? --api or SWITCHYARD_API says where)")]
    Unreachable { api: String, error: String },
    /// The API answered 4xx or 5xx: what it said.
    #[error("{request} refused ({status}): {message}")]
    Refused {
        request: String,
        status: u16,
        message: String,
    },
    /// The API answered something that is not what this version expects.
    #[error("{0}")]
    Answer(String),
}

/// How to reach the API and how to print: the flags every admin command takes.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Base URL of a node's control plane API.
    #[arg(long, env = "SWITCHYARD_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Bearer token when the node has auth on (most commands need a cluster token:
    /// `switchyard token sign --cluster`).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificates that verify an https:// API [default: the system's bundle,
    /// /etc/ssl/certs/ca-certificates.crt].
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Accept any certificate from an https:// API (a test node with a self-signed one).
    #[arg(long)]
    insecure_tls: bool,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

impl ApiArgs {
    fn api(&self) -> Result<Api, AdminError> {
        Api::new(
            &self.api,
            self.token.clone(),
            &TlsChoice {
                ca_file: self.ca_file.clone(),
                insecure: self.insecure_tls,
            },
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// The cluster's nodes: health, load, capacity (GET /v1/nodes).
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// The cluster's rooms and where they are placed (GET /v1/rooms).
    #[command(subcommand)]
    Rooms(RoomsCmd),
    /// Published streams: this node's with counters, or every node's (GET /v1/streams).
    #[command(subcommand)]
    Streams(StreamsCmd),
    /// This node's sessions (GET /v1/sessions).
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// One session.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Stop placing new rooms on a node (its rooms stay), or shut it down gracefully
    /// (POST /v1/nodes/{id}/drain).
    Drain(DrainArgs),
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// List every registered node.
    List(ApiArgs),
}

#[derive(Debug, Subcommand)]
pub enum RoomsCmd {
    /// List every placed room.
    List(ApiArgs),
}

#[derive(Debug, Subcommand)]
pub enum StreamsCmd {
    /// List the streams published on the node --api names, with their counters.
    List(StreamsListArgs),
}

#[derive(Debug, Args)]
pub struct StreamsListArgs {
    /// Only streams whose name starts with this (e.g. `room1/`).
    #[arg(long)]
    prefix: Option<String>,
    /// Every node's streams from the cluster store, with the relay links that feed them
    /// (GET /v1/cluster/streams), instead of this node's counters.
    #[arg(long, conflicts_with = "prefix")]
    cluster: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// List the sessions of the node --api names.
    List(ApiArgs),
}

#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// End a session now (DELETE /v1/sessions/{id}): its peer gets no more media.
    Kick(KickArgs),
}

#[derive(Debug, Args)]
pub struct KickArgs {
    /// The session's id (the ID column of `sessions list`).
    id: u64,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node's id (the NODE column of `nodes list`).
    node: String,
    /// Also shut the node down: no new sessions, exit once its WebRTC sessions ended (at
    /// most `cluster.shutdown_grace_ms`). Only the node's own API does this: point --api at
    /// it.
    #[arg(long, conflicts_with = "resume")]
    shutdown: bool,
    /// Undo a drain: place new rooms on the node again (DELETE /v1/nodes/{id}/drain).
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Run an admin command: its output on stdout, an error as one line on stderr.
pub fn run(cmd: &AdminCmd) -> ExitCode {
    match execute(cmd) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard: {e}");
            match e {
                AdminError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn pretty(v: &Value) -> String {
    // Serializing a Value cannot fail.
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// A path segment as the API's router reads it: node ids are `A-Z a-z 0-9 _ . -`, so
/// anything else can only be a typo, but it must not change the path.
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the command prints, or why it failed.
fn execute(cmd: &AdminCmd) -> Result<String, AdminError> {
    let list = |a: &ApiArgs, path: &str, table: fn(&Value, u64) -> table::Table| {
        let answer = a.api()?.get(path)?;
        Ok(if a.json {
            pretty(&answer)
        } else {
            table(&answer, now_ms()).render()
        })
    };
    match cmd {
        AdminCmd::Nodes(NodesCmd::List(a)) => list(a, "/v1/nodes", views::nodes),
        AdminCmd::Rooms(RoomsCmd::List(a)) => list(a, "/v1/rooms", views::rooms),
        AdminCmd::Sessions(SessionsCmd::List(a)) => list(a, "/v1/sessions", views::sessions),
        AdminCmd::Streams(StreamsCmd::List(s)) if s.cluster => {
            list(&s.api, "/v1/cluster/streams", |v, _| {
                views::cluster_streams(v)
            })
        }
        AdminCmd::Streams(StreamsCmd::List(s)) => {
            let path = match &s.prefix {
                Some(p) => format!("/v1/streams?prefix={}", segment(p)),
                None => "/v1/streams".to_owned(),
            };
            list(&s.api, &path, |v, _| views::streams(v))
        }
        AdminCmd::Session(SessionCmd::Kick(k)) => {
            k.api
                .api()?
                .send(Method::DELETE, &format!("/v1/sessions/{}", k.id), None)?;
            Ok(if k.api.json {
                pretty(&json!({ "id": k.id, "ended": true }))
            } else {
                format!("session {} ended\n", k.id)
            })
        }
        AdminCmd::Drain(d) => drain(d),
    }
}

fn drain(d: &DrainArgs) -> Result<String, AdminError> {
    let api = d.api.api()?;
    let path = format!("/v1/nodes/{}/drain", segment(&d.node));
    let answer = if d.resume {
        api.send(Method::DELETE, &path, None)?
    } else if d.shutdown {
        api.send(Method::POST, &path, Some(&json!({ "shutdown": true })))?
    } else {
        api.send(Method::POST, &path, None)?
    };
    let answer = answer.unwrap_or(Value::Null);
    if d.api.json {
        return Ok(pretty(&answer));
    }
    let node = &d.node;
    Ok(if d.resume {
        format!("node {node}: no longer draining; new rooms may be placed on it again\n")
    } else if d.shutdown {
        format!(
            "node {node}: shutting down: no new sessions; it exits once its WebRTC sessions \
             have ended (at most cluster.shutdown_grace_ms)\n"
        )
    } else {
        format!(
            "node {node}: draining: no new rooms are placed on it; its rooms and sessions stay\n"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_cannot_change_the_path() {
        assert_eq!(segment("node-1.a_b"), "node-1.a_b");
        assert_eq!(segment("../x y"), "..%2Fx%20y");
        assert_eq!(segment("room1/"), "room1%2F");
    }
}
