//! The OpenAPI document says what the validators enforce. For every query parameter,
//! header and body field of the operations below, each constraint the document states
//! (bounds, lengths, patterns, enums, formats) is tried at its edge: the values the
//! document allows must not be refused as invalid, and the values just past the edge must
//! be (400 `malformed_request`, 422 `validation_failed` or 400 `idempotency_key_missing`).
//! A constraint the document gains without samples here fails the test by name.

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use sqlx::PgPool;

static DOC: &str = include_str!("../../../openapi.json");

/// The codes that mean "this request is not valid", whatever the field.
const REFUSALS: [&str; 3] = [
    "malformed_request",
    "validation_failed",
    "idempotency_key_missing",
];

/// One value to try and whether the document allows it.
#[derive(Debug)]
struct Case {
    value: Value,
    allowed: bool,
    rule: String,
    /// A JSON type error, which a query string or header cannot carry.
    body_only: bool,
}

fn allowed(value: Value, rule: impl Into<String>) -> Case {
    Case {
        value,
        allowed: true,
        rule: rule.into(),
        body_only: false,
    }
}

fn refused(value: Value, rule: impl Into<String>) -> Case {
    Case {
        value,
        allowed: false,
        rule: rule.into(),
        body_only: false,
    }
}

fn wrong_type(value: Value, rule: &str) -> Case {
    Case {
        body_only: true,
        ..refused(value, rule)
    }
}

/// Follows `$ref`s and merges a one-element `allOf` with its siblings.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> Map<String, Value> {
    let mut out = Map::new();
    let mut merge = |s: &Value| {
        for (k, v) in s.as_object().into_iter().flatten() {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
    };
    merge(schema);
    if let Some(r) = schema["$ref"].as_str() {
        merge(&Value::Object(resolve(doc, pointer(doc, r))));
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        merge(&Value::Object(resolve(doc, part)));
    }
    out.remove("$ref");
    out.remove("allOf");
    out
}

fn pointer<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let at = doc.pointer(reference.trim_start_matches('#'));
    at.unwrap_or_else(|| panic!("{reference} is not in the document"))
}

/// Samples for each pattern the document uses: one it matches, one it does not.
fn pattern_samples(pattern: &str) -> (&'static str, &'static str) {
    match pattern {
        r"^[A-Z]{3}$" => ("EUR", "eur"),
        r"^[\x21-\x7E]+$" => ("key-~!09", "key with spaces"),
        r"^[^\x00-\x1F\x7F-\x9F]*$" => ("Caf\u{e9} 42 \u{2014} ok", "line\u{1}break"),
        other => panic!("the document uses the pattern {other:?}: add samples for it here"),
    }
}

