//! `GET /api` on a real node: a well-formed OpenAPI 3 document that describes exactly what the
//! router serves. The router registers every route from its handler's `#[utoipa::path]`, so
//! the document is the route list; this test checks that against the running node: each
//! documented (path, method) is served (not the 404/405 fallbacks), and each method the
//! document leaves out of a path is refused with 405. (A route added around the document, with
//! a plain `.route(`, is caught by the controlplane unit test `openapi::tests`.)

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{http, Node};
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(s) = x.as_str() {
                        out.push(s);
                    }
                }
                refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// The `{name}` segments of a path template.
fn template_params(path: &str) -> BTreeSet<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// Check the document's shape against OpenAPI 3: version, info, paths, operations with
/// responses that have descriptions, declared path parameters, resolvable `$ref`s, security
/// requirements naming declared schemes, unique operation ids. Returns path → methods.
fn validate(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let version = doc["openapi"].as_str().expect("openapi: a version string");
    assert!(version.starts_with("3."), "OpenAPI 3, got {version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("components.securitySchemes");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    let schemas = doc["components"]["schemas"]
        .as_object()
        .expect("components.schemas");
    assert!(
        schemas["ErrorBody"]["required"]
            .as_array()
            .is_some_and(|r| r.contains(&Value::from("error"))),
        "ErrorBody: {{\"error\": string}}"
    );
    let mut all = Vec::new();
    refs(doc, &mut all);
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("$ref outside components.schemas: {r}"));
        assert!(schemas.contains_key(name), "$ref to a missing schema: {r}");
    }

    let paths = doc["paths"].as_object().expect("paths");
    let mut out = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for (path, item) in paths {
        assert!(path.starts_with('/'), "path {path}");
        let item = item.as_object().expect("path item");
        for (method, op) in item {
            assert!(
                METHODS.contains(&method.as_str())
                    || ["head", "options", "trace"].contains(&method.as_str()),
                "{path}: unexpected key {method}"
            );
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            for (code, r) in responses {
                assert!(
                    code == "default" || code.parse::<u16>().is_ok_and(|c| (100..600).contains(&c)),
                    "{method} {path}: response key {code}"
                );
                assert!(
                    r["description"].is_string(),
                    "{method} {path} {code}: description"
                );
            }
            // Errors are documented as JSON {"error": ...}.
            assert_eq!(
                responses["default"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path}"
            );
            // Every template parameter is declared, in the path, required.
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .inspect(|p| assert_eq!(p["required"], true, "{method} {path}: {p}"))
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(
                declared,
                template_params(path),
                "{method} {path}: path parameters"
            );
            let security = op["security"].as_array().expect("security stated");
            for req in security {
                for name in req.as_object().expect("requirement").keys() {
                    assert!(schemes.contains_key(name), "{method} {path}: scheme {name}");
                }
            }
            if let Some(id) = op["operationId"].as_str() {
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            }
            out.entry(path.clone())
                .or_insert_with(BTreeSet::new)
                .insert(method.clone());
        }
    }
    out
}

#[test]
fn api_document_describes_exactly_the_served_routes() {
    let node = Node::start(1);
    let r = node.get("/api");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{}",
        r.headers
    );
    let doc = r.json();
    let routes = validate(&doc);

    // The routes every node has had since issue #4: the document must not lose any.
    for (path, method) in [
        ("/", "get"),
        ("/api", "get"),
        ("/health", "get"),
        ("/metrics", "get"),
        ("/v1/sessions", "get"),
        ("/v1/sessions", "post"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}", "delete"),
        ("/v1/streams", "get"),
        ("/whip/{room}/{stream}", "post"),
        ("/whip/{room}/{stream}/{id}", "patch"),
        ("/whip/{room}/{stream}/{id}", "delete"),
        ("/whep/{room}/{stream}", "post"),
        ("/whep/{room}/{stream}/{id}", "patch"),
        ("/whep/{room}/{stream}/{id}", "delete"),
        ("/v1/nodes", "get"),
        ("/v1/nodes/register", "post"),
        ("/v1/nodes/{id}/drain", "post"),
        ("/v1/nodes/{id}/drain", "delete"),
        ("/v1/nodes/{id}/heartbeat", "post"),
        ("/v1/rooms", "get"),
        ("/v1/rooms", "post"),
        ("/v1/rooms/{room}", "get"),
        ("/v1/rooms/{room}", "post"),
        ("/v1/rooms/{room}", "delete"),
        ("/v1/resolve", "get"),
        // Relays (issue #5).
        ("/v1/streams/{room}/{stream}/relays", "get"),
        ("/v1/streams/{room}/{stream}/relays", "post"),
        ("/v1/streams/{room}/{stream}/relays/{targetNode}", "delete"),
        ("/v1/relays", "get"),
        ("/v1/relays/ingress", "post"),
        ("/v1/relays/ingress/{relayId}", "delete"),
    ] {
        assert!(
            routes.get(path).is_some_and(|m| m.contains(method)),
            "{method} {path} is not in /api"
        );
    }
    // Public documentation and health need no token; the rest states the bearer scheme.
    for public in ["/api", "/health", "/metrics"] {
        assert_eq!(
            doc["paths"][public]["get"]["security"],
            serde_json::json!([{}])
        );
    }
    assert_eq!(
        doc["paths"]["/v1/nodes"]["get"]["security"],
        serde_json::json!([{ "bearer": [] }])
    );
    // Relays need a cluster token: never public.
    assert_eq!(
        doc["paths"]["/v1/relays/ingress"]["post"]["security"],
        serde_json::json!([{ "bearer": [] }])
    );

    // The document against the router: each documented method is routed, each other method
    // on a documented path is refused by the router itself.
    for (path, methods) in &routes {
        // Template parameters filled with values no resource has: handlers then answer
        // their own 4xx, which is not the router's fallback.
        let concrete: String = path
            .split('/')
            .map(|s| if s.starts_with('{') { "1" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in METHODS {
            let upper = method.to_ascii_uppercase();
            let r = http(&node.http_addr, &upper, &concrete, Some(b"")).expect("request");
            let fallback =
                r.status == 405 || (r.status == 404 && r.body.contains("no such resource"));
            if methods.contains(method) {
                assert!(
                    !fallback,
                    "{upper} {path} is documented but not routed: {} {}",
                    r.status, r.body
                );
            } else {
                assert_eq!(
                    r.status, 405,
                    "{upper} {path} is routed but not documented: {}",
                    r.body
                );
                assert!(r.json()["error"].is_string(), "405 as JSON: {}", r.body);
            }
        }
    }
}
