//! Where the cluster's Redis is, and how to reach the server that takes writes.
//!
//! - `redis://[user:password@]host:port[/db]` and `rediss://...` (TLS): one server.
//! - `redis+sentinel://[user:password@]host:port[,host:port...]/master-name[/db]` and
//!   `rediss+sentinel://...`: a master watched by Redis Sentinel. Each (re)connection asks
//!   the sentinels, in turn, where the master named `master-name` is (`SENTINEL
//!   get-master-addr-by-name`), connects there and checks with `ROLE` that it is a master
//!   (a sentinel may still name the old one for a moment during a failover). The credentials
//!   and the db are the master's; the sentinels are asked without them. With `+sentinel` over
//!   TLS both the sentinels and the master are reached over TLS.
//!
//! A private CA for TLS: `[cluster] redis_ca` (PEM); otherwise the system's roots.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

use super::contract::StoreError;

/// A parsed Redis URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One server, as the URL names it.
    Direct { url: String, tls: bool },
    /// A master found through Sentinel.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
        /// `user:password@` as written, for the master.
        userinfo: Option<String>,
        tls: bool,
    },
}

fn bad(url: &str, why: &str) -> StoreError {
    StoreError::Backend(format!("redis URL {:?}: {why}", redact(url)))
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, StoreError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad(
                url,
                "expected redis://, rediss://, redis+sentinel:// or rediss+sentinel://",
            )
        })?;
        let (tls, sentinel) = match scheme {
            "redis" => (false, false),
            "rediss" => (true, false),
            "redis+sentinel" => (false, true),
            "rediss+sentinel" => (true, true),
            _ => {
                return Err(bad(
                    url,
                    "expected redis://, rediss://, redis+sentinel:// or rediss+sentinel://",
                ))
            }
        };
        if !sentinel {
            return Ok(Target::Direct {
                url: url.to_owned(),
                tls,
            });
        }
        let (userinfo, rest) = match rest.rfind('@') {
            Some(at) => (Some(rest[..at].to_owned()), &rest[at + 1..]),
            None => (None, rest),
        };
        let (hosts, path) = rest
            .split_once('/')
            .ok_or_else(|| bad(url, "a sentinel URL names the master: .../master-name"))?;
        let mut sentinels = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(']') || h.starts_with('[') => {
                    let port = port
                        .parse::<u16>()
                        .map_err(|_| bad(url, &format!("bad sentinel port in {h:?}")))?;
                    (host.trim_start_matches('[').trim_end_matches(']'), port)
                }
                _ => (h, 26379),
            };
            if host.is_empty() {
                return Err(bad(url, &format!("empty sentinel host in {h:?}")));
            }
            sentinels.push((host.to_owned(), port));
        }
        if sentinels.is_empty() {
            return Err(bad(url, "no sentinel host"));
        }
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let master = parts
            .next()
            .ok_or_else(|| bad(url, "a sentinel URL names the master: .../master-name"))?
            .to_owned();
        let db = match parts.next() {
            Some(d) => d
                .parse::<i64>()
                .map_err(|_| bad(url, &format!("bad db {d:?}")))?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err(bad(url, "expected .../master-name[/db]"));
        }
        Ok(Target::Sentinel {
            sentinels,
            master,
            db,
            userinfo,
            tls,
        })
    }

    fn tls(&self) -> bool {
        match self {
            Target::Direct { tls, .. } | Target::Sentinel { tls, .. } => *tls,
        }
    }
}

/// Turns a [`Target`] into a connection to the server that takes writes.
pub struct Dialer {
    target: Target,
    /// PEM of the CA that signs the servers' certificates (TLS only).
    ca: Option<Vec<u8>>,
    config: AsyncConnectionConfig,
}

impl Dialer {
    pub fn new(
        target: Target,
        ca: Option<Vec<u8>>,
        config: AsyncConnectionConfig,
    ) -> Result<Self, StoreError> {
        let d = Self { target, ca, config };
        if let Target::Direct { url, .. } = &d.target {
            // Fail at start on a URL the client cannot use, not at the first call.
            d.client(url)?;
        }
        Ok(d)
    }