/// Every value worth trying for a field, from what its schema states.
fn cases(s: &Map<String, Value>) -> Vec<Case> {
    let mut v = Vec::new();
    let int = |k: &str| s.get(k).and_then(Value::as_i64);
    if s.get("nullable").and_then(Value::as_bool) == Some(true) {
        v.push(allowed(Value::Null, "nullable"));
    }
    match s.get("type").and_then(Value::as_str) {
        Some("integer") => {
            if let Some(min) = int("minimum") {
                v.push(allowed(json!(min), format!("minimum {min}")));
                v.push(refused(json!(min - 1), format!("minimum {min}")));
            }
            if let Some(max) = int("maximum") {
                v.push(allowed(json!(max), format!("maximum {max}")));
                v.push(refused(json!(max + 1), format!("maximum {max}")));
            }
            v.push(refused(json!(1.5), "integer"));
            v.push(wrong_type(json!("7"), "integer"));
        }
        Some("string") => {
            if let Some(values) = s.get("enum").and_then(Value::as_array) {
                v.extend(values.iter().map(|e| allowed(e.clone(), "enum")));
                v.push(refused(json!("not-a-member"), "enum"));
            }
            match s.get("format").and_then(Value::as_str) {
                Some("uuid") => {
                    let id = uuid::Uuid::new_v4().to_string();
                    v.push(allowed(json!(id), "format uuid"));
                    v.push(refused(json!("not-a-uuid"), "format uuid"));
                }
                Some("date-time") => {
                    v.push(allowed(json!("2024-11-23T12:00:00Z"), "format date-time"));
                    v.push(allowed(
                        json!("2024-11-23T13:00:00+01:00"),
                        "format date-time",
                    ));
                    v.push(refused(json!("yesterday"), "format date-time"));
                }
                _ => {}
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                let (good, bad) = pattern_samples(p);
                v.push(allowed(json!(good), format!("pattern {p}")));
                v.push(refused(json!(bad), format!("pattern {p}")));
            }
            if let Some(min) = int("minLength").filter(|m| *m > 0) {
                let min = min as usize;
                v.push(allowed(json!("a".repeat(min)), format!("minLength {min}")));
                v.push(refused(
                    json!("a".repeat(min - 1)),
                    format!("minLength {min}"),
                ));
            }
            if let Some(max) = int("maxLength") {
                let max = max as usize;
                v.push(allowed(json!("a".repeat(max)), format!("maxLength {max}")));
                v.push(refused(
                    json!("a".repeat(max + 1)),
                    format!("maxLength {max}"),
                ));
            }
            v.push(wrong_type(json!(12), "string"));
        }
        _ => {}
    }
    v
}

/// A string for a query parameter or header.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One operation and a request to it that the server accepts as valid.
struct Operation {
    method: Method,
    /// Path as documented, e.g. `/v1/wallets/{id}/deposits`.
    template: &'static str,
    path: String,
    token: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
}

struct Answer {
    status: StatusCode,
    code: Option<String>,
    detail: String,
}

