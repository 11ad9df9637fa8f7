//! Announces state changes to an SNS topic and/or a webhook, as one JSON
//! document each: what happened, when, and the operation's timeline so far.
//! A failed notification is retried, then logged and counted; it never stops
//! the action it reports on.

use crate::aws::AwsRequests;
use crate::history::Operation;
use crate::metrics::ControlMetrics;
use edgeroute_config::NotifyConfig;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Attempts per notification and channel.
const ATTEMPTS: u32 = 3;

/// One state change.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique per event, the same in every try: a receiver that got an
    /// event twice (a retry after a timeout it had answered late) keeps one.
    pub id: String,
    /// Such as `switchover.requested`, `failover.completed`,
    /// `drain.completed`, `table.changed`, `automation.triggered`.
    pub event: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// One line for people.
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

impl Event {
    pub fn new(event: impl Into<String>, summary: impl Into<String>) -> Event {
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            event: event.into(),
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            summary: summary.into(),
            operation: None,
        }
    }

    pub fn with(mut self, operation: &Operation) -> Event {
        self.operation = Some(operation.clone());
        self
    }
}

pub struct Notifier {
    sns: Option<(aws_sdk_sns::Client, String)>,
    webhook: Option<(reqwest::Client, String, Option<String>)>,
    timeout: Duration,
    metrics: Option<Arc<ControlMetrics>>,
}

/// The webhook's bearer token, when a token file is set; the error names
/// the field and never the token.
pub fn webhook_token(cfg: &NotifyConfig) -> anyhow::Result<Option<String>> {
    cfg.webhook_token_file
        .as_deref()
        .map(|path| edgeroute_config::read_secret("notify.webhook_token_file", path))
        .transpose()
        .map_err(anyhow::Error::msg)
}

impl Notifier {
    /// `endpoint_url` sends SNS calls to an emulator instead of AWS.
    pub async fn new(
        cfg: &NotifyConfig,
        endpoint_url: Option<&str>,
        metrics: Option<Arc<ControlMetrics>>,
    ) -> anyhow::Result<Notifier> {
        let sns = match (&cfg.sns_topic_arn, cfg.sns_region()) {
            (Some(arn), Some(region)) => {
                let sdk = crate::aws::sdk_config(endpoint_url, region).await;
                let requests = AwsRequests::of(metrics.as_deref());
                let client = aws_sdk_sns::Client::from_conf(
                    aws_sdk_sns::config::Builder::from(&sdk)
                        .interceptor(requests)
                        .build(),
                );
                Some((client, arn.clone()))
            }
            _ => None,
        };
        let webhook = match &cfg.webhook_url {
            Some(url) => {
                let token = webhook_token(cfg)?;
                let client = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()?;
                Some((client, url.clone(), token))
            }
            None => None,
        };
        Ok(Notifier {
            sns,
            webhook,
            timeout: cfg.timeout,
            metrics,
        })
    }

    pub fn enabled(&self) -> bool {
        self.sns.is_some() || self.webhook.is_some()
    }

    /// Sends `event` to every configured channel; returns what failed.
    pub async fn send(&self, event: &Event) -> Vec<String> {
        let mut failures = Vec::new();
        if !self.enabled() {
            return failures;
        }
        let body = match serde_json::to_string(event) {
            Ok(b) => b,
            Err(e) => return vec![format!("cannot encode the notification: {e}")],
        };
        if let Some((client, arn)) = &self.sns {
            let outcome = self
                .retry(|| async {
                    let subject: String = format!("edgeroute: {}", event.event)
                        .chars()
                        .filter(|c| c.is_ascii_graphic() || *c == ' ')
                        .take(100)
                        .collect();
                    client
                        .publish()
                        .topic_arn(arn)
                        .subject(subject)
                        .message(&body)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| crate::aws::sdk_message(&e))
                })
                .await;
            self.count("sns", &outcome);
            if let Err(e) = outcome {
                failures.push(format!("SNS topic {arn}: {e}"));
            }
        }
        if let Some((client, url, token)) = &self.webhook {
            let outcome = self
                .retry(|| async {
                    let mut req = client
                        .post(url)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(body.clone());
                    if let Some(t) = token {
                        req = req.bearer_auth(t);
                    }
                    match req.send().await {
                        Ok(r) if r.status().is_success() => Ok(()),
                        Ok(r) => Err(format!("answered {}", r.status())),
                        Err(e) => Err(edgeroute_config::error_chain(&e.without_url())),
                    }
                })
                .await;
            self.count("webhook", &outcome);
            if let Err(e) = outcome {
                // Webhook paths often hold a secret: only the host is named.
                let host = reqwest::Url::parse(url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default();
                failures.push(format!(
                    "webhook at {host}: {}",
                    e.replace(url.as_str(), "<webhook_url>")
                ));
            }
        }
        for f in &failures {
            tracing::warn!(event = %event.event, "notification not delivered: {f}");
        }
        failures
    }

    async fn retry<F, Fut>(&self, mut attempt: F) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut pause = Duration::from_millis(200);
        let mut last = String::new();
        for i in 0..ATTEMPTS {
            match tokio::time::timeout(self.timeout, attempt()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("no answer within {:?}", self.timeout),
            }
            if i + 1 < ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        Err(last)
    }

    fn count(&self, channel: &str, outcome: &Result<(), String>) {
        if let Some(m) = &self.metrics {
            let result = if outcome.is_ok() { "sent" } else { "failed" };
            m.notifications.with_label_values(&[channel, result]).inc();
        }
    }
}
