//! `switchyard token`: make auth keys and tokens (JWT) for `[auth]`, and check a token the
//! way a node would.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::json;
use switchyard_controlplane::auth::{self, Auth, AuthError, Claims};
use switchyard_shared::config::{AuthSection, Config};

use crate::admin::table::{duration_s, utc};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Print a fresh random HS256 key (base64) for `[auth] key`.
    Generate,
    /// Print a signed token (JWT).
    Sign(SignArgs),
    /// Check a token's signature and expiry as a node would, and print its claims.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// HS256 key, base64 (as in `[auth] key`).
    #[arg(
        long,
        env = "SWITCHYARD_AUTH_KEY",
        required_unless_present = "private_key"
    )]
    key: Option<String>,
    /// ES256 private key (PKCS#8 PEM file) instead of --key.
    #[arg(long, conflicts_with = "key")]
    private_key: Option<PathBuf>,
    /// Path prefix every --publish/--subscribe suffix is relative to ("" = everything).
    #[arg(long, default_value = "")]
    root: String,
    /// Suffix under --root the bearer may publish to ("" = anything under root); repeatable.
    #[arg(long)]
    publish: Vec<String>,
    /// Suffix under --root the bearer may watch ("" = anything under root); repeatable.
    #[arg(long)]
    subscribe: Vec<String>,
    /// Lifetime: 90s, 30m, 1h, 7d; `never` only with --cluster.
    #[arg(long, default_value = "1h")]
    expires: String,
    /// Node-to-node token: every endpoint and path (registration, sessions, drain, ...).
    #[arg(long)]
    cluster: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The token (JWT); `-` reads it from standard input.
    token: String,
    /// HS256 key, base64 (as in `[auth] key`) [default: the `[auth]` keys of --config].
    #[arg(long, env = "SWITCHYARD_AUTH_KEY", hide_env_values = true)]
    key: Option<String>,
    /// ES256 public key (PEM file), as in `[auth] public_key`.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// TOML config file whose `[auth]` keys verify the token (without --key or --public-key).
    #[arg(long, env = "SWITCHYARD_CONFIG", hide_env = true)]
    config: Option<PathBuf>,
    /// Print the claims as JSON.
    #[arg(long)]
    json: bool,
}

