//! The OpenAPI 3.1 document of the REST API, served as JSON at `GET /api`.
//!
//! The router and the document come from one place: every route is registered with
//! `.routes(routes!(handler, ...))` (utoipa-axum), which takes the path and the method from
//! the handler's `#[utoipa::path(...)]`, so a route cannot be served without being described.
//! [`finish`] then adds what every operation shares, from the code that enforces it: the bearer
//! requirement (from `auth::classify`, the same function the auth middleware asks) and the
//! JSON error answers. docs/api.md says how to add a route.

use std::sync::Arc;

use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};

/// The security scheme's name in the document.
pub(crate) const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard",
        description = "The control plane of a Switchyard node: sessions, WHIP/WHEP signaling, \
            health and metrics, the cluster's node registry and room placement, and relays between nodes. \
            Every error is `{\"error\": \"...\"}` with a 4xx or 5xx status. \
            Reference: docs/api.md, docs/webrtc.md, docs/cluster.md."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "node", description = "This node: health, metrics, the API document"),
        (name = "sessions", description = "RTP sessions with static SRTP keys"),
        (name = "webrtc", description = "WHIP (publish) and WHEP (watch) signaling, RFC 9725"),
        (name = "cluster", description = "Node registry, room placement and discovery"),
        (name = "forwards", description = "Copies of published streams to plain-RTP destinations (recorders, transcoders)"),
        (name = "relays", description = "Streams relayed between nodes (per-link keys, hop lists) and the target's ingress"),
    )
)]
pub(crate) struct ApiDoc;

/// The body of every 4xx and 5xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong, for a human.
    #[schema(example = "no such resource")]
    pub error: String,
}

/// The document as served: [`ApiDoc`] plus the routes, completed by [`finish`].
#[derive(Clone, Debug)]
pub(crate) struct Served(pub Arc<String>);

/// `GET /api`: this document.
#[utoipa::path(
    get,
    path = "/api",
    tag = "node",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API",
        content_type = "application/json", body = Object))
)]
pub(crate) async fn document(Extension(doc): Extension<Served>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_owned(),
    )
        .into_response()
}

/// Complete the document of the finished router: the bearer scheme, each operation's
/// security requirement as the auth middleware applies it, and the error answers.
pub(crate) fn finish(doc: &mut Document) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "An HS256 or ES256 JWT (`switchyard token`), needed only when `[auth]` is \
                     configured. Claims: `root`, `pub`, `sub` (media paths), `cluster` (node \
                     registry and placement); paths under `[auth] public` need none.",
                ))
                .build(),
        ),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
            (Method::OPTIONS, &mut item.options),
            (Method::HEAD, &mut item.head),
            (Method::PATCH, &mut item.patch),
            (Method::TRACE, &mut item.trace),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                complete(op, super::auth::needs_token(&method, path));
            }
        }
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

fn complete(op: &mut Operation, token: bool) {
    let responses = &mut op.responses.responses;
    if token {
        op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
        responses
            .entry("401".into())
            .or_insert_with(|| error_response("No token, or a token that does not verify"));
        responses
            .entry("403".into())
            .or_insert_with(|| error_response("The token's claims do not cover this request"));
    } else {
        // Public: an empty requirement overrides none and states it.
        op.security = Some(vec![SecurityRequirement::default()]);
    }
    responses
        .entry("default".into())
        .or_insert_with(|| error_response("Any other error: a 4xx or 5xx status with a JSON body"));
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every `.rs` file under `dir`.
    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// A route registered with axum's own route or nest methods would be served without being
    /// in /api: the control plane registers routes only through `.routes(routes!(handler))`.
    /// A new route that fails here needs a `#[utoipa::path]` on its handler and a `routes!`
    /// entry (docs/api.md, "Adding a route"). Test modules (from `#[cfg(test)]` on, the end
    /// of a file by convention) may build small routers of their own.
    #[test]
    fn no_route_bypasses_the_document() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        assert!(files.len() > 10, "found the sources: {files:?}");
        // Built from pieces so this file does not match itself.
        let banned: Vec<String> = ["route(", "route_service(", "nest(", "nest_service("]
            .iter()
            .map(|m| [".", m].concat())
            .collect();
        let mut found = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).expect("read source");
            let lines = text
                .lines()
                .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"));
            for (n, line) in lines.enumerate() {
                if banned.iter().any(|b| line.contains(b.as_str())) {
                    found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
        assert!(
            found.is_empty(),
            "routes outside the OpenAPI document:\n{}",
            found.join("\n")
        );
    }
}
