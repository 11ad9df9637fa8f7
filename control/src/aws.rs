//! The AWS source: Route 53's latency records and health checks give the
//! regions, their weights and health; the Aurora global cluster gives the
//! writer region and whether a failover runs; CloudWatch gives each
//! secondary's replication lag.
//!
//! Credentials come from the default chain (environment, profile, IRSA on
//! EKS, instance role). Calls are retried by the SDK with backoff; a read
//! that still fails fails whole, so the table in force stays.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use aws_smithy_http_client::tls;
use edgeroute_config::{AwsSourceConfig, RegionView, TopologyView};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Route 53 counts a check healthy while more than 18% of its checkers
/// report success.
const HEALTHY_SHARE: f64 = 0.18;

/// A failed call, named by its API for the metrics.
#[derive(Debug, thiserror::Error)]
#[error("{api}: {message}")]
pub struct AwsError {
    pub api: &'static str,
    pub message: String,
}

fn fail<E: std::error::Error>(
    api: &'static str,
) -> impl FnOnce(aws_sdk_rds::error::SdkError<E>) -> AwsError
where
    aws_sdk_rds::error::SdkError<E>: std::error::Error,
{
    move |e| AwsError {
        api,
        message: aws_sdk_rds::error::DisplayErrorContext(&e).to_string(),
    }
}

pub struct AwsSource {
    cfg: AwsSourceConfig,
    sdk: SdkConfig,
    route53: aws_sdk_route53::Client,
    rds: aws_sdk_rds::Client,
}

