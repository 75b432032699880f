//! The relay's calls to the Notification service: one alert (`PublishAlert`)
//! or a council's next alerts in one transaction (`PublishAlerts`), each
//! within the publish deadline, failures described without personal data.

use crate::store::PendingAlert;
use cpis_proto::notification::v1::notification_service_client::NotificationServiceClient;
use cpis_proto::notification::v1::PublishAlertsRequest;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

/// Most alerts per `PublishAlerts` call (the Notification service's cap).
pub const MAX_PUBLISH_BATCH: usize = 500;

/// Publishes to the Notification service.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: NotificationServiceClient<Channel>,
    timeout: Duration,
}

impl Publisher {
    /// Calls over `channel`, each taking at most `timeout`.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self { client: NotificationServiceClient::new(channel), timeout }
    }

    /// One `PublishAlert` call.
    pub async fn one(&self, alert: &PendingAlert) -> Result<i64, Failure> {
        let timeout = self.timeout;
        let mut request = tonic::Request::new(alert.request.clone());
        request.set_timeout(timeout);
        cpis_runtime::telemetry::inject_context(&mut request);
        let mut client = self.client.clone();
        match tokio::time::timeout(timeout, client.publish_alert(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner().sequence),
            Ok(Err(status)) => Err(Failure::answered("PublishAlert", status.code())),
            Err(_) => Err(Failure::timed_out("PublishAlert", timeout)),
        }
    }

    /// One `PublishAlerts` call: the alerts' sequences, in order.
    pub async fn batch(&self, alerts: &[PendingAlert]) -> Result<Vec<i64>, Failure> {
        let timeout = self.timeout;
        let mut request =
            tonic::Request::new(PublishAlertsRequest { alerts: alerts.iter().map(|a| a.request.clone()).collect() });
        request.set_timeout(timeout);
        cpis_runtime::telemetry::inject_context(&mut request);
        let mut client = self.client.clone();
        match tokio::time::timeout(timeout, client.publish_alerts(request)).await {
            Ok(Ok(response)) => {
                let results = response.into_inner().results;
                if results.len() != alerts.len() {
                    return Err(Failure {
                        error: format!("PublishAlerts answered {} results for {} alerts", results.len(), alerts.len()),
                        outage: true,
                        unimplemented: false,
                    });
                }
                Ok(results.into_iter().map(|r| r.sequence).collect())
            }
            Ok(Err(status)) => Err(Failure::answered("PublishAlerts", status.code())),
            Err(_) => Err(Failure::timed_out("PublishAlerts", timeout)),
        }
    }
}

/// Why one alert (or one batch) was not delivered.
#[derive(Debug, Clone)]
pub struct Failure {
    /// A description without personal data (it is stored as `last_error`).
    pub error: String,
    /// True when the Notification service, not this alert, is the problem.
    pub outage: bool,
    /// True when the call is not served at all (UNIMPLEMENTED).
    pub unimplemented: bool,
}

impl Failure {
    /// The service answered `code`. Only the code is kept: a message might
    /// quote the request.
    fn answered(rpc: &str, code: Code) -> Self {
        Failure {
            error: format!("{rpc} answered {code:?}"),
            outage: is_outage(code),
            unimplemented: code == Code::Unimplemented,
        }
    }

    /// No answer within `timeout`.
    fn timed_out(rpc: &str, timeout: Duration) -> Self {
        Failure { error: format!("{rpc} timed out after {timeout:?}"), outage: true, unimplemented: false }
    }
}

/// True for answers that say the Notification service (not this alert) is
/// the problem.
fn is_outage(code: Code) -> bool {
    // Unimplemented too: an older Notification replica during a rolling
    // deploy, which a later attempt (or another replica) will not be.
    cpis_runtime::error::is_transient(code) || code == Code::Unimplemented
}
