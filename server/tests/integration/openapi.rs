//! The OpenAPI document: valid OpenAPI 3.1, served at `/api/v1/openapi.json` without a token,
//! and listing every route the router has, with the methods it answers.
//!
//! The router's paths are read from its `Debug` output (axum prints its path table); each
//! path's methods are found by asking a running master with every method and seeing which are
//! not answered "method not allowed" or "route not found". A route added to the router without
//! an annotated handler in `ApiDoc` fails this test.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Backend, InProcessServer};
use grid_server::api::openapi::ApiDoc;
use serde_json::Value;
use utoipa::OpenApi;

/// Routes that are deliberately not in the document: `/api` exists only to answer the API's
/// JSON 404 for that exact path.
const UNDOCUMENTED: &[&str] = &["/api"];

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH"];

/// The paths of the router, from its `Debug` output (`RouteId(n): "/path"` entries).
fn router_paths() -> BTreeSet<String> {
    let debug = format!("{:?}", grid_server::routes());
    let mut paths = BTreeSet::new();
    let mut rest = debug.as_str();
    while let Some(start) = rest.find("RouteId(") {
        rest = &rest[start + "RouteId(".len()..];
        let Some(close) = rest.find(')') else { break };
        let after = &rest[close + 1..];
        if let Some(quoted) = after.strip_prefix(": \"") {
            let end = quoted.find('"').unwrap();
            paths.insert(quoted[..end].to_owned());
        }
        rest = after;
    }
    assert!(
        paths.len() > 10,
        "could not read the router's paths from its Debug output (did axum change it?): {debug}"
    );
    paths
        .into_iter()
        // axum's own entries for nested routers and fallbacks.
        .filter(|path| !path.contains("__private__axum"))
        .collect()
}

/// A concrete URL path for a route template.
fn concrete(path: &str) -> String {
    path.replace("{id}", "1").replace("{file}", "index.html")
}

/// The methods a running master answers on a route (no token: handlers answer 401 or the
/// like, which still shows the route is there).
async fn methods_answered(base: &str, path: &str) -> BTreeSet<String> {
    let client = reqwest::Client::new();
    let mut methods = BTreeSet::new();
    for method in METHODS {
        let response = client
            .request(method.parse().unwrap(), format!("{base}{}", concrete(path)))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let route_missing = if status == 404 {
            // A handler's own 404 (no such job) names what was not found; the router's says
            // "route not found".
            let body: Value = response.json().await.unwrap_or(Value::Null);
            body["error"]["message"] == "route not found"
        } else {
            // Dropping the response closes streams (the dashboard feed answers 200 at once).
            false
        };
        if status != 405 && !route_missing {
            methods.insert((*method).to_owned());
        }
    }
    methods
}

fn document() -> Value {
    serde_json::from_str(&ApiDoc::openapi().to_json().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_route_of_the_router() {
    let server = InProcessServer::start(Backend::Sqlite).await;
    let doc = document();
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.to_uppercase().as_str()) {
                documented
                    .entry(path.clone())
                    .or_default()
                    .insert(method.to_uppercase());
            }
        }
    }

    let paths = router_paths();
    let mut routed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &paths {
        if UNDOCUMENTED.contains(&path.as_str()) {
            continue;
        }
        let methods = methods_answered(&server.http(), path).await;
        if methods.is_empty() {
            // axum keeps the prefix of a nested router in its table; it is not a route.
            assert!(
                paths
                    .iter()
                    .any(|other| other.starts_with(&format!("{path}/"))),
                "{path} answers no method"
            );
            continue;
        }
        routed.insert(path.clone(), methods);
    }
    for (path, methods) in &routed {
        assert_eq!(
            documented.get(path),
            Some(methods),
            "the router answers {methods:?} on {path}; the OpenAPI document lists {:?}",
            documented.get(path)
        );
    }
    for path in documented.keys() {
        assert!(
            routed.contains_key(path),
            "the OpenAPI document lists {path}, which the router does not have"
        );
    }
    // The routes this issue added are among them.
    for path in [
        "/api/v1/jobs/{id}/events",
        "/api/v1/jobs/{id}/image.png",
        "/api/v1/jobs/{id}/chunks",
        "/api/v1/volunteers",
        "/api/v1/volunteers/me",
        "/api/v1/dashboard/events",
        "/api/v1/openapi.json",
        "/dashboard",
    ] {
        assert!(routed.contains_key(path), "{path} is not routed");
    }
    server.stop().await;
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "$ref" {
                    out.push(inner.as_str().unwrap().to_owned());
                } else {
                    refs(inner, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

#[test]
fn the_document_is_valid_openapi() {
    let text = ApiDoc::openapi().to_pretty_json().unwrap();
    // An independent implementation of OpenAPI 3.1 parses it.
    let spec = oas3::from_json(&text).unwrap_or_else(|error| panic!("not OpenAPI 3.1: {error}"));
    assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);
    assert!(!spec.info.title.is_empty() && !spec.info.version.is_empty());

    let doc = document();
    // Every reference resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for reference in all {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external reference {reference}"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }
    // Operations: unique ids, responses, declared path parameters, known security schemes.
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            assert!(
                !operation["responses"].as_object().unwrap().is_empty(),
                "{method} {path} has no responses"
            );
            let declared: BTreeSet<&str> = operation["parameters"]
                .as_array()
                .map(|parameters| {
                    parameters
                        .iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(declared, templated, "{method} {path}: path parameters");
            for requirement in operation["security"].as_array().into_iter().flatten() {
                for scheme in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(scheme), "{method} {path}: {scheme}");
                }
            }
            assert!(
                operation["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{method} {path} has no tag"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_without_a_token() {
    let server = InProcessServer::start(Backend::Sqlite).await;
    let response = reqwest::get(format!("{}/api/v1/openapi.json", server.http()))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served: Value = response.json().await.unwrap();
    assert_eq!(served, document());
    assert_eq!(served["info"]["title"], "grid");
    server.stop().await;
}