    fn client(&self, url: &str) -> Result<Client, StoreError> {
        let r = match (&self.ca, self.target.tls()) {
            (Some(ca), true) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            _ => Client::open(url),
        };
        r.map_err(|e| StoreError::Backend(format!("redis URL {:?}: {e}", redact(url))))
    }

    /// A connection to the server that takes writes now.
    pub async fn dial(&self) -> Result<MultiplexedConnection, StoreError> {
        match &self.target {
            Target::Direct { url, .. } => self.connect(url).await,
            Target::Sentinel {
                sentinels,
                master,
                db,
                userinfo,
                tls,
            } => {
                let scheme = if *tls { "rediss" } else { "redis" };
                let mut why = String::from("no sentinel answered");
                for (host, port) in sentinels {
                    let at = format!("{scheme}://{}:{port}/", bracket(host));
                    let addr = match self.master_of(&at, master).await {
                        Ok(Some(a)) => a,
                        Ok(None) => {
                            why = format!("sentinel {host}:{port} knows no master {master:?}");
                            continue;
                        }
                        Err(e) => {
                            why = format!("sentinel {host}:{port}: {e}");
                            continue;
                        }
                    };
                    let auth = userinfo
                        .as_deref()
                        .map_or(String::new(), |u| format!("{u}@"));
                    let url = format!("{scheme}://{auth}{}:{}/{db}", bracket(&addr.0), addr.1);
                    match self.connect(&url).await {
                        Ok(mut c) => {
                            if is_master(&mut c).await {
                                return Ok(c);
                            }
                            why = format!(
                                "{}:{} is not a master (yet): a failover is under way",
                                addr.0, addr.1
                            );
                        }
                        Err(e) => why = e.to_string(),
                    }
                }
                Err(StoreError::Unavailable(format!(
                    "no master {master:?} through Sentinel: {why}"
                )))
            }
        }
    }

    async fn connect(&self, url: &str) -> Result<MultiplexedConnection, StoreError> {
        self.client(url)?
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot reach redis: {e}")))
    }

    /// Where sentinel `url` says master `name` is.
    async fn master_of(&self, url: &str, name: &str) -> Result<Option<(String, u16)>, StoreError> {
        let mut c = self.connect(url).await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(name)
            .query_async::<Option<(String, u16)>>(&mut c)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

/// An IPv6 literal in a URL needs brackets.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `ROLE` answers `["master", ...]` on a master.
async fn is_master(c: &mut MultiplexedConnection) -> bool {
    let role: Result<redis::Value, _> = redis::cmd("ROLE").query_async(c).await;
    match role {
        Ok(redis::Value::Array(v)) => matches!(
            v.first(),
            Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Target::parse("redis://10.0.0.5:6379/0").expect("direct"),
            Target::Direct {
                url: "redis://10.0.0.5:6379/0".into(),
                tls: false
            }
        );
        assert!(matches!(
            Target::parse("rediss://redis.example:6380").expect("tls"),
            Target::Direct { tls: true, .. }
        ));
        assert_eq!(
            Target::parse(
                "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/2"
            )
            .expect("sentinel"),
            Target::Sentinel {
                sentinels: vec![
                    ("10.0.0.1".into(), 26379),
                    ("10.0.0.2".into(), 26379),
                    ("::1".into(), 26380)
                ],
                master: "mymaster".into(),
                db: 2,
                userinfo: Some(":s3cret".into()),
                tls: false,
            }
        );
        assert!(matches!(
            Target::parse("rediss+sentinel://a:1/m").expect("tls sentinel"),
            Target::Sentinel {
                tls: true,
                db: 0,
                ..
            }
        ));
        for bad in [
            "http://x",
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+sentinel://a:x/m",
            "redis+sentinel:///m",
            "redis+sentinel://a:1/m/zero",
            "redis+sentinel://a:1/m/0/extra",
            "nonsense",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        let e = Target::parse("redis+sentinel://:pw@a:x/m").expect_err("bad port");
        assert!(!e.to_string().contains("pw"), "password in {e}");
    }
}