impl AwsSource {
    pub async fn new(cfg: &AwsSourceConfig) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(cfg.global_cluster_region.clone()));
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        // Route 53 and its CloudWatch metrics live in us-east-1.
        let route53 = aws_sdk_route53::Client::from_conf(
            aws_sdk_route53::config::Builder::from(&sdk)
                .region(Region::new("us-east-1"))
                .build(),
        );
        let rds = aws_sdk_rds::Client::new(&sdk);
        AwsSource {
            cfg: cfg.clone(),
            sdk,
            route53,
            rds,
        }
    }

    fn cloudwatch(&self, region: &str) -> aws_sdk_cloudwatch::Client {
        aws_sdk_cloudwatch::Client::from_conf(
            aws_sdk_cloudwatch::config::Builder::from(&self.sdk)
                .region(Region::new(region.to_owned()))
                .build(),
        )
    }

    /// Reads every API once and assembles the view.
    pub async fn read(&self) -> Result<TopologyView, AwsError> {
        let records = self.latency_records().await?;
        let mut regions = Vec::with_capacity(records.len());
        for r in &records {
            let healthy = match &r.health_check_id {
                None => None,
                Some(id) => Some(self.check_healthy(id).await?),
            };
            regions.push(RegionView {
                name: r.region.clone(),
                weight: r.weight,
                healthy,
                replication_lag_ms: None,
            });
        }
        let (writer_region, failover_in_progress, secondaries) = self.global_cluster().await?;
        if !regions.iter().any(|r| r.name == writer_region) {
            return Err(AwsError {
                api: "DescribeGlobalClusters",
                message: format!(
                    "the writer is in {writer_region}, which has no latency record named {} in zone {}",
                    self.cfg.record_name, self.cfg.hosted_zone_id
                ),
            });
        }
        if self.cfg.lag_metric {
            for (region, cluster_id) in secondaries {
                let lag = self
                    .latest(
                        &region,
                        "AWS/RDS",
                        "AuroraGlobalDBReplicationLag",
                        "DBClusterIdentifier",
                        &cluster_id,
                        Statistic::Average,
                    )
                    .await?;
                if let Some(r) = regions.iter_mut().find(|r| r.name == region) {
                    r.replication_lag_ms = lag.map(|v| v.max(0.0).round() as u64);
                }
            }
        }
        Ok(TopologyView {
            primary_region: Some(writer_region),
            failover_in_progress,
            regions,
        })
    }

    async fn latency_records(&self) -> Result<Vec<Record>, AwsError> {
        let wanted = format!("{}.", self.cfg.record_name);
        let mut found: BTreeMap<String, Record> = BTreeMap::new();
        let mut start: Option<(String, Option<String>)> = Some((wanted.clone(), None));
        // Bounded: a zone is paged at most this many times per read.
        for _ in 0..100 {
            let Some((name, identifier)) = start.take() else {
                break;
            };
            let out = self
                .route53
                .list_resource_record_sets()
                .hosted_zone_id(&self.cfg.hosted_zone_id)
                .start_record_name(&name)
                .set_start_record_identifier(identifier.clone())
                .send()
                .await
                .map_err(fail("ListResourceRecordSets"))?;
            let mut past = false;
            for rrset in out.resource_record_sets() {
                if !rrset.name().eq_ignore_ascii_case(&wanted) {
                    past |= !found.is_empty();
                    continue;
                }
                let region = rrset
                    .region()
                    .map(|r| r.as_str().to_owned())
                    .or_else(|| rrset.set_identifier().map(str::to_owned));
                let Some(region) = region else { continue };
                found.insert(
                    region.clone(),
                    Record {
                        region,
                        weight: rrset.weight().map(|w| w.clamp(0, 255) as u32),
                        health_check_id: rrset.health_check_id().map(str::to_owned),
                    },
                );
            }
            if past || !out.is_truncated() {
                break;
            }
            let next = out.next_record_name().map(|n| {
                (
                    n.to_owned(),
                    out.next_record_identifier().map(str::to_owned),
                )
            });
            // Stop if paging does not advance.
            if next.as_ref() == Some(&(name, identifier)) {
                break;
            }
            start = next;
        }
        if found.is_empty() {
            return Err(AwsError {
                api: "ListResourceRecordSets",
                message: format!(
                    "no latency records named {} in hosted zone {}",
                    self.cfg.record_name, self.cfg.hosted_zone_id
                ),
            });
        }
        Ok(found.into_values().collect())
    }

    async fn check_healthy(&self, id: &str) -> Result<bool, AwsError> {
        let out = self
            .route53
            .get_health_check_status()
            .health_check_id(id)
            .send()
            .await
            .map_err(fail("GetHealthCheckStatus"))?;
        let observations = out.health_check_observations();
        let ok = observations
            .iter()
            .filter(|o| {
                o.status_report()
                    .and_then(|r| r.status())
                    .is_some_and(|s| s.starts_with("Success"))
            })
            .count();
        let by_checkers =
            observations.is_empty() || ok as f64 / observations.len() as f64 > HEALTHY_SHARE;
        let by_metric = if self.cfg.health_metric {
            self.latest(
                "us-east-1",
                "AWS/Route53",
                "HealthCheckStatus",
                "HealthCheckId",
                id,
                Statistic::Minimum,
            )
            .await?
            .is_none_or(|v| v >= 1.0)
        } else {
            true
        };
        Ok(by_checkers && by_metric)
    }

    /// The writer's region, whether a failover runs, and each secondary's
    /// (region, cluster id).
    async fn global_cluster(&self) -> Result<(String, bool, Vec<(String, String)>), AwsError> {
        let out = self
            .rds
            .describe_global_clusters()
            .global_cluster_identifier(&self.cfg.global_cluster_id)
            .send()
            .await
            .map_err(fail("DescribeGlobalClusters"))?;
        let id = self.cfg.global_cluster_id.to_ascii_lowercase();
        let gc = out
            .global_clusters()
            .iter()
            .find(|g| {
                g.global_cluster_identifier()
                    .is_some_and(|i| i.eq_ignore_ascii_case(&id))
            })
            .ok_or_else(|| AwsError {
                api: "DescribeGlobalClusters",
                message: format!(
                    "no global cluster {} in {}",
                    self.cfg.global_cluster_id, self.cfg.global_cluster_region
                ),
            })?;
        let mut writer = None;
        let mut secondaries = Vec::new();
        for m in gc.global_cluster_members() {
            let Some((region, cluster)) = m.db_cluster_arn().and_then(parse_arn) else {
                continue;
            };
            if m.is_writer() == Some(true) {
                writer = Some(region);
            } else {
                secondaries.push((region, cluster));
            }
        }
        let failover = gc.failover_state().is_some_and(|f| f.status().is_some());
        let writer = writer.ok_or_else(|| AwsError {
            api: "DescribeGlobalClusters",
            message: format!(
                "global cluster {} has no writer member",
                self.cfg.global_cluster_id
            ),
        })?;
        Ok((writer, failover, secondaries))
    }

    /// The most recent datapoint of a metric in the last ten minutes.
    async fn latest(
        &self,
        region: &str,
        namespace: &str,
        metric: &str,
        dimension: &str,
        value: &str,
        stat: Statistic,
    ) -> Result<Option<f64>, AwsError> {
        let now = SystemTime::now();
        let out = self
            .cloudwatch(region)
            .get_metric_statistics()
            .namespace(namespace)
            .metric_name(metric)
            .dimensions(Dimension::builder().name(dimension).value(value).build())
            .start_time((now - Duration::from_secs(600)).into())
            .end_time((now + Duration::from_secs(60)).into())
            .period(60)
            .statistics(stat.clone())
            .send()
            .await
            .map_err(fail("GetMetricStatistics"))?;
        let latest = out
            .datapoints()
            .iter()
            .filter_map(|d| {
                let v = match stat {
                    Statistic::Minimum => d.minimum(),
                    Statistic::Maximum => d.maximum(),
                    _ => d.average(),
                }?;
                Some((d.timestamp()?.as_secs_f64(), v))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        Ok(latest.map(|(_, v)| v))
    }
}

struct Record {
    region: String,
    weight: Option<u32>,
    health_check_id: Option<String>,
}

/// `arn:aws:rds:REGION:ACCOUNT:cluster:NAME` → (region, name).
fn parse_arn(arn: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = arn.split(':').collect();
    (parts.len() >= 7 && parts[2] == "rds").then(|| (parts[3].to_owned(), parts[6].to_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_arns_name_their_region() {
        assert_eq!(
            super::parse_arn("arn:aws:rds:eu-west-1:123456789012:cluster:secondary-eu"),
            Some(("eu-west-1".into(), "secondary-eu".into()))
        );
        assert_eq!(super::parse_arn("not-an-arn"), None);
    }
}
