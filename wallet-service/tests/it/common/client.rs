//! What a test asks the service over HTTP, as a client would: plain requests with a token,
//! and the steps most tests take (a wallet, a deposit, a payment, a balance, a list).

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

use super::{admin_token, eventually, token, TestApp};

impl TestApp {
    pub async fn post(&self, path: &str, token: &str, key: Option<&str>, body: &Value) -> Response {
        let mut req = self
            .http
            .post(format!("{}{}", self.url, path))
            .bearer_auth(token)
            .json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await.expect("request sent")
    }

    /// A GET without any `Authorization` header.
    pub async fn get_anonymous(&self, path: &str) -> Response {
        self.http
            .get(format!("{}{}", self.url, path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.http
            .get(format!("{}{}", self.url, path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn create_wallet(&self, owner: &str, currency: &str) -> String {
        let r = self
            .post(
                "/v1/wallets",
                &token(owner),
                None,
                &json!({"currency": currency}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn deposit(&self, wallet: &str, amount: i64, currency: &str) {
        let key = uuid::Uuid::new_v4().to_string();
        let r = self
            .post(
                &format!("/v1/wallets/{wallet}/deposits"),
                &admin_token(),
                Some(&key),
                &json!({"amount": amount, "currency": currency}),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
    }

    pub async fn balance(&self, owner: &str, wallet: &str) -> (i64, i64) {
        let b: Value = self
            .get(&format!("/v1/wallets/{wallet}/balance"), &token(owner))
            .await
            .json()
            .await
            .unwrap();
        (
            b["available"].as_i64().unwrap(),
            b["held"].as_i64().unwrap(),
        )
    }

    /// `GET /v1/payments/{id}` as `owner`.
    pub async fn payment(&self, owner: &str, id: &str) -> Value {
        self.get(&format!("/v1/payments/{id}"), &token(owner))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Waits until the payment leaves `pending`; returns its final status.
    pub async fn final_status(&self, owner: &str, id: &str, deadline: Duration) -> String {
        eventually(&format!("payment {id} final"), deadline, || async {
            let p = self.payment(owner, id).await;
            (p["status"] != "pending").then(|| p["status"].as_str().unwrap_or_default().to_owned())
        })
        .await
    }

    pub async fn pay(&self, owner: &str, wallet: &str, amount: i64, merchant: &str) -> Response {
        let key = uuid::Uuid::new_v4().to_string();
        self.post(
            "/v1/payments",
            &token(owner),
            Some(&key),
            &json!({
                "wallet_id": wallet,
                "amount": amount,
                "currency": "EUR",
                "merchant_id": merchant,
            }),
        )
        .await
    }

    /// Pays as [`TestApp::pay`] and takes the payment's id from the answer, with the status
    /// for the caller to check.
    pub async fn pay_id(
        &self,
        owner: &str,
        wallet: &str,
        amount: i64,
        merchant: &str,
    ) -> (StatusCode, String) {
        let r = self.pay(owner, wallet, amount, merchant).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        let id = body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no payment id in the {status} answer: {body}"))
            .to_owned();
        (status, id)
    }

    /// Every item of a cursor-paginated list: `path` (with its query, without a cursor)
    /// and then each `next_cursor`, in order. With `expect_ok`, every page must answer 200.
    pub async fn all_pages(&self, owner: &str, path: &str, expect_ok: bool) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page_path = match &cursor {
                Some(c) => format!("{path}{sep}cursor={c}"),
                None => path.to_owned(),
            };
            let r = self.get(&page_path, &token(owner)).await;
            if expect_ok {
                assert_eq!(r.status(), StatusCode::OK);
            }
            let page: Value = r.json().await.unwrap();
            out.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }
}