impl Operation {
    async fn send(
        &self,
        app: &TestApp,
        query: &[(String, String)],
        body: Option<&Value>,
        key: Option<String>,
    ) -> Answer {
        let url = format!("{}{}", app.url, self.path);
        let mut req = app
            .http
            .request(self.method.clone(), url)
            .bearer_auth(&self.token)
            .query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let r = req.send().await.expect("request sent");
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            code: body["code"].as_str().map(str::to_owned),
            detail: body["detail"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// The documented fields of this operation: (where, name, schema).
    fn fields(&self, doc: &Value) -> Vec<(&'static str, String, Map<String, Value>)> {
        let op = &doc["paths"][self.template][self.method.as_str().to_lowercase()];
        assert!(
            op.is_object(),
            "{} {} is not documented",
            self.method,
            self.template
        );
        let mut out = Vec::new();
        for p in op["parameters"].as_array().into_iter().flatten() {
            let p = resolve(doc, p);
            let schema = resolve(doc, &p["schema"]);
            match p["in"].as_str() {
                Some("query") => out.push(("query", text(&p["name"]), schema)),
                Some("header") => out.push(("header", text(&p["name"]), schema)),
                _ => {}
            }
        }
        let body = &op["requestBody"]["content"]["application/json"]["schema"];
        let body = resolve(doc, body);
        for (name, schema) in body
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            out.push(("body", name.clone(), resolve(doc, schema)));
        }
        out
    }
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn every_documented_constraint_is_what_the_validators_enforce(pool: PgPool) {
    let doc: Value = serde_json::from_str(DOC).expect("openapi.json parses");
    let app = spawn(pool.clone(), Opts::default()).await;
    let owner = "contract-owner";
    let wallet = app.create_wallet(owner, "EUR").await;
    app.deposit(&wallet, 1_000_000, "EUR").await;
    // A succeeded payment to refund (finalized through the store: no pipeline here).
    let (_, paid) = app.pay_id(owner, &wallet, 500_000, "m-1").await;
    wallet_service::store::payments::finalize(
        &mut pool.acquire().await.unwrap(),
        shared::ids::EventId::new(),
        paid.parse().unwrap(),
        shared::status::Outcome::Succeeded,
        None,
        None,
    )
    .await
    .unwrap();
    let operations = [
        Operation {
            method: Method::POST,
            template: "/v1/payments/{id}/refunds",
            path: format!("/v1/payments/{paid}/refunds"),
            token: admin_token(),
            query: vec![],
            body: Some(json!({"amount": 100, "reason": "returned"})),
        },
        Operation {
            method: Method::POST,
            template: "/v1/wallets",
            path: "/v1/wallets".into(),
            token: admin_token(),
            query: vec![],
            body: Some(json!({"currency": "EUR", "owner_id": "contract-other"})),
        },
        Operation {
            method: Method::POST,
            template: "/v1/wallets/{id}/deposits",
            path: format!("/v1/wallets/{wallet}/deposits"),
            token: admin_token(),
            query: vec![],
            body: Some(json!({"amount": 100, "currency": "EUR", "reference": "r-1"})),
        },
        Operation {
            method: Method::POST,
            template: "/v1/payments",
            path: "/v1/payments".into(),
            token: token(owner),
            query: vec![],
            body: Some(json!({
                "wallet_id": wallet,
                "amount": 100,
                "currency": "EUR",
                "merchant_id": "m-1",
                "description": "d",
            })),
        },
        Operation {
            method: Method::GET,
            template: "/v1/payments",
            path: "/v1/payments".into(),
            token: token(owner),
            query: vec![("wallet_id".into(), wallet.clone())],
            body: None,
        },
        Operation {
            method: Method::GET,
            template: "/v1/wallets/{id}/transactions",
            path: format!("/v1/wallets/{wallet}/transactions"),
            token: token(owner),
            query: vec![],
            body: None,
        },
        Operation {
            method: Method::GET,
            template: "/v1/wallets/{id}/summary",
            path: format!("/v1/wallets/{wallet}/summary"),
            token: token(owner),
            // `to` must follow `from`, which otherwise defaults to the wallet's creation (now).
            query: vec![("from".into(), "2024-01-01T00:00:00Z".into())],
            body: None,
        },
    ];
    let mut tried = 0;
    let mut wrong = Vec::new();
    for op in &operations {
        // The base request itself is valid.
        let key = || Some(uuid::Uuid::new_v4().to_string());
        let base = op.send(&app, &op.query, op.body.as_ref(), key()).await;
        assert!(
            base.status.is_success(),
            "{} {}: the base request answered {} {:?} {}",
            op.method,
            op.template,
            base.status,
            base.code,
            base.detail
        );
        for (place, name, schema) in op.fields(&doc) {
            for case in cases(&schema) {
                // Query and header values travel as text: no JSON type errors there.
                if place != "body" && case.body_only {
                    continue;
                }
                let mut query = op.query.clone();
                let mut body = op.body.clone();
                let mut k = key();
                match place {
                    "query" => {
                        query.retain(|(n, _)| *n != name);
                        query.push((name.clone(), text(&case.value)));
                    }
                    "header" => k = Some(text(&case.value)),
                    _ => {
                        body.as_mut().unwrap()[&name] = case.value.clone();
                    }
                }
                let got = op.send(&app, &query, body.as_ref(), k).await;
                tried += 1;
                let refused_as_invalid = matches!(got.status.as_u16(), 400 | 422)
                    && got.code.as_deref().is_some_and(|c| REFUSALS.contains(&c));
                if got.status.is_server_error() || refused_as_invalid == case.allowed {
                    wrong.push(format!(
                        "{} {} {place} {name} = {} ({}, documented as {}): got {} {:?} {}",
                        op.method,
                        op.template,
                        text(&case.value).chars().take(40).collect::<String>(),
                        case.rule,
                        if case.allowed { "allowed" } else { "refused" },
                        got.status,
                        got.code,
                        got.detail
                    ));
                }
            }
        }
    }
    assert!(
        tried > 100,
        "only {tried} cases: the document lost its constraints?"
    );
    assert!(
        wrong.is_empty(),
        "{} of {tried} cases disagree with the document:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