/// Run a `token` command; `config` is the top-level `--config`. Exit status 2 for what the
/// command was given (a bad key, no key, a bad lifetime), 1 for a token that does not verify.
pub fn run(cmd: &TokenCmd, config: Option<&PathBuf>) -> ExitCode {
    let result = match cmd {
        TokenCmd::Generate => auth::generate_key().map(|k| println!("{k}")),
        TokenCmd::Sign(a) => sign(a),
        TokenCmd::Verify(a) => match verify(a, config) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => {
                eprintln!("switchyard: {refused}");
                return ExitCode::FAILURE;
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

fn sign(a: &SignArgs) -> anyhow::Result<()> {
    let ttl = lifetime(&a.expires)?;
    anyhow::ensure!(
        ttl.is_some() || a.cluster,
        "--expires never is for --cluster tokens only: user tokens must expire"
    );
    let now = auth::now_s();
    let claims = Claims {
        root: a.root.trim_matches('/').to_owned(),
        publish: a.publish.clone(),
        subscribe: a.subscribe.clone(),
        cluster: a.cluster,
        exp: ttl.map(|t| now + t),
        iat: Some(now),
    };
    let jwt = match (&a.key, &a.private_key) {
        (Some(key), _) => auth::sign_hs256(key, &claims)?,
        (None, Some(pem)) => auth::sign_es256(&pem.to_string_lossy(), &claims)?,
        (None, None) => anyhow::bail!("--key or --private-key is required"),
    };
    println!("{jwt}");
    Ok(())
}

/// Seconds in `90s`, `30m`, `1h`, `7d` (a bare number is seconds); None for `never`.
fn lifetime(text: &str) -> anyhow::Result<Option<u64>> {
    if text == "never" {
        return Ok(None);
    }
    let (n, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = n
        .parse()
        .with_context(|| format!("bad lifetime {text:?}"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("bad lifetime {text:?} (use s, m, h or d, e.g. 1h)"),
    };
    n.checked_mul(unit)
        .filter(|s| *s > 0)
        .map(Some)
        .with_context(|| format!("bad lifetime {text:?}"))
}

/// Verify with the keys given, or those of the config file. The outer error is about what
/// the command was given (exit 2); the inner one says why the token is refused (exit 1).
fn verify(a: &VerifyArgs, top_config: Option<&PathBuf>) -> anyhow::Result<Result<(), String>> {
    let (section, with) = if a.key.is_some() || a.public_key.is_some() {
        let with = match (&a.key, &a.public_key) {
            (Some(_), Some(p)) => format!("--key and --public-key {}", p.display()),
            (Some(_), None) => "--key".to_owned(),
            (None, Some(p)) => format!("--public-key {}", p.display()),
            (None, None) => unreachable!("one of them is set in this branch"),
        };
        let section = AuthSection {
            key: a.key.clone(),
            public_key: a.public_key.as_ref().map(|p| p.display().to_string()),
            public: None,
        };
        (section, with)
    } else {
        let path = a.config.as_ref().or(top_config).context(
            "nothing to verify with: pass --key (or SWITCHYARD_AUTH_KEY), --public-key, or \
             --config with an [auth] section",
        )?;
        let config = Config::load(path)?;
        anyhow::ensure!(
            config.auth.enabled(),
            "{} has no [auth] key or public_key: auth is off there, tokens are not checked",
            path.display()
        );
        (config.auth, format!("[auth] of {}", path.display()))
    };
    let verifier = Auth::from_config(&section)?.context("no key to verify with")?;
    let token = if a.token == "-" {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .context("reading the token from standard input")?;
        t.trim().to_owned()
    } else {
        a.token.trim().to_owned()
    };
    let claims = match verifier.verify(&token) {
        Ok(c) => c,
        Err(AuthError::Unauthorized(reason) | AuthError::Forbidden(reason)) => {
            // "token expired" comes after the signature was checked: say when it expired.
            let when = payload(&token)
                .and_then(|p| p["exp"].as_u64())
                .filter(|_| reason == "token expired")
                .map(|exp| format!(" at {}", utc(exp)))
                .unwrap_or_default();
            return Ok(Err(format!(
                "token refused: {reason}{when} (checked with {with})"
            )));
        }
    };
    let alg = header(&token)
        .and_then(|h| h["alg"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let now = auth::now_s();
    if a.json {
        let out = json!({
            "valid": true,
            "algorithm": alg,
            "claims": {
                "root": claims.root,
                "pub": claims.publish,
                "sub": claims.subscribe,
                "cluster": claims.cluster,
                "exp": claims.exp,
                "iat": claims.iat,
            },
            "expiresInS": claims.exp.map(|e| e.saturating_sub(now)),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(Ok(()));
    }
    let suffixes = |list: &[String]| {
        if list.is_empty() {
            return "-".to_owned();
        }
        list.iter()
            .map(|s| {
                if s.is_empty() {
                    "(anything under root)".to_owned()
                } else {
                    s.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let line = |k: &str, v: String| println!("{k:<10} {v}");
    line(
        "valid",
        format!("yes: {alg}, signature checked with {with}"),
    );
    line(
        "root",
        if claims.root.is_empty() {
            "(everything)".into()
        } else {
            claims.root.clone()
        },
    );
    line("publish", suffixes(&claims.publish));
    line("subscribe", suffixes(&claims.subscribe));
    line(
        "cluster",
        if claims.cluster {
            "yes: every endpoint and path".into()
        } else {
            "no".into()
        },
    );
    if let Some(iat) = claims.iat {
        line(
            "issued",
            format!("{} ({} ago)", utc(iat), duration_s(now.saturating_sub(iat))),
        );
    }
    line(
        "expires",
        match claims.exp {
            Some(exp) if exp >= now => format!("{} (in {})", utc(exp), duration_s(exp - now)),
            // Within the 30 s leeway a node allows for clock skew.
            Some(exp) => format!(
                "{} ({} ago, within the clock-skew leeway)",
                utc(exp),
                duration_s(now - exp)
            ),
            None => "never".into(),
        },
    );
    Ok(Ok(()))
}

/// A JWT segment (0: header, 1: claims) as JSON, unverified.
fn segment(token: &str, i: usize) -> Option<serde_json::Value> {
    let part = token.split('.').nth(i)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn header(token: &str) -> Option<serde_json::Value> {
    segment(token, 0)
}

fn payload(token: &str) -> Option<serde_json::Value> {
    segment(token, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(lifetime("90s").unwrap(), Some(90));
        assert_eq!(lifetime("30m").unwrap(), Some(1800));
        assert_eq!(lifetime("7d").unwrap(), Some(7 * 86400));
        assert_eq!(lifetime("15").unwrap(), Some(15));
        assert_eq!(lifetime("never").unwrap(), None);
        assert!(lifetime("0s").is_err());
        assert!(lifetime("1w").is_err());
        assert!(lifetime("h").is_err());
    }

    #[test]
    fn segments_of_a_signed_token() {
        let key = auth::generate_key().unwrap();
        let claims = Claims {
            root: "room1".into(),
            exp: Some(123),
            ..Claims::default()
        };
        let t = auth::sign_hs256(&key, &claims).unwrap();
        assert_eq!(header(&t).unwrap()["alg"], "HS256");
        assert_eq!(payload(&t).unwrap()["exp"], 123);
        assert!(header("not a token").is_none());
    }
}
